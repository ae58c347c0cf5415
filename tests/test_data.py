"Tests of stacvs.data: datasets, device-side augmentation, exact resume, search/train loaders."
import gzip
import struct
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from stacvs.data import (DATASETS, ArrayLoader, AutoAugmentArrays, BatchAugment, DatasetNotFoundError,
                         ForeverIterator, KeyedRandomDataset, ResumableDataLoader, apply_cutout, crop_flip,
                         default_augment, get_dataset_info, load_arrays, search_loaders, synthetic_arrays,
                         train_loaders)


def _rows(x, y=None):
    "Multiset of (image bytes, label) rows, to compare sets of samples without their order."
    return Counter((bytes(xi.numpy().tobytes()), None if y is None else int(yi))
                   for xi, yi in zip(x, y if y is not None else [None] * len(x)))


def _epoch(loader):
    return [(xb.clone(), yb.clone()) for xb, yb in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))


# --- datasets ---------------------------------------------------------------------------------------------------

def test_dataset_table():
    assert set(DATASETS) == {'digits', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'svhn', 'imagenet'}
    for info in DATASETS.values():
        assert len(info.mean) == len(info.std) == info.in_channels
    assert get_dataset_info('svhn').std == (0.1980, 0.2010, 0.1970)
    assert get_dataset_info('cifar100').mean == (0.5071, 0.4865, 0.4409)
    assert not get_dataset_info('digits').flip and not get_dataset_info('mnist').flip
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10"):
        get_dataset_info('cifar11')


