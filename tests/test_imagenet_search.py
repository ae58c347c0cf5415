"Searching ImageNet: a seeded per-class search split streamed from root/imagenet/train, PC-DARTS's stem, the CLI end to end."
import json
import numpy as np
import pytest
import torch
from PIL import Image
from stacvs.cells import Supernet
from stacvs.cli import main
from stacvs.data import get_dataset_info, imagenet_search_loaders, search_loaders
from stacvs.networks import NetworkImageNet
from stacvs.search import Search, SearchConfig

CLASSES, PER_CLASS = 4, 6


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    "A tiny ImageNet layout: 4 classes × 6 random 64×64 RGB PNGs in root/imagenet/train."
    root, rng = tmp_path_factory.mktemp('data'), np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / 'imagenet' / 'train' / f'n0{c}'
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    return root


def split_of(loader) -> list[int]:
    "The folder indices a search loader reads (its Subset's)."
    return list(loader.dataset.dataset.indices)


def test_search_split_sizes_disjoint_and_seeded(root):
    train, valid = imagenet_search_loaders(root, 4, 0.5, 0.25, image_size=32, num_workers=0)
    assert (train.n, valid.n) == (CLASSES * 3, CLASSES * 2)  # round(6 · 0.5) and round(6 · 0.25) of each class
    targets = train.dataset.dataset.dataset.targets
    assert sorted(targets[i] for i in split_of(train)) == sorted(list(range(CLASSES)) * 3)  # stratified
    assert not set(split_of(train)) & set(split_of(valid))
    again = imagenet_search_loaders(root, 4, 0.5, 0.25, image_size=32, num_workers=0)
    assert (split_of(again[0]), split_of(again[1])) == (split_of(train), split_of(valid))
    other = imagenet_search_loaders(root, 4, 0.5, 0.25, seed=1, image_size=32, num_workers=0)
    assert split_of(other[0]) != split_of(train)
    # what a search gets: PC-DARTS's 10 % + 2.5 % of each class (at least one image each), at 224 pixels
    train, valid = search_loaders('imagenet', root, batch_size=4, num_workers=0)
    assert (train.n, valid.n) == (CLASSES, CLASSES)
    x, y = next(iter(train))
    assert (x.shape, y.shape, x.dtype) == ((4, 3, 224, 224), (4,), torch.float32)
    assert search_loaders('imagenet', root, bilevel=False, num_workers=0)[0].n == 2 * CLASSES


def test_supernet_imagenet_stem_shapes():
    net = Supernet(C=4, layers=3, stem='imagenet')
    x = torch.randn(2, 3, 64, 64)
    s0 = net.stem0(x)
    s1 = net.stem1(s0)
    assert (s0.shape, s1.shape) == ((2, 12, 16, 16), (2, 12, 8, 8))  # 1/4 and 1/8 of the image, 3C channels
    assert net.cells[0].preprocess0.__class__.__name__ == 'FactorizedReduce'  # reduction_prev after the stem
    assert net(x).shape == (2, 10)


@pytest.mark.parametrize('stems', [lambda: (lambda n: (n.stem0, n.stem1))(Supernet(C=4, layers=3, stem='imagenet')),
                                   lambda: (lambda n: (n.stem0, n.stem1))(NetworkImageNet(8, 10, 3, False, 'DARTS_V2'))])
def test_imagenet_cells_see_the_cell_size_the_accelerator_is_told(stems):
    stem0, stem1 = stems()
    info = get_dataset_info('imagenet')
    with torch.no_grad(): side = stem1(stem0(torch.randn(1, 3, info.image_size, info.image_size))).shape[-1]
    assert side == info.cell_size == 28  # the state size that decides channels-last, not the 224-pixel image


def test_search_builds_the_imagenet_stem(root):
    search = Search(SearchConfig(dataset='imagenet', data_root=str(root), layers=3, channels=4, batch_size=4,
                                 device='cpu', progress=False))
    assert hasattr(search.model, 'stem0') and not hasattr(search.model, 'stem')
    assert search.valid_loader.eval_loader().n == CLASSES


def test_cli_search_on_imagenet(root, tmp_path):
    out = tmp_path / 'run'
    main(['search', '--dataset', 'imagenet', '--data-root', str(root), '--layers', '3', '--channels', '4',
          '--epochs', '1', '--max-steps-per-epoch', '2', '--batch-size', '4', '--device', 'cpu', '--out', str(out),
          '--no-progress', '--quiet'])
    result = json.loads((out / 'result.json').read_text())
    assert result['dataset'] == 'imagenet' and result['epochs'] == 1
    assert len(result['genotype']['normal']) == 8 and len(result['genotype']['reduce']) == 8
    assert 'valid_acc' in result['final']  # the bilevel end-of-epoch evaluation ran on the search-val split


def test_cli_missing_imagenet_root(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['search', '--dataset', 'imagenet', '--data-root', str(tmp_path), '--layers', '3',
              '--out', str(tmp_path / 'run')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "dataset 'imagenet' not found" in err and str(tmp_path / 'imagenet') in err
    assert not (tmp_path / 'run').exists()
