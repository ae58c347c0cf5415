"""Every command in README.md's fenced ```bash blocks is run here as written, or listed in SKIPPED with the reason.

How a command runs (the rule):
- with `bash -c`, in one temporary directory shared by the whole README, in README order (so `runs/`, `repro-runs/`,
  `out.ipynb` land there and a later command finds an earlier one's outputs); `nbs` and `examples` there link to the
  checkout's; the Python environment running this test comes first on PATH; OMP_NUM_THREADS=1;
- an `&&` chain drops its environment set-up steps (SETUP_STEPS): the test already runs in that environment;
- tiny settings are appended to a step by its first words, after `nohup` and `stacvs`'s own `--import` (`tiny_arguments`):
  argparse and papermill's `-p` keep an option's last value, so they win over the README's (8 search epochs become
  1 epoch of 2 steps, etc.);
- nothing else in a command is changed.
Not run: a command written with `...` (a fragment: the options it elides are not there), and every command of
SKIPPED (needs a dataset other than `digits`, a GPU, Docker, the network, or is the whole suite). A README command
that is neither run nor skipped fails `test_every_readme_command_is_run_or_skipped`; a SKIPPED entry no longer in
the README fails `test_skipped_commands_are_still_in_the_readme`. Run whole: about 2 minutes on one core.
"""
import os, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'

CIFAR, IMAGENET = 'needs CIFAR-10 under --data-root', 'needs ImageNet under --data-root'
SKIPPED = {  # the command exactly as README.md writes it (comment stripped, spaces collapsed) -> why it is not run
    'bash .ci/run': 'the whole test suite, which includes this test (CI runs it)',
    'stacvs search --method darts --dataset cifar10 --data-root ~/data --out runs/darts-c10': CIFAR,
    'stacvs repro run all --profile quick --data-root /data --out repro-runs': 'a GPU and CIFAR-10/ImageNet under /data',
    'nohup stacvs repro run all --profile cpu --data-root /usr/share/datasets/fashion-mnist --out reports/cpu-batch '
    '--quiet > cpu-batch.log 2>&1 &': 'hours of CPU',
    'docker build -t stacvs .': 'Docker',
    'docker run --gpus all -v ~/data:/data -v $PWD/repro-runs:/runs stacvs repro run all --profile quick --out /runs':
        'Docker with GPUs',
    'docker run --gpus all -v ~/data:/data -v $PWD/repro-runs:/runs stacvs repro run stacnas_table3 --profile paper '
    '--seeds 0 1 2 3 4 5 6 7 --out /runs': 'Docker with GPUs',
    'stacvs train --genotype DARTS_V2 --dataset cifar10 --data-root ~/data --out runs/darts-v2': CIFAR,
    'python3 -m venv /tmp/cpu && /tmp/cpu/bin/pip install torch==2.13.0 numpy scipy scikit-learn matplotlib seaborn '
    'fastcore tqdm pyyaml': 'downloads torch 2.13.0 (the network)',
    '/tmp/cpu/bin/pip install --no-deps -e . && /tmp/cpu/bin/python -c "from stacvs.cli import main; '
    'main([\'bench\', \'--table\'])"': 'the environment of the command before it, and ~20 minutes of benchmarks',
    'torchrun --standalone --nproc_per_node 8 --no-python stacvs search --method stacnas --dataset cifar10 '
    '--data-root ~/data --batch-size 512 --amp --channels-last --out runs/stacnas-c10': CIFAR + ', 8 processes',
    'torchrun --standalone --nproc_per_node 8 --no-python stacvs train --genotype runs/stacnas-c10/result.json '
    '--dataset imagenet --data-root ~/data --batch-size 1024 --amp --channels-last --out runs/train-imagenet':
        IMAGENET + ', 8 processes',
    'docker run --gpus all -v ~/data:/data -v $PWD/runs:/runs stacvs search --dataset cifar10 --data-root /data '
    '--device cuda --amp --channels-last --out /runs/darts': 'Docker with GPUs',
    'docker run --gpus all --ipc=host -v ~/data:/data -v $PWD/runs:/runs --entrypoint torchrun stacvs --standalone '
    '--nproc_per_node 8 --no-python stacvs train --genotype STACNAS_IMAGENET --dataset imagenet --data-root /data '
    '--batch-size 1024 --amp --channels-last --out /runs/imagenet': 'Docker with 8 GPUs',
}
SETUP_STEPS = {'python3 -m venv .venv', '. .venv/bin/activate', 'pip install -e ".[dev]"'}
EXPECTED_OUTPUT = {'stacvs genotype params DARTS_V2': '3.349M parameters'}  # what the README's comment promises
TINY_SEARCH = '--epochs 1 --max-steps-per-epoch 2'
TINY_REPRO = dict(epochs=1, max_steps_per_epoch=2, samples=64)
TINY_BENCH = '--steps 1 --warmup 0 --min-seconds 0 --paths optimized'


