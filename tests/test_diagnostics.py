"VS-DARTS diagnostics: each instrument records what it claims on a tiny search; instruments are found by name."
import copy, json, math
from dataclasses import replace
from types import SimpleNamespace
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from stacvs.cells import Supernet
from stacvs.ops import make_op
from stacvs.relaxations import RELAXATIONS, get_relaxation
from stacvs.search import SearchConfig, Search
from stacvs.spaces import SearchSpace
from stacvs.diagnostics import (NodeVariance, NoneWeight, SepConvGradNorm, EdgeStatistics, HessianEigenvalue,
                                hessian_eigenvalue, power_iteration, preserved, plot_node_variance, plot_none_weight,
                                plot_grad_norm, plot_edge_statistics, plot_hessian_eigenvalue, check_diagnostics,
                                make_diagnostics, DIAGNOSTICS)

TINY = SearchConfig(dataset='digits', layers=3, channels=4, epochs=2, batch_size=16, fraction=0.2,
                    max_steps_per_epoch=2, progress=False, eval_valid=False, space='darts_small', seed=0)


def _fake(model):
    return SimpleNamespace(model=model, device=torch.device('cpu'), global_step=0, run_dir=None, should_stop=False)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class DirectGradNorms:
    "Reference for SepConvGradNorm: the norm of .grad of sep_conv_3x3 on every edge, per cell, at each step end."
    def on_start(self, search): self.steps, self.epochs = [], []
    def on_step_end(self, search):
        per = {}
        for c, cell in enumerate(search.model.cells):
            for e, mixed in enumerate(cell.edges):
                if 'sep_conv_3x3' in mixed.op_names:
                    op = mixed._ops[mixed.op_names.index('sep_conv_3x3')]
                    per[(c, e)] = math.sqrt(sum(float((p.grad ** 2).sum()) for p in op.parameters()))
        self.steps.append(per)
    def on_epoch_end(self, search, record): self.epochs.append(self.steps); self.steps = []


@pytest.fixture(scope='module')
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp('run')
    instruments = dict(nv=NodeVariance(every=2), nw=NoneWeight(), gn=SepConvGradNorm(),
                       es=EdgeStatistics(cell=0, edge=2, every=1), he=HessianEigenvalue(iterations=3, batches=1))
    direct = DirectGradNorms()
    s = Search(replace(TINY, out=str(out)), callbacks=[*instruments.values(), direct])
    s.run()
    return s, instruments, direct, out


def test_histories_have_one_record_per_epoch_and_are_written(searched):
    s, ins, _, out = searched
    for inst in ins.values():
        assert [r['epoch'] for r in inst.history] == [1, 2]
        written = json.loads((out / 'diagnostics' / f'{inst.name}.json').read_text())
        assert written['history'] == json.loads(json.dumps(inst.history))
    n_cells, nodes = len(s.model.cells), s.model.space.nodes
    v = ins['nv'].history[-1]['variance']
    assert len(v) == n_cells and all(len(row) == nodes for row in v) and all(x > 0 for row in v for x in row)
    assert ins['nv'].cell_types == ['normal', 'reduce', 'reduce']
    cov = np.array(ins['es'].history[-1]['covariance'])
    assert cov.shape == (4, 4) and np.allclose(cov, cov.T) and np.all(cov[0] == 0)  # `none` never runs
    assert ins['es'].history[-1]['ratio'] > 0
    assert all(math.isfinite(r['eigenvalue']) for r in ins['he'].history)


def test_none_weight_equals_softmax_of_alpha(searched):
    s, ins, _, _ = searched
    rec = ins['nw'].history[-1]
    for t in ('normal', 'reduce'):
        beta = torch.softmax(getattr(s.model, f'alpha_{t}').detach()[0], -1)  # darts_small: 'none' is op 0, no padding
        node_edges = {0: [0, 1], 1: [2, 3, 4], 2: [5, 6, 7, 8], 3: [9, 10, 11, 12, 13]}
        want = [beta[edges, 0].mean().item() for edges in node_edges.values()]
        np.testing.assert_allclose(rec['beta_none'][t], want, rtol=1e-6)
        np.testing.assert_allclose(rec['mixing_none'][t], want, rtol=1e-6)  # softmax relaxation: the same


