"""Gradient confusion: α excluded, state restored, depth matching.

The pairwise definition, brief training and Table 1 are checked in nbs/11_confusion.ipynb."""
import copy, json
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import stacvs.confusion as confusion
from stacvs.cells import Supernet
from stacvs.data import search_loaders
from stacvs.networks import NetworkCIFAR
from stacvs.confusion import (gradient_confusion, confusion_statistic, random_batches, match_search_depth,
                              plot_confusion_table)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def mini_batches(n=4, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def brute_force_zeta(model, batches, normalize, params_of=lambda m: list(m.parameters())):
    "The definition, pair by pair, each gradient from its own backward pass on a fresh copy in train mode."
    grads = []
    for x, y in batches:
        m = copy.deepcopy(model).train()
        out = m(x)
        F.cross_entropy(out[0] if isinstance(out, tuple) else out, y).backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                for p in params_of(m)]).double())
    worst = None
    for i in range(len(grads)):
        for j in range(len(grads)):
            if i == j: continue
            sim = torch.dot(grads[i], grads[j])
            if normalize: sim = sim / (grads[i].norm() * grads[j].norm())
            worst = -sim.item() if worst is None else max(worst, -sim.item())
    return max(0.0, worst)


def test_identical_batches_give_zero_and_zeta_is_never_negative():
    model, batches = tiny_mlp(), mini_batches(3)
    assert gradient_confusion(model, F.cross_entropy, [batches[0]] * 3) == 0.0
    assert gradient_confusion(model, F.cross_entropy, [batches[0]] * 3, normalize=True) == 0.0
    for seed in range(4):
        for normalize in (False, True):
            assert gradient_confusion(tiny_mlp(seed), F.cross_entropy, mini_batches(3, seed), normalize) >= 0
    assert 0 <= gradient_confusion(model, F.cross_entropy, batches, normalize=True) <= 1


def test_model_state_is_restored():
    model, batches = tiny_mlp(), mini_batches(3)
    model.eval()
    for p in model.parameters(): p.grad = torch.full_like(p, 7.)
    buffers = [b.clone() for b in model.buffers()]
    gradient_confusion(model, F.cross_entropy, batches)
    assert not model.training
    assert all(torch.equal(b, saved) for b, saved in zip(model.buffers(), buffers))
    assert all(torch.equal(p.grad, torch.full_like(p, 7.)) for p in model.parameters())


def tiny_supernet(layers=2, seed=0):
    torch.manual_seed(seed)
    return Supernet(C=2, num_classes=10, layers=layers, space='darts_small', in_channels=1)


def digit_like_batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(n)]


def test_alpha_is_excluded_on_a_supernet():
    net, batches = tiny_supernet(), digit_like_batches()
    zeta = gradient_confusion(net, F.cross_entropy, batches)
    weights_only = brute_force_zeta(net, batches, False, params_of=lambda m: m.weights())
    with_alpha = brute_force_zeta(net, batches, False, params_of=lambda m: list(m.parameters()))
    assert zeta == pytest.approx(weights_only, rel=1e-5)
    assert zeta == gradient_confusion(net, F.cross_entropy, batches, params=net.weights())
    assert abs(with_alpha - weights_only) > 1e-6 * weights_only  # α would have changed the value
    assert all(a.grad is None for a in net.alphas())
    stat = confusion_statistic(net, F.cross_entropy, batches, iterations=2)
    assert stat['params'] == sum(p.numel() for p in net.weights()) < sum(p.numel() for p in net.parameters())


