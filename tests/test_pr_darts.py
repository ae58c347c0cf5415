"PR-DARTS: the regularizer against the official code's formula, the gates, the selection, a search, resume, the CLI."
import json, math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import stacvs.pr_darts  # registers the 'pr_gates' relaxation and the 'pr_darts' method (until stacvs imports it itself)
from stacvs.pr_darts import (GroupGates, PRDarts, sample_gates, gate_open_probability, gate_temperature, group_members,
                             deepest_path, pr_darts_terms, pr_darts_cell)
from stacvs.cells import CELL_TYPES
from stacvs.cli import main
from stacvs.genotypes import derive_genotype, genotype_to_dict, make_genotype
from stacvs.methods import method_config, run_method
from stacvs.search import Search
from stacvs.spaces import SearchSpace, get_space, edge_inputs

TINY = dict(dataset='digits', layers=3, channels=4, epochs=1, batch_size=16, fraction=0.3, max_steps_per_epoch=2,
            progress=False)
TINY_ARGS = ['--dataset', 'digits', '--layers', '3', '--channels', '4', '--epochs', '1', '--batch-size', '16',
             '--fraction', '0.3', '--max-steps-per-epoch', '2', '--no-progress']

# salesforce/PR-DARTS: the op order of its 'darts' space (cell_operations.DARTS_SPACE) and its edge keys
PR_OPS = ['none', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5', 'avg_pool_3x3',
          'max_pool_3x3']
EDGE2INDEX = {key: i for i, key in enumerate(sorted(f'{i}<-{j}' for i in range(4) for j in range(2 + i)))}


def official_regularizer(alpha_n, alpha_r, idx_n, idx_r, tau, a=-0.1, b=1.1, threshold=0.2, l1=0.01, l2=0.005, l3=0.005):
    "`get_regularization` of PRDARTS_search/search_model_prdarts_nasnet.py, transcribed in numpy (its op and edge order)."
    sig = lambda x: 1 / (1 + np.exp(-x))
    para = tau * np.log(-a / b)
    n_act, r_act = sig(alpha_n - para) * idx_n, sig(alpha_r - para) * idx_r
    skip = 0.5 * n_act[:, 1].sum() / idx_n[:, 1].sum() if idx_n[:, 1].sum() > 0 else 0.0
    skip += 0.5 * r_act[:, 1].sum() / idx_r[:, 1].sum() if idx_r[:, 1].sum() > 0 else 0.0
    pool_n, pool_r = idx_n[:, 6:8].sum(), idx_r[:, 6:8].sum()
    pool = (0.5 / pool_n) * n_act[:, 6:8].sum() if pool_n else 0.0
    pool += (0.5 / pool_r) * r_act[:, 6:8].sum() if pool_r else 0.0
    other_n = idx_n.sum() - idx_n[:, 1].sum() - pool_n
    other_r = idx_r.sum() - idx_r[:, 1].sum() - pool_r
    other = (0.5 / other_n) * (n_act[:, 0].sum() + n_act[:, 2:6].sum()) if other_n else 0.0
    other += (0.5 / other_r) * (r_act[:, 0].sum() + r_act[:, 2:6].sum()) if other_r else 0.0
    path_idx = [EDGE2INDEX['0<-1'], EDGE2INDEX['1<-2'], EDGE2INDEX['2<-3'], EDGE2INDEX['3<-4']]
    def path_of(act, idx):
        chosen = [i for i in path_idx if idx[i, 2:6].sum() > 0]
        return math.prod(act[i, 2:6].sum() / idx[i, 2:6].sum() for i in chosen) if chosen else 0.0
    path = 0.5 * (path_of(n_act, idx_n) + path_of(r_act, idx_r))
    hinge = lambda x: x - threshold if x > threshold else 0.0
    return l1 * hinge(skip) + l2 * (hinge(other) + hinge(pool)) - l3 * path


def random_masks(generator, k=2, edges=14, ops=8):
    "k ones per edge at random positions."
    return torch.zeros(edges, ops).scatter_(1, torch.rand(edges, ops, generator=generator).topk(k, 1).indices, 1.)