def test_digits_arrays_and_split():
    x, y = load_arrays('digits', split='train')
    xt, yt = load_arrays('digits', split='test')
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((1437, 1, 8, 8), torch.uint8, (1437,), torch.int64)
    assert (xt.shape, yt.shape) == ((360, 1, 8, 8), (360,))
    d = load_digits()
    full = torch.from_numpy(np.round(d.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    # train + test is exactly the whole dataset, each sample once, labels attached to their images
    assert _rows(x, y) + _rows(xt, yt) == _rows(full, torch.from_numpy(d.target))
    assert int(x.min()) == 0 and int(x.max()) == 255
    assert torch.equal(load_arrays('digits')[0], x)  # fixed split
    # the digits statistics are those of the training split
    pixels = x.double() / 255
    assert abs(pixels.mean().item() - DATASETS['digits'].mean[0]) < 1e-4
    assert abs(pixels.std().item() - DATASETS['digits'].std[0]) < 1e-4


def test_load_arrays_bad_arguments():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_arrays('digits', split='valid')
    with pytest.raises(ValueError, match="train_loaders"):
        load_arrays('imagenet', '/nowhere')


@pytest.mark.parametrize('name, folder, files, command', [
    ('cifar10', 'cifar-10-batches-py', 'data_batch_1', "torchvision.datasets.CIFAR10('{root}', download=True)"),
    ('cifar100', 'cifar-100-python', 'train, test, meta', "torchvision.datasets.CIFAR100('{root}', download=True)"),
    ('svhn', 'svhn', 'train_32x32.mat and test_32x32.mat', "torchvision.datasets.SVHN('{root}/svhn', split='train', download=True)"),
    ('mnist', 'MNIST/raw', 'train-images-idx3-ubyte', "torchvision.datasets.MNIST('{root}', download=True)"),
    ('fashion_mnist', 'FashionMNIST/raw', 'IDX', "torchvision.datasets.FashionMNIST('{root}', download=True)"),
])
def test_missing_dataset_error(tmp_path, name, folder, files, command):
    with pytest.raises(DatasetNotFoundError) as info:
        load_arrays(name, tmp_path, 'train')
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert repr(name) in msg and str(tmp_path / folder) in msg and files in msg
    assert 'internet' in msg and 'python -c "import torchvision; ' + command.format(root=tmp_path) in msg
    if name == 'fashion_mnist': assert 'dataset-fashion-mnist' in msg and '/usr/share/datasets/fashion-mnist' in msg


def test_missing_root_and_imagenet(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="No data root was given.*--data-root"):
        load_arrays('cifar10', None)
    with pytest.raises(DatasetNotFoundError) as info:
        train_loaders('imagenet', tmp_path)
    assert str(tmp_path / 'imagenet') in str(info.value) and 'train/ and val/' in str(info.value)
    assert 'cannot download ImageNet' in str(info.value)


def _write_idx(path, array):
    "Write an uncompressed IDX file (the MNIST format) for a uint8 array."
    magic = struct.pack('>BBBB', 0, 0, 8, array.ndim)
    path.write_bytes(magic + b''.join(struct.pack('>I', s) for s in array.shape) + array.tobytes())


@pytest.mark.parametrize('name, folder', [('mnist', 'MNIST'), ('fashion_mnist', 'FashionMNIST')])
def test_mnist_layout_loads(tmp_path, name, folder):
    raw = tmp_path / folder / 'raw'
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (('train', 5), ('t10k', 3))}
    labels = {s: rng.integers(0, 10, len(images[s]), dtype=np.uint8) for s in images}
    for s in images:
        _write_idx(raw / f'{s}-images-idx3-ubyte', images[s])
        _write_idx(raw / f'{s}-labels-idx1-ubyte', labels[s])
    x, y = load_arrays(name, tmp_path, 'train')
    xt, yt = load_arrays(name, tmp_path, 'test')
    assert (x.shape, x.dtype, y.dtype, xt.shape) == ((5, 1, 28, 28), torch.uint8, torch.int64, (3, 1, 28, 28))
    assert np.array_equal(x[:, 0].numpy(), images['train']) and np.array_equal(yt.numpy(), labels['t10k'])


# --- augmentation -------------------------------------------------------------------------------------------------

def test_crop_flip_matches_a_per_image_reference():
    x = torch.randint(0, 256, (6, 3, 7, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([[0, 0], [4, 4], [2, 2], [1, 3], [4, 0], [0, 4]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = crop_flip(x, 2, offsets, flips)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i, ((oy, ox), f) in enumerate(zip(offsets.tolist(), flips.tolist())):
        crop = padded[i, :, oy:oy + 7, ox:ox + 5]
        assert np.array_equal(out[i].numpy(), crop[:, :, ::-1] if f else crop)


def test_flip_of_a_known_image():
    img = torch.arange(12, dtype=torch.uint8).view(1, 1, 3, 4)
    centre = torch.tensor([[1, 1]])
    assert torch.equal(crop_flip(img, 1, centre, torch.tensor([True]))[0, 0],
                       torch.tensor([[3, 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8]], dtype=torch.uint8))
    assert torch.equal(crop_flip(img, 1, centre, torch.tensor([False])), img)
    # random flips only: every image is the original or its mirror, and both occur
    out = BatchAugment(crop_padding=0, flip=True).before_normalize(img.repeat(64, 1, 1, 1),
                                                                   torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, img[0].flip(2)) for o in out])
    kept = torch.tensor([torch.equal(o, img[0]) for o in out])
    assert bool((flipped | kept).all()) and 0 < int(flipped.sum()) < 64


def test_random_crop_keeps_shape_and_content():
    x = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = BatchAugment(crop_padding=2, flip=False).before_normalize(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    # every nonzero pixel of a crop comes from its image; at least 6x6 of the 8x8 survive
    for o, xi in zip(out, x):
        assert set(o[o > 0].tolist()) <= set(xi.flatten().tolist()) and int((o[0] > 0).sum()) >= 36
    assert not torch.equal(out, x)


def _cutout_reference(x, centres, length):
    out = x.clone()
    h, w = x.shape[2:]
    for i, (cy, cx) in enumerate(centres.tolist()):
        y1, y2 = np.clip(cy - length // 2, 0, h), np.clip(cy + length // 2, 0, h)
        x1, x2 = np.clip(cx - length // 2, 0, w), np.clip(cx + length // 2, 0, w)
        out[i, :, y1:y2, x1:x2] = 0
    return out


def test_cutout_zeroes_one_clipped_square():
    x = torch.ones(5, 2, 8, 8)
    centres = torch.tensor([[4, 4], [0, 0], [7, 7], [0, 5], [6, 1]])
    out = apply_cutout(x, centres, 4)
    assert torch.equal(out, _cutout_reference(x, centres, 4))
    # zeros per image: the full 4x4 square in the middle, clipped at the corners and edges
    expected = [4 * 4, 2 * 2, 3 * 3, 2 * 4, 4 * 3]
    assert (out[:, 0] == 0).sum((1, 2)).tolist() == expected
    assert torch.equal(out[:, 0], out[:, 1])  # same square in every channel


def test_random_cutout_is_one_rectangle_after_normalization():
    x = torch.randn(64, 3, 16, 16).abs() + 1  # no zeros before cutout
    out = BatchAugment(0, False, cutout=8).after_normalize(x, torch.Generator().manual_seed(0))
    for o in out:
        zero = o[0] == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert int(zero.sum()) == len(rows) * len(cols) > 0  # one axis-aligned rectangle
        assert len(rows) <= 8 and len(cols) <= 8 and torch.equal(o[0] == 0, o[2] == 0)


def test_default_augment():
    assert default_augment(get_dataset_info('cifar10'), cutout=16) == BatchAugment(4, True, 16)
    assert default_augment(get_dataset_info('mnist')) == BatchAugment(3, False, 0)
    assert default_augment(get_dataset_info('fashion_mnist')).flip


# --- ArrayLoader ---------------------------------------------------------------------------------------------------

def test_array_loader_batches_and_normalization():
    x, y = synthetic_arrays(50, 3, 8, 10, seed=0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = ArrayLoader(x, y, 16, shuffle=False, mean=mean, std=std)
    assert len(loader) == 4 and len(ArrayLoader(x, y, 16, drop_last=True)) == 3
    batches = _epoch(loader)
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    xb = torch.cat([b[0] for b in batches])
    assert xb.dtype == torch.float32 and xb.shape == (50, 3, 8, 8)
    expected = (x.double() / 255 - torch.tensor(mean, dtype=torch.double).view(1, 3, 1, 1)) / \
        torch.tensor(std, dtype=torch.double).view(1, 3, 1, 1)
    assert torch.allclose(xb.double(), expected, atol=1e-5)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_digits_loader_is_standardized():
    info = get_dataset_info('digits')
    x, y = load_arrays('digits')
    xb, _ = next(iter(ArrayLoader(x, y, len(x), mean=info.mean, std=info.std)))
    assert abs(xb.mean().item()) < 1e-3 and abs(xb.std().item() - 1) < 1e-3


def test_shuffle_is_a_seeded_permutation():
    x, y = synthetic_arrays(40, 1, 4, 10, seed=1)
    a = _epoch(ArrayLoader(x, y, 8, seed=5))
    assert _same(a, _epoch(ArrayLoader(x, y, 8, seed=5)))
    assert not _same(a, _epoch(ArrayLoader(x, y, 8, seed=6)))
    loader = ArrayLoader(x, y, 8, seed=5)
    e0, e1 = torch.cat([b[1] for b in _epoch(loader)]), torch.cat([b[1] for b in _epoch(loader)])
    assert sorted(e0.tolist()) == sorted(y.tolist()) == sorted(e1.tolist()) and not torch.equal(e0, e1)


def test_array_loader_rejects_bad_input():
    x, y = synthetic_arrays(4, 3, 8)
    with pytest.raises(ValueError, match="uint8 images"):
        ArrayLoader(x.float(), y, 2)
    with pytest.raises(ValueError, match="no batches"):
        ArrayLoader(x, y, 8, drop_last=True)
    with pytest.raises(ValueError, match="3 channels"):
        ArrayLoader(x, y, 2, mean=(0.5,), std=(0.2,))


def _take(loader, n):
    out, it = [], iter(loader)
    while len(out) < n:
        b = next(it, None)
        if b is None: it = iter(loader)
        else: out.append(b)
    return out


def test_resume_after_one_and_a_half_epochs():
    x, y = synthetic_arrays(100, 3, 8, 10, seed=2)
    make = lambda: ArrayLoader(x, y, 16, mean=(0.5,) * 3, std=(0.25,) * 3,
                               augment=BatchAugment(2, True, 4), seed=11)  # 7 batches per epoch
    straight = _take(make(), 25)
    first = make()
    part = _take(first, 10)  # 1.5 epochs (7 + 3)
    state = first.state_dict()
    assert state == dict(seed=11, epoch=1, position=3)
    second = make()
    second.load_state_dict(state)
    assert _same(part + _take(second, 15), straight)


def test_resume_through_forever_iterator():
    x, y = synthetic_arrays(30, 1, 6, 10, seed=3)
    make = lambda: ForeverIterator(ArrayLoader(x, y, 7, augment=BatchAugment(1, True, 2), seed=4))
    uninterrupted = make()
    straight = [next(uninterrupted) for _ in range(17)]
    first = make()
    part = [next(first) for _ in range(8)]  # one epoch of 5 batches, and 3 more
    second = make()
    second.load_state_dict(first.state_dict())
    assert _same(part + [next(second) for _ in range(9)], straight)
    assert [len(b[1]) for b in straight[:6]] == [7, 7, 7, 7, 2, 7]


def test_load_state_dict_needs_all_keys():
    loader = ArrayLoader(*synthetic_arrays(8, 3, 4), 4)
    with pytest.raises(KeyError, match="position"):
        loader.load_state_dict(dict(seed=0, epoch=1))


def test_eval_loader_and_channels_last():
    x, y = synthetic_arrays(20, 3, 8)
    loader = ArrayLoader(x, y, 8, augment=BatchAugment(2, True, 4), channels_last=True)
    xb, _ = next(iter(loader))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    ev = loader.eval_loader(batch_size=20)
    (xe, ye), = list(ev)
    assert torch.equal(ye, y) and torch.allclose(xe, x.float() / 255) and ev.augment is None
    assert loader.state_dict()['position'] == 1  # the eval loader has its own cursor


def test_synthetic_arrays():
    x, y = synthetic_arrays(16, 3, 32, 100, seed=7)
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((16, 3, 32, 32), torch.uint8, (16,), torch.int64)
    assert 0 <= int(y.min()) and int(y.max()) < 100
    assert torch.equal(synthetic_arrays(16, 3, 32, 100, seed=7)[0], x)
    assert not torch.equal(synthetic_arrays(16, 3, 32, 100, seed=8)[0], x)


# --- search and training loaders ------------------------------------------------------------------------------------

def test_search_loaders_bilevel_split():
    x, y = load_arrays('digits')
    train, valid = search_loaders('digits', batch_size=32, seed=0, augment=False)
    assert (train.n, valid.n) == (718, 719)
    # a partition of the training images: disjoint and complete
    assert _rows(train.x, train.y) + _rows(valid.x, valid.y) == _rows(x, y)
    assert train.augment is None and train.seed != valid.seed
    other, _ = search_loaders('digits', batch_size=32, seed=1, augment=False)
    assert _rows(other.x, other.y) != _rows(train.x, train.y)
    again, _ = search_loaders('digits', batch_size=32, seed=0, augment=False)
    assert torch.equal(again.x, train.x)


def test_search_loaders_fraction_and_one_level():
    x, y = load_arrays('digits')
    train, valid = search_loaders('digits', fraction=0.25, train_portion=0.6)
    n = round(1437 * 0.25)
    assert (train.n, valid.n) == (int(0.6 * n), n - int(0.6 * n))
    assert not (_rows(train.x, train.y) + _rows(valid.x, valid.y)) - _rows(x, y)  # a sub-multiset
    assert train.augment == BatchAugment(1, False, 0)  # DARTS search: crop, no cutout; digits do not flip
    everything, none = search_loaders('digits', bilevel=False, batch_size=100)
    assert none is None and everything.n == 1437 and len(everything) == 15
    with pytest.raises(ValueError, match="fraction"):
        search_loaders('digits', fraction=0)
    with pytest.raises(ValueError, match="train_portion"):
        search_loaders('digits', train_portion=1.0)


def test_train_loaders_digits():
    train, test = train_loaders('digits', batch_size=64, cutout=4, fraction=0.5)
    assert (train.n, test.n) == (round(1437 * 0.5), 360)
    assert train.augment == BatchAugment(1, False, 4) and test.augment is None and not test.shuffle
    xb, yb = next(iter(train))
    assert (xb.shape, yb.shape, xb.dtype) == ((64, 1, 8, 8), (64,), torch.float32)
    with pytest.warns(UserWarning, match="cutout 16 would blank whole 8×8"):
        capped, _ = train_loaders('digits')
    assert capped.augment.cutout == 4


def test_autoaugment_path_is_deterministic_and_resumable():
    train, test = train_loaders('digits', batch_size=16, cutout=4, autoaugment=True, fraction=0.05, seed=3)
    assert isinstance(train, ResumableDataLoader) and isinstance(test, ArrayLoader)
    epoch = _epoch(train)
    assert len(epoch) == len(train) == 5 and [len(b[1]) for b in epoch] == [16, 16, 16, 16, 8]
    assert epoch[0][0].shape == (16, 1, 8, 8) and epoch[0][0].dtype == torch.float32
    again, _ = train_loaders('digits', batch_size=16, cutout=4, autoaugment=True, fraction=0.05, seed=3)
    assert _same(_epoch(again), epoch)
    resumed, _ = train_loaders('digits', batch_size=16, cutout=4, autoaugment=True, fraction=0.05, seed=3)
    resumed.load_state_dict(dict(seed=3, epoch=0, position=2))
    assert _same(_epoch(resumed), epoch[2:])
    assert not _same(_epoch(train), epoch)  # the next epoch is shuffled and augmented afresh


def test_autoaugment_independent_of_workers():
    x, y = synthetic_arrays(12, 3, 16, seed=0)
    info = get_dataset_info('cifar10')
    make = lambda workers: ResumableDataLoader(KeyedRandomDataset(AutoAugmentArrays(x, y, info, 8), seed=1), 6,
                                               num_workers=workers, seed=1)
    torch.manual_seed(123)  # the global RNG does not matter
    a = _epoch(make(0))
    torch.manual_seed(456)
    assert _same(a, _epoch(make(1)))
    assert not torch.equal(a[0][0], (x[:6].float() / 255))  # it did augment


def test_imagenet_folder_loaders(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for cls in ('n01', 'n02'):
            (tmp_path / 'imagenet' / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / 'imagenet' / split / cls / f'{i}.png')
    train, test = train_loaders('imagenet', tmp_path, batch_size=3, seed=0)
    xb, yb = next(iter(train))
    assert (xb.shape, yb.shape, len(train)) == ((3, 3, 224, 224), (3,), 2)
    xt, yt = next(iter(test))
    assert xt.shape == (3, 3, 224, 224) and yt.tolist() == [0, 0, 1]
    again, _ = train_loaders('imagenet', tmp_path, batch_size=3, seed=0)
    assert torch.equal(next(iter(again))[0], xb)