def test_confusion_statistic_averages_the_draws_and_divides_by_the_parameter_count():
    model, batches = tiny_mlp(), mini_batches(5)
    stat = confusion_statistic(model, F.cross_entropy, batches, iterations=4, batches_per_iteration=3, seed=2)
    draws = random_batches(batches, 12, seed=2)
    expected = [gradient_confusion(model, F.cross_entropy, draws[i:i + 3]) for i in range(0, 12, 3)]
    assert stat['zetas'] == expected
    assert stat['zeta_mean'] == pytest.approx(sum(expected) / 4)
    assert stat['params'] == sum(p.numel() for p in model.parameters())
    assert stat['zeta_per_param'] == pytest.approx(stat['zeta_mean'] / stat['params'])
    assert stat == confusion_statistic(model, F.cross_entropy, batches, iterations=4, batches_per_iteration=3, seed=2)


def test_random_batches_from_an_array_loader_are_seeded_and_leave_its_cursor():
    loader, _ = search_loaders('digits', batch_size=16, bilevel=False)
    next(iter(loader))
    state = loader.state_dict()
    a, b, c = random_batches(loader, 3, seed=5), random_batches(loader, 3, seed=5), random_batches(loader, 3, seed=6)
    assert loader.state_dict() == state
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))


def test_too_few_batches_is_a_clear_error():
    with pytest.raises(ValueError, match='at least 2 mini-batches'):
        gradient_confusion(tiny_mlp(), F.cross_entropy, mini_batches(1))


class Fixed(nn.Module):
    "A model whose only role is to carry its depth."
    def __init__(self, layers): super().__init__(); self.layers = layers; self.w = nn.Parameter(torch.zeros(1))


def test_match_search_depth_picks_the_depth_closest_to_the_final_statistic(monkeypatch):
    values = {20: 0.57, 8: 0.20, 14: 0.56, 17: 0.87}  # final 20 cells; candidates 8, 14, 17
    monkeypatch.setattr(confusion, 'train_briefly', lambda *a, **k: [])
    monkeypatch.setattr(confusion, 'confusion_statistic', lambda model, *a, **k: dict(
        zeta_mean=values[model.layers] * 1000, zeta_per_param=values[model.layers], params=1000))
    best, table = match_search_depth(Fixed, lambda: Fixed(20), [8, 14, 17], loader=[])
    assert best == 14
    assert [(r['role'], r['layers']) for r in table] == [('final', 20), ('search', 8), ('search', 14), ('search', 17)]
    assert [r['distance'] for r in table][1:] == pytest.approx([0.37, 0.01, 0.30])
    assert table[0]['distance'] is None
    # matching on the mean ζ instead can pick another depth
    values.update({8: 0.57 / 2})
    monkeypatch.setattr(confusion, 'confusion_statistic', lambda model, *a, **k: dict(
        zeta_mean=values[model.layers] * (2 if model.layers == 8 else 1), zeta_per_param=values[model.layers],
        params=1000))
    assert match_search_depth(Fixed, lambda: Fixed(20), [8, 14, 17], loader=[], statistic='zeta_mean')[0] == 8
    with pytest.raises(ValueError, match="statistic must be"):
        match_search_depth(Fixed, lambda: Fixed(20), [8], loader=[], statistic='zeta')


def test_match_search_depth_end_to_end_on_digits():
    loader, _ = search_loaders('digits', batch_size=16, bilevel=False)
    state = loader.state_dict()
    best, table = match_search_depth(
        lambda depth: Supernet(C=2, num_classes=10, layers=depth, space='darts_small', in_channels=1),
        lambda: NetworkCIFAR(2, 10, layers=2, auxiliary=False, genotype='DARTS_V2', in_channels=1),
        depths=[1, 2], loader=loader, train_steps=2, iterations=2, batches_per_iteration=2)
    assert loader.state_dict() == state
    assert [(r['role'], r['layers']) for r in table] == [('final', 2), ('search', 1), ('search', 2)]
    assert best == min(table[1:], key=lambda r: r['distance'])['layers']
    assert all(r['zeta_mean'] >= 0 and r['params'] > 0 for r in table)
    json.dumps(table)
    fig = plot_confusion_table(table)
    assert len(fig.axes[0].patches) == 3