@pytest.mark.parametrize('seed,tau,k', [(0, 1.0, 2), (1, 0.1, 2), (2, 0.55, 1), (3, 0.3, 3)])
def test_regularizer_equals_the_official_formula(seed, tau, k):
    "Our vectorized terms on stacvs's op order against the official code's formula on its op order."
    gen = torch.Generator().manual_seed(seed)
    space = get_space('darts')
    to_pr = [space.normal[0].index(op) for op in PR_OPS]  # stacvs column of each of the code's columns
    alpha = {t: 2 * torch.randn(14, 8, generator=gen) for t in CELL_TYPES}
    mask = {t: random_masks(gen, k) for t in CELL_TYPES}
    if seed == 1: mask['reduce'][:, space.normal[0].index('skip_connect')] = 0.  # a group absent from one cell type
    if seed == 2: mask['normal'][deepest_path(4)] = 0.  # no path edge sampled in the normal cell
    probs = {t: gate_open_probability(alpha[t], tau)[None] for t in CELL_TYPES}
    members = {t: group_members(space.edges(t)) for t in CELL_TYPES}
    ours = pr_darts_terms(probs, {t: mask[t][None] for t in CELL_TYPES}, members, deepest_path(4))['total'].item()
    code = official_regularizer(*(alpha[t][:, to_pr].double().numpy() for t in CELL_TYPES),
                                *(mask[t][:, to_pr].double().numpy() for t in CELL_TYPES), tau)
    assert ours == pytest.approx(code, abs=1e-7) and code != 0.0


def test_regularizer_on_an_unequal_width_space_by_op_name():
    "RobustDARTS S1 (two ops per edge, different on each edge): the groups follow the op names, one term at a time."
    space, gen = get_space('s1'), torch.Generator().manual_seed(5)
    alpha = {t: torch.randn(1, 14, 2, generator=gen) for t in CELL_TYPES}
    mask = {t: (torch.rand(1, 14, 2, generator=gen) > 0.4).float() for t in CELL_TYPES}
    probs = {t: gate_open_probability(alpha[t], 0.5) for t in CELL_TYPES}
    terms = pr_darts_terms(probs, mask, {t: group_members(space.edges(t)) for t in CELL_TYPES}, deepest_path(4))
    group = lambda op: 'skip' if op == 'skip_connect' else 'pool' if 'pool' in op else 'other'
    for g in ('skip', 'pool', 'other'):
        direct = 0.
        for t in CELL_TYPES:
            cells = [(e, o) for e, ops in enumerate(space.edges(t)) for o, op in enumerate(ops)
                     if group(op) == g and mask[t][0, e, o]]
            direct += 0.5 * (sum(probs[t][0, e, o].item() for e, o in cells) / len(cells) if cells else 0.)
        assert terms[g].item() == pytest.approx(direct, abs=1e-6)
    path = 0.
    for t in CELL_TYPES:
        means = []
        for e in deepest_path(4):
            chosen = [o for o, op in enumerate(space.edges(t)[e]) if mask[t][0, e, o] and group(op) == 'other'
                      and op not in ('none', 'noise')]
            if chosen: means.append(sum(probs[t][0, e, o].item() for o in chosen) / len(chosen))
        path += 0.5 * (math.prod(means) if means else 0.)
    assert terms['path'].item() == pytest.approx(path, abs=1e-6)