def tiny_arguments(step: str) -> str:
    "Options appended to one step of a README command to keep it small (they win: later options override)."
    words = step.split()
    if words[:1] == ['nohup']: words = words[1:]
    while words[1:2] == ['--import']: words = words[:1] + words[3:]  # `stacvs --import MODULE search ...`
    if words[:2] in (['stacvs', 'search'], ['stacvs', 'train']): return TINY_SEARCH
    if words[:3] == ['stacvs', 'repro', 'run']: return '--param ' + ' '.join(f'{k}={v}' for k, v in TINY_REPRO.items())
    if words[:1] == ['papermill']: return ' '.join(f'-p {k} {v}' for k, v in TINY_REPRO.items())
    if words[:2] == ['stacvs', 'bench']:  # --table: only its small cases; else a tiny config
        return f'--cases c4-l3 {TINY_BENCH}' if '--table' in words else \
            f'--layers 3 --channels 4 --batch-size 8 --image-size 8 {TINY_BENCH}'
    return ''


def strip_comment(line: str) -> str:
    "The line without a trailing `# comment` (a # at the start or after a blank, outside quotes)."
    quote = None
    for i, ch in enumerate(line):
        if quote: quote = None if ch == quote else quote
        elif ch in '\'"': quote = ch
        elif ch == '#' and (i == 0 or line[i - 1].isspace()): return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list[str]:
    "The commands of the fenced ```bash blocks, in order: comments stripped, continuation lines joined."
    commands = []
    for block in re.findall(r'^```bash\n(.*?)^```', text, flags=re.M | re.S):
        pending = ''
        for line in block.splitlines():
            line = strip_comment(line)
            if line.endswith('\\'): pending += line[:-1] + ' '; continue
            command = ' '.join((pending + line).split()); pending = ''
            if command: commands.append(command)
    return commands


def is_fragment(command: str) -> bool: return '...' in command.split()


COMMANDS = readme_commands(README.read_text())
RUN = [c for c in COMMANDS if c not in SKIPPED and not is_fragment(c)]


def as_run(command: str) -> str:
    "The command as this test runs it: set-up steps dropped, tiny settings appended to each step."
    steps = [s.strip() for s in command.split(' && ') if s.strip() not in SETUP_STEPS]
    return ' && '.join(f'{s} {tiny_arguments(s)}'.rstrip() for s in steps)


def test_readme_commands_are_found_and_every_kind_is_covered():
    assert len(COMMANDS) >= 20 and COMMANDS[1] == 'bash .ci/run'
    assert any(c.startswith('stacvs repro run') for c in RUN) and any(c.startswith('papermill') for c in RUN)
    assert as_run(COMMANDS[0]).startswith('stacvs search ') and ' && stacvs train ' in as_run(COMMANDS[0])
    assert strip_comment('stacvs a --x "#y" # z') == 'stacvs a --x "#y"'


def test_every_readme_command_is_run_or_skipped():
    "A new README command runs here, or goes into SKIPPED with the reason it cannot run on a CPU without datasets."
    assert RUN and all(c in SKIPPED or is_fragment(c) or c in RUN for c in COMMANDS)
    overlap = [c for c in RUN if c in SKIPPED]
    assert not overlap, overlap


def test_skipped_commands_are_still_in_the_readme():
    stale = [c for c in SKIPPED if c not in COMMANDS]
    assert not stale, f"SKIPPED lists commands the README no longer has (update or remove them): {stale}"


@pytest.fixture(scope='module')
def readme_runs(tmp_path_factory):
    "Run every runnable README command once, in README order, in one directory; command -> completed process."
    cwd = tmp_path_factory.mktemp('readme')
    for name in ('nbs', 'examples'): (cwd / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k != 'STACVS_REPRO_NOTEBOOKS'}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS='1',
               MPLBACKEND='Agg', PYTHONUNBUFFERED='1')
    return {c: subprocess.run(['bash', '-c', as_run(c)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
            for c in RUN}


@pytest.mark.parametrize('command', RUN, ids=[f'{i}-' + '-'.join(c.split()[:3]) for i, c in enumerate(RUN)])
def test_readme_command_runs(readme_runs, command):
    done = readme_runs[command]
    assert done.returncode == 0, f"{as_run(command)}\nexit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    if command in EXPECTED_OUTPUT: assert EXPECTED_OUTPUT[command] in done.stdout, done.stdout
