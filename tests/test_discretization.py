"DARTS-PT and discretization accuracy: the proxies match independent computations and leave the model as it was."
import copy, json, math
import numpy as np
import pytest
import torch
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from stacvs.cells import Supernet
from stacvs.data import search_loaders
from stacvs.search import SearchConfig, Search
from stacvs.spaces import SearchSpace
from stacvs.genotypes import genotype_to_dict
from stacvs.diagnostics import supernet_accuracy, evaluation_batches
from stacvs.discretization import (pt_proxy_strength, pt_select_genotype, discretization_accuracy, edge_betas,
                                   beta_accuracy_correlation, plot_beta_vs_accuracy, PTSelection)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def tiny_model():
    torch.manual_seed(0)
    model = Supernet(4, 10, 3, 'darts_small', in_channels=1, alpha_init_scale=1.)
    _, valid = search_loaders('digits', batch_size=16, fraction=0.2, seed=0)
    model.train(); model(next(iter(valid.eval_loader()))[0])  # non-trivial BN running statistics
    return model, valid


def test_pt_proxy_strength_leaves_model_unchanged_and_matches_op_swap(tiny_model):
    model, valid = tiny_model
    before, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    s = pt_proxy_strength(model, valid, 'reduce', edge=4, max_batches=2)
    assert _same_state(before, model.state_dict()) and torch.equal(rng, torch.get_rng_state())
    assert 'mixing_weights' not in model.__dict__ and model.training
    batches = evaluation_batches(valid, 2)
    for i in (1, 2):  # removing op i == the same supernet with op i replaced by `none`
        swapped = copy.deepcopy(model)
        for cell in swapped.cells:
            if cell.reduction: cell.edges[4].active.remove(i)
        assert s['acc'][i] == pytest.approx(supernet_accuracy(swapped, batches))
        assert s['drop'][i] == pytest.approx(s['base_acc'] - s['acc'][i])
    assert s['acc'][0] == s['base_acc']  # removing `none` changes nothing


def test_discretization_accuracy_fixes_the_edge_and_copies(tiny_model):
    model, valid = tiny_model
    before = copy.deepcopy(model.state_dict())
    acc = discretization_accuracy(model, valid, edge=5, op='max_pool_3x3', finetune_steps=0, max_batches=2)
    onehot = copy.deepcopy(model)
    with torch.no_grad(): onehot.alpha_normal[:, 5] = torch.tensor([-math.inf, 0., -math.inf, -math.inf])
    assert acc == pytest.approx(supernet_accuracy(onehot, evaluation_batches(valid, 2)))
    tuned = discretization_accuracy(model, valid, edge=5, op=1, finetune_steps=2, max_batches=2)
    assert 0 <= tuned <= 1 and _same_state(before, model.state_dict())
    with pytest.raises(ValueError, match="offers"): discretization_accuracy(model, valid, 5, 'sep_conv_7x7', 0)


def test_pt_select_genotype(tiny_model):
    _, valid = tiny_model
    torch.manual_seed(0)
    space = SearchSpace.uniform('pt_test', ('none', 'max_pool_3x3', 'sep_conv_3x3'), nodes=2)
    model = Supernet(4, 10, 3, space, in_channels=1, alpha_init_scale=1.)
    before = copy.deepcopy(model.state_dict())
    calls = []
    g = pt_select_genotype(model, valid, max_batches=1,
                           tune_fn=lambda m: calls.append(m.mixing_weights('normal').detach().clone()))
    assert len(calls) == 10 and _same_state(before, model.state_dict())  # one call per op decision (5 edges × 2)
    assert len(g.normal) == len(g.reduce) == 4 and all(op != 'none' for op, _ in g.normal + g.reduce)
    # the first decision (normal edge 0, nothing fixed yet) is pt_proxy_strength's strongest non-none op
    s = pt_proxy_strength(model, valid, 'normal', 0, max_batches=1)
    best = max((i for i, op in enumerate(s['ops']) if op != 'none'), key=lambda i: s['drop'][i])
    assert [op for op, inp in g.normal[:2] if inp == 0] == [s['ops'][best]]
    assert calls[0][0, 0].tolist() == [float(i == best) for i in range(3)]  # tune_fn saw edge 0 discretized


def test_beta_accuracy_correlation_against_scipy():
    from scipy import stats
    rng = np.random.default_rng(0)
    a, b = rng.random(7), rng.random(7)
    b[3] = b[5]  # a tie
    c = beta_accuracy_correlation(a, b)
    assert c['pearson'] == pytest.approx(stats.pearsonr(a, b)[0])
    assert c['kendall_tau'] == pytest.approx(stats.kendalltau(a, b).statistic)


def test_beta_vs_accuracy_plot_returns_a_figure(tiny_model):
    model, _ = tiny_model
    betas = edge_betas(model, 'normal', 0)
    assert betas == pytest.approx(torch.softmax(model.alpha_normal[0, 0].detach(), -1).tolist())
    fig = plot_beta_vs_accuracy(betas, [0.1, 0.3, 0.2, 0.4], ['a', 'b', 'c', 'd'])
    assert isinstance(fig, Figure); plt.close(fig)


def test_the_registry_finds_pt_selection():
    import stacvs.diagnostics as diagnostics
    assert isinstance(diagnostics.make_diagnostics(['pt_selection'])[0], PTSelection)


def test_pt_selection_adds_the_darts_pt_genotype_to_the_result(tmp_path):
    config = SearchConfig(dataset='digits', layers=2, channels=4, epochs=1, max_steps_per_epoch=1, batch_size=16,
                          space='darts_small', progress=False, out=str(tmp_path))
    search = Search(config, [PTSelection(max_batches=1)])
    result = search.run()
    loader = search.valid_loader or search.train_loader
    expected = pt_select_genotype(search.model, loader, 1, seed=config.seed)
    assert result['genotype_pt'] == genotype_to_dict(expected)
    assert json.loads((tmp_path / 'diagnostics' / 'pt_selection.json').read_text())['history'][0]['genotype'] == \
        result['genotype_pt']