def test_sep_conv_grad_norm_equals_direct_norm_of_grad(searched):
    s, ins, direct, _ = searched
    types = ['reduce' if c.reduction else 'normal' for c in s.model.cells]
    for record, steps in zip(ins['gn'].history, direct.epochs):
        for t in ('normal', 'reduce'):
            cells = [c for c, ct in enumerate(types) if ct == t]
            want = [np.mean([np.mean([step[(c, e)] for c in cells]) for step in steps]) for e in range(14)]
            np.testing.assert_allclose(record['grad_norm'][t], want, rtol=1e-5)


def test_node_norm_outputs_have_zero_mean_unit_variance():
    torch.manual_seed(0)
    model = Supernet(4, 10, 3, 'darts_small', in_channels=1, node_norm=True).train()
    outs = []
    hooks = [norm.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
             for cell in model.cells for norm in cell.node_norms]
    model(torch.randn(16, 1, 8, 8))
    for h in hooks: h.remove()
    assert len(outs) == 3 * 4
    for o in outs:
        torch.testing.assert_close(o.mean((0, 2, 3)), torch.zeros(o.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(o.var((0, 2, 3), unbiased=False), torch.ones(o.shape[1]), atol=1e-2, rtol=0)
    nv = NodeVariance(); fake = _fake(model); nv.on_start(fake)
    model(torch.randn(16, 1, 8, 8)); nv.on_epoch_end(fake, dict(epoch=1)); nv.remove_hooks()
    np.testing.assert_allclose(nv.history[0]['variance'], 1.0, atol=1e-2)


@pytest.mark.skipif('sqrt' not in RELAXATIONS, reason="the √β relaxation ('sqrt') is not registered yet")
def test_sqrt_beta_mixing_keeps_unit_variance():
    k, n = 4, 200_000
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(k, n, generator=g)
    w = get_relaxation('sqrt').mixing_weights(torch.zeros(k))
    torch.testing.assert_close(w, torch.full((k,), math.sqrt(1 / k)))
    assert abs((w[:, None] * inputs).sum(0).var().item() - 1) < 0.02
    softmax = get_relaxation('softmax').mixing_weights(torch.zeros(k))
    assert abs((softmax[:, None] * inputs).sum(0).var().item() - 1 / k) < 0.01  # DARTS shrinks the variance


def test_noise_op_has_no_gradient_path():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    y = make_op('noise', 4, stride=2)(x)
    assert y.grad_fn is None and not y.requires_grad and y.shape == (2, 4, 4, 4)


def _tiny_hessian_model():
    torch.manual_seed(0)
    space = SearchSpace.uniform('tiny_h', ('skip_connect', 'avg_pool_3x3', 'sep_conv_3x3'), nodes=1)
    m = Supernet(2, 10, 3, space, in_channels=1, alpha_init_scale=1.).double()
    x, y = torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    def loss_of(flat):
        an = flat[:m.alpha_normal.numel()].view_as(m.alpha_normal)
        ar = flat[m.alpha_normal.numel():].view_as(m.alpha_reduce)
        out = torch.func.functional_call(m, {'alpha_normal': an, 'alpha_reduce': ar}, (x,))
        return F.cross_entropy(out, y)
    flat = torch.cat([a.detach().flatten() for a in m.alphas()])
    with preserved(m):
        m.train()
        H = torch.autograd.functional.hessian(loss_of, flat)
    return m, [(x, y)], H


def test_hessian_power_iteration_matches_eigvalsh_of_explicit_hessian():
    m, batches, H = _tiny_hessian_model()
    before = copy.deepcopy(m.state_dict())
    eig = torch.linalg.eigvalsh(H)
    dominant = eig[eig.abs().argmax()].item()
    lam = hessian_eigenvalue(m, batches, iterations=200, tol=1e-12)
    assert lam == pytest.approx(dominant, rel=1e-6)
    assert _same_state(before, m.state_dict())  # BN running statistics restored


def test_power_iteration_on_a_known_matrix():
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    H = Q @ torch.diag(torch.tensor([-3.0, 1.0, 0.5, 0.2, 2.0, -0.1], dtype=torch.float64)) @ Q.T
    lam = power_iteration(lambda v: H @ v, 6, iterations=500, tol=1e-14, dtype=torch.float64)
    assert lam == pytest.approx(-3.0, rel=1e-8)


class Scripted(HessianEigenvalue):
    def __init__(self, values, **kw): super().__init__(**kw); self.values = values
    def eigenvalue(self, search): return self.values[search.epoch]


def _run_scripted(values, **kw):
    torch.manual_seed(0)
    model = Supernet(4, 10, 3, 'darts_small', in_channels=1)
    fake, inst = _fake(model), Scripted(values, **kw)
    for epoch in sorted(values):
        fake.epoch = epoch
        with torch.no_grad():
            for a in model.alphas(): a.fill_(float(epoch))
        inst.on_epoch_end(fake, dict(epoch=epoch))
        if fake.should_stop: break
    return inst, fake, model


def test_early_stop_rule_stops_and_restores_alpha():
    inst, fake, model = _run_scripted({1: 1.0, 2: 1.0, 3: 1.0, 4: 1.2, 5: 1.5, 6: 3.0, 7: 9.0},
                                      stop_ratio=0.75, window=3)
    # epoch 5: λ(2)/λ(5) = 1/1.5 = 0.667 < 0.75 → stop, α from epoch 2
    assert fake.should_stop and inst.stop_epoch == 5
    assert model.alpha_normal.unique().tolist() == [2.0] and model.alpha_reduce.unique().tolist() == [2.0]
    assert inst.history[-1] == dict(epoch=5, eigenvalue=1.5, stopped=True, alpha_from_epoch=2)
    assert inst.record()['stop_epoch'] == 5


def test_early_stop_not_triggered_by_slow_growth_and_without_ratio():
    values = {e: 1.0 + 0.05 * e for e in range(1, 9)}
    inst, fake, model = _run_scripted(values, stop_ratio=0.75, window=2)
    assert not fake.should_stop and inst.stop_epoch is None and model.alpha_normal.unique().tolist() == [8.0]
    inst, fake, _ = _run_scripted({1: 1.0, 2: 100.0}, window=1)  # no stop_ratio: record only
    assert not fake.should_stop and [r['eigenvalue'] for r in inst.history] == [1.0, 100.0]
    with pytest.raises(ValueError, match="stop_ratio must be in"): HessianEigenvalue(stop_ratio=2.0)


def test_plots_return_figures(searched):
    _, ins, _, _ = searched
    figs = [plot_node_variance(ins['nv']), plot_none_weight(ins['nw'].history), plot_grad_norm(ins['gn']),
            plot_edge_statistics(ins['es'].record()), plot_hessian_eigenvalue(ins['he'])]
    assert all(isinstance(f, Figure) for f in figs)
    for f in figs: plt.close(f)


def test_hooks_are_gone_after_the_search(searched):
    s, _, _, _ = searched
    assert all(not m._forward_hooks for m in s.model.modules())


def test_a_resumed_search_keeps_the_diagnostics_of_its_earlier_epochs(tmp_path):
    class KillAt:
        def on_step_end(self, s):
            if s.global_step == 5: raise KeyboardInterrupt
    config = SearchConfig(dataset='digits', layers=3, channels=4, epochs=3, max_steps_per_epoch=2, batch_size=16,
                          progress=False, out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt): Search(config, [NoneWeight(), KillAt()]).run()  # killed in epoch 3
    Search(replace(config, resume=True), [NoneWeight()]).run()
    saved = json.loads((tmp_path / 'diagnostics' / 'none_weight.json').read_text())
    assert [r['epoch'] for r in saved['history']] == [1, 2, 3]


def test_check_diagnostics_validates_names_without_building_instruments(monkeypatch):
    built = []
    monkeypatch.setitem(DIAGNOSTICS, 'node_variance', (lambda **kw: built.append(kw), None))
    assert check_diagnostics(['node_variance', 'hessian', 'pt_selection'], 0.75) == ['node_variance', 'hessian',
                                                                                      'pt_selection']
    assert built == []  # validating builds nothing
    with pytest.raises(ValueError, match=r"unknown diagnostics \['variance'\]; choose from \[.*'pt_selection'"):
        check_diagnostics(['variance', 'hessian'])
    with pytest.raises(ValueError, match="needs the 'hessian' diagnostic"): check_diagnostics(['node_variance'], 0.75)
    make_diagnostics(['node_variance'])
    assert built == [{}]
