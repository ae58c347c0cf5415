"StacNAS experiments: random baseline architectures, seed sweeps, skips vs depth, edge variants, α–accuracy correlation."
import itertools, json, math, statistics
import matplotlib
matplotlib.use('Agg')
import numpy as np
import pytest
import torch
from scipy import stats
import stacvs.experiments as experiments
from stacvs.experiments import (random_genotype, run_or_read, search_over_seeds, train_over, group_values,
                                seed_spread_table, plot_seed_spread, count_skips, skips_vs_depth, plot_skips_vs_depth,
                                edge_variants, genotype_edge, standalone_accuracy, edge_alpha,
                                alpha_accuracy_correlation, alpha_accuracy_rows, plot_alpha_vs_accuracy)
from stacvs.genotypes import CELL_TYPES, GENOTYPES, validate_genotype, genotype_to_dict, genotype_from_dict
from stacvs.spaces import get_space, edge_inputs

TINY_SEARCH = dict(dataset='digits', channels=4, layers=3, epochs=1, max_steps_per_epoch=2, fraction=0.2,
                   batch_size=16, device='cpu', progress=False)
TINY_TRAIN = dict(dataset='digits', channels=4, layers=3, epochs=1, max_steps_per_epoch=2, fraction=0.2,
                  batch_size=32, cutout=2, device='cpu', progress=False)


class Counter:
    "Wraps a function of stacvs.experiments and counts its calls."
    def __init__(self, fn): self.fn, self.calls = fn, 0
    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    "Count the searches and trainings the experiment helpers launch."
    searches, trainings = Counter(experiments.run_method), Counter(experiments.train)
    monkeypatch.setattr(experiments, 'run_method', searches)
    monkeypatch.setattr(experiments, 'train', trainings)
    return searches, trainings


# ---- random architectures

@pytest.mark.parametrize('space', ['darts', 'stacnas_stage1', 's1', 's3'])
def test_random_genotypes_are_valid_draws_from_the_space(space):
    sp = get_space(space)
    inputs = edge_inputs(sp.nodes)
    for seed in range(20):
        g = random_genotype(space, seed)
        validate_genotype(g)
        for t in CELL_TYPES:
            pairs = getattr(g, t)
            assert len(pairs) == 2 * sp.nodes
            for node in range(sp.nodes):
                (op_a, in_a), (op_b, in_b) = pairs[2 * node], pairs[2 * node + 1]
                assert in_a != in_b and 0 <= in_a < 2 + node and 0 <= in_b < 2 + node  # two distinct earlier states
                for op, inp in ((op_a, in_a), (op_b, in_b)):
                    assert op != 'none' and op in sp.edges(t)[inputs.index((node, inp))]


def test_random_genotypes_are_deterministic_per_seed_differ_across_seeds_and_cover_every_op():
    assert random_genotype('darts', 3) == random_genotype('darts', 3)
    torch.manual_seed(0); a = random_genotype('darts', 5)
    torch.manual_seed(1); b = random_genotype('darts', 5)  # the global random state plays no part
    assert a == b
    draws = [random_genotype('darts', s) for s in range(60)]
    assert len(set(draws)) == 60
    for t in CELL_TYPES:
        assert {op for g in draws for op, _ in getattr(g, t)} == set(get_space('darts').ops) - {'none'}
        # every input of node 3 (0..4) gets chosen
        assert {inp for g in draws for _, inp in getattr(g, t)[6:]} == set(range(5))


def test_random_genotype_node_count_and_errors():
    g = random_genotype('darts', 0, nodes=3)
    assert len(g.normal) == 6 and g.normal_concat == (2, 3, 4)
    assert random_genotype('darts', 0, nodes=4) == random_genotype('darts', 0)
    with pytest.raises(ValueError, match='leave nodes=None'):
        random_genotype('s1', 0, nodes=3)


# ---- counting skips, edge variants

def test_count_skips_matches_a_hand_count_of_published_genotypes():
    # reference §9: DARTS_V2 normal (skip,0) at nodes 2 and 3; reduce (skip,2) at nodes 1, 2, 3
    assert (count_skips('DARTS_V2'), count_skips('DARTS_V2', 'reduce')) == (2, 3)
    # StacNAS CIFAR-10: normal (skip,0) at nodes 0 and 1; reduce (skip,1) at node 0
    assert (count_skips(GENOTYPES['STACNAS_CIFAR10']), count_skips('STACNAS_CIFAR10', 'reduce')) == (2, 1)
    assert count_skips(dict(genotype=genotype_to_dict(GENOTYPES['VS_DARTS_BEST']))) == 1
    for s in range(10):
        g = random_genotype('darts', s)
        assert count_skips(g) == [op for op, _ in g.normal].count('skip_connect')


