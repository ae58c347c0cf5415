# stacvs on GPUs: docker build -t stacvs . && docker run --gpus all -v DATA:/data -v OUT:/runs stacvs search ...
# The base image brings CUDA, cuDNN, NCCL and a matching PyTorch; stacvs installs on top without replacing it.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_NO_CACHE_DIR=1
WORKDIR /opt/stacvs
COPY pyproject.toml README.md ./
COPY stacvs ./stacvs
COPY nbs ./nbs
RUN pip install -e ".[dev]" && python -m ipykernel install --name python3 --sys-prefix

# data under /data (e.g. /data/cifar-10-batches-py), results under /runs
WORKDIR /runs
ENTRYPOINT ["stacvs"]
CMD ["--help"]