def test_deepest_path_is_the_chain_from_the_previous_cell():
    assert [edge_inputs(4)[e] for e in deepest_path(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert deepest_path(4) == [EDGE2INDEX[k] for k in ('0<-1', '1<-2', '2<-3', '3<-4')]


def test_gates_distribution_and_limits():
    alpha, tau, a, b = torch.tensor([-1.0, 0.5, 2.0]), 0.4, -0.1, 1.1
    torch.manual_seed(0)
    g = sample_gates(alpha.expand(200_000, 3), tau).double()
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert torch.allclose((g > 0).double().mean(0), torch.tensor([sig(x - tau * math.log(-a / b)) for x in alpha.tolist()],
                                                         dtype=torch.float64), atol=5e-3)
    assert torch.allclose((g == 1).double().mean(0), torch.tensor([sig(x - tau * math.log((1 - a) / (b - 1)))
                                                          for x in alpha.tolist()], dtype=torch.float64), atol=5e-3)
    u = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000  # E[g] = ∫ g(u) du, midpoint rule
    expected = [((torch.sigmoid((x + torch.log(u / (1 - u))) / tau) * (b - a) + a).clamp(0, 1)).mean().item()
                for x in alpha.tolist()]
    assert torch.allclose(g.mean(0), torch.tensor(expected, dtype=torch.float64), atol=5e-3)
    cold = sample_gates(alpha.expand(100_000, 3), 1e-4).double()  # τ → 0: Bernoulli(σ(α))
    assert ((cold > 0) & (cold < 1)).double().mean() < 1e-3
    assert torch.allclose((cold == 1).double().mean(0), torch.sigmoid(alpha).double(), atol=5e-3)
    assert sample_gates(torch.tensor([-60., 60.]).expand(1000, 2), tau).unique(dim=0).tolist() == [[0., 1.]]


def test_relaxation_keeps_k_ops_per_edge_with_the_gates_gradient():
    gates = GroupGates()
    gates.drop_prob = 0.
    alpha = torch.tensor([[1., -1., 0.5, -2.], [0.2, 0.1, float('-inf'), float('-inf')]], requires_grad=True)
    torch.manual_seed(4); u = torch.rand(2, 4)
    torch.manual_seed(4); w = gates.mixing_weights(alpha)
    real = torch.isfinite(alpha.detach())
    a = alpha.detach().masked_fill(~real, 0.).requires_grad_()
    g, kept = sample_gates(a, gates.tau, u=u), w.detach().bool()
    assert not (kept & ~real).any() and kept.sum(-1).tolist() == [2, 2]
    assert g[0][kept[0]].min() >= g[0][~kept[0]].max()
    w.sum().backward()
    assert torch.allclose(alpha.grad, torch.autograd.grad((g * kept).sum(), a)[0])
    gates.k = 1  # an edge keeps no more than it has, and no padding
    assert gates.mixing_weights(alpha).detach().sum(-1).tolist() == [1., 1.]
    gates.k, gates.drop_prob = 3, 0.4
    assert gates.mixing_weights(alpha).detach().sum(-1).tolist() == [3., 2.]


def test_temperature_schedule():
    assert [round(gate_temperature(e, 5), 6) for e in range(6)] == [1.0, 0.775, 0.55, 0.325, 0.1, 0.1]
    assert gate_temperature(0, 1) == 1.0 and gate_temperature(3, 4, 10, 1) == 1.0


def test_selection_ranks_op_input_pairs_not_edges():
    space = SearchSpace.uniform('pair', ('none', 'skip_connect', 'sep_conv_3x3'), nodes=2)
    a = torch.zeros(5, 3)
    a[0] = torch.tensor([0., 0., 0.5])  # softmax: skip .274, sep .452
    a[1] = torch.tensor([-5., 2.1, 2.2])  # skip .475, sep .525: both beat edge 0's best
    a[2:] = torch.tensor([0., 1., 0.])
    assert pr_darts_cell(a, space.normal, 2) == (('sep_conv_3x3', 1), ('skip_connect', 1), ('skip_connect', 0),
                                                 ('skip_connect', 1))
    assert derive_genotype(a, a, space).normal[:2] == (('sep_conv_3x3', 1), ('sep_conv_3x3', 0))


def test_the_regularizer_is_added_to_losses_that_train_alpha_only():
    config, _ = method_config('pr_darts', **TINY)
    cb = PRDarts()
    s = Search(config, [cb])
    cb.on_start(s)
    x, y = next(iter(s.train_loader))
    loss, logits = s.loss(x, y, 'alpha')
    assert torch.allclose(loss, F.cross_entropy(logits, y) + cb.terms(s)['total'])  # terms of that forward's masks
    loss, logits = s.loss(x, y, 'weights')
    assert torch.equal(loss, F.cross_entropy(logits, y))
    assert s.model.relaxation.tau == 1.0 and s.model.relaxation.drop_prob == 0.4


@pytest.mark.parametrize('alpha_per_cell', [False, True])
def test_run_method_derives_the_pr_darts_genotype(tmp_path, alpha_per_cell):
    r = run_method('pr_darts', out=str(tmp_path), alpha_per_cell=alpha_per_cell, **TINY)
    space = get_space('darts')
    rows = {t: [torch.tensor(a) for a in r[f'alpha_{t}']] for t in CELL_TYPES}
    cell = lambda t, i: pr_darts_cell(rows[t][i], space.edges(t))
    if alpha_per_cell:  # cells 0 normal, 1 and 2 reduce (3 cells)
        expected = [make_genotype(cell('normal', 0), cell('reduce', 0)), make_genotype(cell('normal', 0), cell('reduce', 0)),
                    make_genotype(cell('normal', 0), cell('reduce', 1))]
        assert r['genotype'] == [genotype_to_dict(g) for g in expected]
    else:
        assert r['genotype'] == genotype_to_dict(make_genotype(cell('normal', 0), cell('reduce', 0)))
        assert r['genotype_darts_rule'] == genotype_to_dict(derive_genotype(rows['normal'][0], rows['reduce'][0], space))
    saved = json.loads((tmp_path / 'result.json').read_text())
    assert saved['genotype'] == r['genotype'] and saved['pr_darts']['lambda_path'] == 0.005
    assert json.loads((tmp_path / 'config.json').read_text())['relaxation'] == 'pr_gates'


class KillAt:
    def __init__(self, step): self.step = step
    def on_step_end(self, s):
        if s.global_step == self.step: raise KeyboardInterrupt


@pytest.mark.parametrize('checkpoint_every,kill', [(0, 3), (1, 4)])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, checkpoint_every, kill):
    kw = dict(TINY, epochs=3, checkpoint_every=checkpoint_every, eval_valid=False)  # τ 1 → 0.55 → 0.1: the schedule resumes too
    full = run_method('pr_darts', out=str(tmp_path / 'full'), **kw)
    with pytest.raises(KeyboardInterrupt):
        run_method('pr_darts', callbacks=[KillAt(kill)], out=str(tmp_path / 'killed'), **kw)
    resumed = run_method('pr_darts', out=str(tmp_path / 'killed'), resume=True, **kw)
    for key in ('alpha_normal', 'alpha_reduce', 'genotype', 'genotype_darts_rule', 'pr_darts'):
        assert resumed[key] == full[key], key
    assert resumed['pr_darts']['tau'] == pytest.approx(0.1)
    log = [json.loads(line) for line in open(tmp_path / 'killed' / 'log.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2, 3]


def test_cli_search_resume_and_bad_input(tmp_path, capsys):
    out = tmp_path / 'run'
    r = main(['--import', 'stacvs.pr_darts', 'search', '--method', 'pr_darts', *TINY_ARGS, '--out', str(out)])
    assert json.loads((out / 'result.json').read_text())['genotype'] == r['genotype']
    assert json.loads((out / 'config.json').read_text())['method'] == 'pr_darts'
    assert 'genotype: ' + json.dumps(r['genotype']) in capsys.readouterr().out
    again = main(['search', '--out', str(out), '--resume', '--no-progress'])  # the saved method, read back
    assert again['genotype'] == r['genotype'] and again['method'] == 'pr_darts'
    with pytest.raises(SystemExit) as e:
        main(['search', '--method', 'pr_darts', '--relaxation', 'softmax', *TINY_ARGS, '--out', str(tmp_path / 'bad')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith('stacvs search: error: --method pr_darts needs')
    assert not (tmp_path / 'bad').exists()