def test_edge_variants_change_exactly_one_op_and_keep_its_input():
    g = random_genotype('darts', 7)
    ops = ['max_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'dil_conv_5x5']
    for t, node, slot in itertools.product(CELL_TYPES, range(4), (0, 1)):
        variants = edge_variants(g, t, node, slot, ops)
        assert len(variants) == len(ops)
        for op, v in zip(ops, variants):
            validate_genotype(v)
            diff = [(k, a, b) for k, (a, b) in enumerate(zip(getattr(g, t), getattr(v, t))) if a != b]
            expected = [] if getattr(g, t)[2 * node + slot][0] == op else [2 * node + slot]
            assert [k for k, *_ in diff] == expected
            assert getattr(v, t)[2 * node + slot] == (op, getattr(g, t)[2 * node + slot][1])
            other = 'reduce' if t == 'normal' else 'normal'
            assert getattr(v, other) == getattr(g, other) and v.normal_concat == g.normal_concat


@pytest.mark.parametrize('args,message', [
    (('normal', 4, 0), 'node 4 does not exist'), (('normal', 0, 2), 'slot must be 0 or 1'),
    (('middle', 0, 0), "cell_type must be 'normal' or 'reduce'")])
def test_edge_variants_reject_bad_positions(args, message):
    with pytest.raises(ValueError, match=message):
        edge_variants('DARTS_V2', *args, ['skip_connect'])


def test_genotype_edge_is_the_supernet_edge_of_a_pair():
    g = GENOTYPES['DARTS_V2']
    for t, node, slot in itertools.product(CELL_TYPES, range(4), (0, 1)):
        inp = getattr(g, t)[2 * node + slot][1]
        e = genotype_edge(g, t, node, slot)
        assert edge_inputs(4)[e] == (node, inp)
    assert genotype_edge(g, 'normal', 3, 1) == 2 + 3 + 4 + 2  # node 3's edges start at 9; input 2


# ---- correlation and tables

def kendall_tau_by_hand(x, y):
    pairs = list(itertools.combinations(range(len(x)), 2))
    return sum(np.sign((x[i] - x[j]) * (y[i] - y[j])) for i, j in pairs) / len(pairs)


def test_alpha_accuracy_correlation_equals_direct_computations_and_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.random(7), rng.random(7)  # no ties
    c = alpha_accuracy_correlation(x, y)
    assert math.isclose(c['pearson'], np.corrcoef(x, y)[0, 1], rel_tol=1e-9)
    assert math.isclose(c['kendall_tau'], kendall_tau_by_hand(x, y), rel_tol=1e-9)
    assert math.isclose(c['pearson_p'], stats.pearsonr(x, y).pvalue) and math.isclose(c['kendall_p'],
                                                                                      stats.kendalltau(x, y).pvalue)
    assert c['n'] == 7


def test_alpha_accuracy_correlation_is_plus_or_minus_one_for_monotone_data():
    x = [0.05, 0.1, 0.2, 0.3, 0.35]
    up = alpha_accuracy_correlation(x, [2 * a + 1 for a in x])
    assert math.isclose(up['pearson'], 1.0) and math.isclose(up['kendall_tau'], 1.0)
    down = alpha_accuracy_correlation(x, [math.exp(-10 * a) for a in x])  # monotone, not linear
    assert math.isclose(down['kendall_tau'], -1.0) and -1.0 < down['pearson'] < -0.9
    with pytest.raises(ValueError, match='got 3 α and 2 accuracies'):
        alpha_accuracy_correlation([1, 2, 3], [1, 2])


def test_seed_spread_table_by_hand():
    runs = [dict(name='darts', test_acc=v) for v in (0.97, 0.93, 0.95)] + [dict(name='random', test_acc=0.94)]
    darts, random_ = seed_spread_table(runs)
    assert darts['group'] == 'darts' and darts['n'] == 3
    assert math.isclose(darts['mean'], 0.95) and math.isclose(darts['std'], statistics.stdev([0.97, 0.93, 0.95]))
    assert (darts['min'], darts['max'], darts['best']) == (0.93, 0.97, 0.97)
    assert (random_['n'], random_['std'], random_['best']) == (1, 0.0, 0.94)
    assert seed_spread_table({'e': [3.0, 2.0]}, higher_is_better=False)[0]['best'] == 2.0
    assert group_values(runs) == {'darts': [0.97, 0.93, 0.95], 'random': [0.94]}
    with pytest.raises(ValueError, match=r"lacks \['method'\]"):
        seed_spread_table(runs, group='method')


def test_plots_draw_every_group_point_and_label():
    fig = plot_seed_spread({'darts': [0.9, 0.95, 0.93], 'random': [0.91, 0.92]})
    assert sorted(t.get_text() for t in fig.axes[0].get_xticklabels()) == ['darts', 'random']
    rows = [dict(method='darts', depth=d, seed=s, skips_normal=d // 4 + s, skips_reduce=s) for d in (5, 8) for s in (0, 1)]
    assert plot_skips_vs_depth(rows).axes[0].get_ylabel() == 'skip connections'
    joined = [dict(op=op, alpha=a, test_acc=acc) for op, a, acc in (('a', 0.1, 0.9), ('b', 0.3, 0.95), ('c', 0.2, 0.8))]
    fig = plot_alpha_vs_accuracy(joined)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ['a', 'b', 'c']
    assert f"{alpha_accuracy_correlation([0.1, 0.3, 0.2], [0.9, 0.95, 0.8])['pearson']:.2f}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="rows need an 'alpha'"):
        plot_alpha_vs_accuracy([dict(op='a', test_acc=0.9)])


# ---- runs end to end, and resumed

def test_run_or_read_reads_a_finished_run_back(tmp_path):
    calls = []
    launch = lambda out: calls.append(out) or dict(ran=True)
    assert run_or_read(tmp_path / 'r', launch) == dict(ran=True) and calls == [str(tmp_path / 'r')]
    (tmp_path / 'r').mkdir(); (tmp_path / 'r' / 'result.json').write_text('{"ran": false}')
    assert run_or_read(tmp_path / 'r', launch) == dict(ran=False) and len(calls) == 1
    assert run_or_read(None, launch) == dict(ran=True) and calls[-1] is None


def test_search_over_seeds_runs_each_seed_once_and_reads_back(tmp_path, counted):
    searches, _ = counted
    search_over_seeds('darts', [0], tmp_path, **TINY_SEARCH)
    found = search_over_seeds('darts', [0, 1], tmp_path, **TINY_SEARCH)  # seed 0 is read back, only seed 1 runs
    assert searches.calls == 2
    assert [(r['method'], r['seed']) for r in found] == [('darts', 0), ('darts', 1)]
    for seed, r in zip((0, 1), found):
        saved = json.loads((tmp_path / f'seed{seed}' / 'result.json').read_text())
        assert saved['genotype'] == r['genotype']
        assert json.loads((tmp_path / f'seed{seed}' / 'config.json').read_text())['seed'] == seed
    stamp = (tmp_path / 'seed1' / 'result.json').stat().st_mtime_ns
    again = search_over_seeds('darts', [0, 1], tmp_path, **TINY_SEARCH)
    assert searches.calls == 2 and (tmp_path / 'seed1' / 'result.json').stat().st_mtime_ns == stamp
    assert [r['genotype'] for r in again] == [r['genotype'] for r in found]
    assert [(r['method'], r['seed']) for r in again] == [('darts', 0), ('darts', 1)]
    with pytest.raises(ValueError, match=r"sets \['resume', 'seed'\] itself"):
        search_over_seeds('darts', [0], seed=1, resume=True)


def test_skips_vs_depth_counts_the_skips_of_each_search_and_resumes(tmp_path, counted):
    searches, _ = counted
    settings = dict({k: v for k, v in TINY_SEARCH.items() if k != 'layers'}, optimization='one-level')  # faster
    rows = skips_vs_depth('darts', [3, 4], [0], tmp_path, **settings)
    assert searches.calls == 2
    assert [(r['method'], r['depth'], r['seed']) for r in rows] == [('darts', 3, 0), ('darts', 4, 0)]
    for r in rows:
        run = tmp_path / f"layers{r['depth']}" / 'seed0'
        g = genotype_from_dict(json.loads((run / 'result.json').read_text())['genotype'])
        assert json.loads((run / 'config.json').read_text())['layers'] == r['depth']
        assert (r['skips_normal'], r['skips_reduce']) == ([op for op, _ in g.normal].count('skip_connect'),
                                                          [op for op, _ in g.reduce].count('skip_connect'))
    assert skips_vs_depth('darts', [3, 4], [0], tmp_path, **settings) == rows and searches.calls == 2
    with pytest.raises(ValueError, match=r"sets \['layers'\] itself"):
        skips_vs_depth('darts', [3], [0], layers=5)


def test_standalone_accuracy_trains_each_variant_and_resumes(tmp_path, counted):
    _, trainings = counted
    ops = ['max_pool_3x3', 'skip_connect', 'sep_conv_3x3']
    rows = standalone_accuracy('DARTS_V2', 'normal', 0, 0, ops, [0], tmp_path, **TINY_TRAIN)
    assert trainings.calls == 3
    assert [(r['op'], r['seed'], r['cell_type'], r['node'], r['slot']) for r in rows] == \
        [(op, 0, 'normal', 0, 0) for op in ops]
    for r in rows:
        saved = json.loads((tmp_path / r['op'] / 'seed0' / 'result.json').read_text())
        assert saved['test_acc'] == r['test_acc'] and 0 <= r['test_acc'] <= 1
        assert saved['genotype']['normal'][0] == [r['op'], 0]
        assert saved['genotype']['normal'][1:] == genotype_to_dict(GENOTYPES['DARTS_V2'])['normal'][1:]
    stamp = (tmp_path / 'skip_connect' / 'seed0' / 'result.json').stat().st_mtime_ns
    assert standalone_accuracy('DARTS_V2', 'normal', 0, 0, ops, [0], tmp_path, **TINY_TRAIN) == rows
    assert trainings.calls == 3 and (tmp_path / 'skip_connect' / 'seed0' / 'result.json').stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match='candidates repeat an op'):
        standalone_accuracy('DARTS_V2', 'normal', 0, 0, ['skip_connect'] * 2)


def test_train_over_names_runs_and_takes_search_results_and_per_cell_lists(counted):
    _, trainings = counted
    per_cell = dict(genotype=[genotype_to_dict(GENOTYPES[n]) for n in ('DARTS_V2', 'VS_DARTS_BEST', 'DARTS_V1')])
    results = train_over({'published': 'DARTS_V2', 'per cell': per_cell}, [0, 1], **TINY_TRAIN)
    assert trainings.calls == 4
    assert [(r['name'], r['seed']) for r in results] == [('published', 0), ('published', 1), ('per cell', 0),
                                                         ('per cell', 1)]
    assert results[2]['genotype'] == per_cell['genotype']
    assert [r['name'] for r in train_over(['DARTS_V2', GENOTYPES['DARTS_V1']], [0], **TINY_TRAIN)] == ['DARTS_V2', '1']
    with pytest.raises(ValueError, match='two genotypes are named'):
        train_over({'a/b': 'DARTS_V2', 'a_b': 'DARTS_V1'})


def test_edge_alpha_reads_the_mixing_weights_of_a_search_result():
    result = search_over_seeds('darts', [0], **TINY_SEARCH)[0]
    ops = get_space('darts').edges('normal')[5]
    weights, alphas = edge_alpha(result, 'normal', 5), edge_alpha(result, 'normal', 5, key='alpha')
    assert list(weights) == list(ops) and list(alphas.values()) == result['alpha_normal'][0][5]
    softmax = torch.softmax(torch.tensor(list(alphas.values()), dtype=torch.float64), 0)
    assert torch.allclose(torch.tensor(list(weights.values()), dtype=torch.float64), softmax, atol=1e-6)
    renamed = edge_alpha(result, 'reduce', 0, ops=[f'op{i}' for i in range(8)])
    assert list(renamed.values()) == result['weights_reduce'][0][0]
    joined = alpha_accuracy_rows([dict(op='skip_connect', test_acc=0.5), dict(op='skip_connect', test_acc=0.7),
                                  dict(op='sep_conv_3x3', test_acc=0.9)], weights)
    assert [(r['op'], r['alpha'], r['n']) for r in joined] == \
        [('skip_connect', weights['skip_connect'], 2), ('sep_conv_3x3', weights['sep_conv_3x3'], 1)]
    assert math.isclose(joined[0]['test_acc'], 0.6)
    with pytest.raises(ValueError, match="has 8 values but 2 op names"):
        edge_alpha(result, 'normal', 5, ops=['a', 'b'])
    with pytest.raises(ValueError, match="no 'weights_normal'"):
        edge_alpha(dict(genotype=result['genotype']), 'normal', 5)
    with pytest.raises(ValueError, match="pass ops="):
        edge_alpha(dict(result, space='stage1-notregistered'), 'normal', 5)


class Killed(Exception): pass


class KillAfterEpoch:
    def __init__(self, epoch): self.epoch = epoch
    def on_checkpoint(self, trainer):  # after the epoch's checkpoint
        if trainer.epoch == self.epoch: raise Killed


def test_train_over_continues_a_killed_run_from_its_checkpoint(tmp_path, counted):
    from stacvs.train import Trainer, TrainConfig
    from stacvs.runs import RunDir
    settings = dict(TINY_TRAIN, epochs=2)
    run = tmp_path / 'DARTS_V2' / 'seed0'
    with pytest.raises(Killed):  # the run train_over would launch, killed after its first epoch
        Trainer(TrainConfig(**settings, genotype='DARTS_V2', seed=0, out=str(run)), [KillAfterEpoch(1)]).run()
    assert not (run / 'result.json').exists() and [r['epoch'] for r in RunDir(run).read_log()] == [1]
    resumed = train_over(['DARTS_V2'], [0], tmp_path, **settings)[0]
    assert [r['epoch'] for r in RunDir(run).read_log()] == [1, 2]
    uninterrupted = experiments.train(**settings, genotype='DARTS_V2', seed=0)
    assert resumed['test_acc'] == uninterrupted['test_acc'] and resumed['train_loss'] == uninterrupted['train_loss']
