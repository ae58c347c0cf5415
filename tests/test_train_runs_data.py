"Training (resume equality, protocols, seeds), run directories (atomicity) and data (splits, augmentation, errors)."
import json
from dataclasses import replace
import pytest
import torch
from stacvs.train import TrainConfig, Trainer, train, train_config, resolve_protocol, summarize_seeds
from stacvs.runs import RunDir, atomic_write_json, atomic_torch_save
from stacvs.data import (load_arrays, search_loaders, train_loaders, ArrayLoader, ForeverIterator, apply_cutout,
                         random_crop, DatasetNotFoundError, get_dataset_info, subset_indices)

SMALL = TrainConfig(genotype='DARTS_V2', dataset='digits', layers=3, channels=4, epochs=3, batch_size=64, cutout=4,
                    fraction=0.2, progress=False)


class Killed(Exception): pass


class KillAfterEpoch:
    def on_epoch_end(self, trainer, record):
        if trainer.epoch == 1: raise Killed


def test_training_killed_and_resumed_equals_uninterrupted(tmp_path):
    full = Trainer(replace(SMALL, out=str(tmp_path / 'a'))); full.run()
    with pytest.raises(Killed):
        Trainer(replace(SMALL, out=str(tmp_path / 'b')), [KillAfterEpoch()]).run()
    resumed = Trainer(replace(SMALL, out=str(tmp_path / 'b'), resume=True)); resumed.run()
    for (n, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), n
    log_a = [json.loads(l) for l in open(tmp_path / 'a' / 'log.jsonl')]
    log_b = [json.loads(l) for l in open(tmp_path / 'b' / 'log.jsonl')]
    assert [r['test_acc'] for r in log_a] == [r['test_acc'] for r in log_b]


def test_training_learns_digits():
    result = train(replace(SMALL, epochs=4, fraction=1.0, channels=8, batch_size=128, drop_path_prob=0.0))
    assert result['test_acc'] > 0.5  # 10 classes: chance is 0.1


def test_aa_protocol_and_drop_path_ramp(tmp_path):
    t = Trainer(replace(SMALL, protocol='aa', epochs=2, autoaugment=True, out=str(tmp_path)))
    t.run()
    log = [json.loads(l) for l in open(tmp_path / 'log.jsonl')]
    assert [r['drop_path_prob'] for r in log] == [0.0, 0.1]  # 0.2 · epoch / epochs
    assert t.config.autoaugment and t.config.epochs == 2


def test_protocol_presets_and_errors():
    assert train_config('imagenet').weight_decay == 3e-5 and train_config('small').layers == 8
    assert resolve_protocol(TrainConfig(protocol='imagenet', lr=0.05)).lr == 0.05
    with pytest.raises(ValueError, match='unknown training protocol'):
        train_config('nope')


def test_summarize_seeds_matches_hand_computation():
    s = summarize_seeds([{'test_acc': v} for v in (0.9, 0.92, 0.94)])
    assert s['mean'] == pytest.approx(0.92) and s['std'] == pytest.approx(0.02) and s['best'] == 0.94


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    atomic_write_json(tmp_path / 'r.json', {'a': 1})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / 'r.json', {'a': object()})
    assert json.loads((tmp_path / 'r.json').read_text()) == {'a': 1}

    class Boom:
        def __reduce__(self): raise RuntimeError('boom')
    atomic_torch_save({'w': torch.ones(2)}, tmp_path / 'c.pt')
    with pytest.raises(RuntimeError):
        atomic_torch_save({'w': Boom()}, tmp_path / 'c.pt')
    assert torch.equal(torch.load(tmp_path / 'c.pt')['w'], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c.pt', 'r.json']


def test_search_split_is_disjoint_and_sized():
    train, valid = search_loaders('digits', batch_size=50, train_portion=0.5)
    assert len(train.x) == 718 and len(valid.x) == 719
    idx = subset_indices(1437, 0.5, 0)
    assert len(set(idx.tolist())) == len(idx) == 718
    one, none = search_loaders('digits', bilevel=False, fraction=0.5)
    assert none is None and len(one.x) == 718


def test_cutout_zeroes_exactly_the_clipped_square():
    x = torch.ones(2, 1, 8, 8)
    out = apply_cutout(x, torch.tensor([[0, 0], [4, 5]]), 4)
    assert out[0, 0].sum() == 64 - 4  # centre at the corner: a 2×2 square survives the clip
    assert out[1, 0, 2:6, 3:7].sum() == 0 and out[1, 0].sum() == 64 - 16


def test_random_crop_moves_content_by_at_most_the_padding():
    x = torch.zeros(16, 1, 8, 8); x[:, :, 4, 4] = 1
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all() and (out.sum((1, 2, 3)) == 1).all()


def test_loader_resume_is_exact_and_forever_iterator_wraps():
    x, y = load_arrays('digits')
    make = lambda: ArrayLoader(x, y, 100, seed=5, augment=train_loaders('digits')[0].augment)
    straight = ForeverIterator(make())
    ref = [next(straight)[0] for _ in range(25)]
    first = ForeverIterator(make())
    got = [next(first)[0] for _ in range(17)]
    second = ForeverIterator(make()); second.load_state_dict(first.state_dict())
    got += [next(second)[0] for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / 'cifar-100-python')):
        load_arrays('cifar100', tmp_path)
    with pytest.raises(DatasetNotFoundError, match='--data-root'):
        load_arrays('svhn', None)
    with pytest.raises(ValueError, match="unknown dataset 'tinyimagenet'"):
        get_dataset_info('tinyimagenet')


def test_fashion_mnist_from_idx_files(tmp_path):
    "The MNIST-format loader reads IDX files from ROOT/FashionMNIST/raw (as Debian installs them, gunzipped)."
    import numpy as np, struct
    raw = tmp_path / 'FashionMNIST' / 'raw'; raw.mkdir(parents=True)
    for split, n in (('train', 6), ('t10k', 3)):
        imgs = np.arange(n * 28 * 28, dtype=np.uint8).reshape(n, 28, 28)
        (raw / f'{split}-images-idx3-ubyte').write_bytes(struct.pack('>IIII', 2051, n, 28, 28) + imgs.tobytes())
        (raw / f'{split}-labels-idx1-ubyte').write_bytes(struct.pack('>II', 2049, n) + bytes(range(n)))
    x, y = load_arrays('fashion_mnist', tmp_path, 'train')
    assert x.shape == (6, 1, 28, 28) and y.tolist() == list(range(6))
