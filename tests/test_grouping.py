"StacNAS grouping: streaming operator correlation, clustering into groups, representatives, stage-1/stage-2 spaces."
import numpy as np
import pytest
import torch
import torch.nn as nn
from stacvs.cells import Supernet
from stacvs.ops import OPS, POOLING_OPS, register_op
from stacvs.spaces import SearchSpace, get_space
from stacvs.grouping import (CorrelationAccumulator, edge_correlations, operator_correlation, average_correlation,
                             PAPER_TABLE6, DARTS_GROUPS, group_operations, complete_groups, group_representative,
                             stage1_space, stage2_space, winning_groups)

TEST_OPS = ('_test_avg', '_test_avg_affine', '_test_avg_negated')


class Affine(nn.Module):
    "scale · avg_pool(x) + shift: a perfectly (anti)correlated copy of `_test_avg`."
    def __init__(self, scale, shift): super().__init__(); self.scale, self.shift = scale, shift
    def forward(self, x): return self.scale * nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) + self.shift


@pytest.fixture
def affine_ops():
    "Three parameter-free ops (no BN after them) that are affine functions of one another; removed afterwards."
    for name, (scale, shift) in zip(TEST_OPS, [(1., 0.), (3., -1.), (-2., 0.5)]):
        register_op(name, overwrite=True)(lambda C, stride, affine, s=scale, b=shift: Affine(s, b))
    yield TEST_OPS
    for name in TEST_OPS: OPS.pop(name, None); POOLING_OPS.discard(name)


def batches(n_batches, batch_size, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 1, size, size, generator=g), torch.zeros(batch_size, dtype=torch.long))
            for _ in range(n_batches)]


def tiny_supernet(space, layers=1, seed=0):
    torch.manual_seed(seed)
    return Supernet(C=4, num_classes=10, layers=layers, space=space, in_channels=1)


def test_scaled_copy_correlates_one_and_noise_near_zero(affine_ops):
    space = SearchSpace.uniform('affine', affine_ops + ('noise', 'sep_conv_3x3'))
    net = tiny_supernet(space)
    torch.manual_seed(1)  # the noise op draws from the global generator
    ops = affine_ops + ('noise',)
    for centering in ('position', 'global'):
        corr, names = operator_correlation(net, batches(2, 32), ops=ops, centering=centering)
        assert names == ops
        np.testing.assert_allclose(corr[0, 1], 1, atol=1e-9)
        np.testing.assert_allclose(corr[0, 2], -1, atol=1e-9)
        np.testing.assert_allclose(corr[1, 2], -1, atol=1e-9)
        # 64 images × 4 channels × 64 positions per edge: chance correlation is about 0.01
        assert np.abs(corr[:3, 3]).max() < 0.05


def test_default_ops_leave_out_none_skip_and_noise():
    net = tiny_supernet(SearchSpace.uniform('mixed', ('none', 'noise', 'skip_connect', 'max_pool_3x3', 'sep_conv_3x3')))
    _, names = operator_correlation(net, batches(1, 4), max_samples=4)
    assert names == ('max_pool_3x3', 'sep_conv_3x3')


def record_outputs(net, cell, edge):
    "Independent capture of every op output of one edge (and of the images the stem saw)."
    store, seen = {}, []
    mixed = net.cells[cell].edges[edge]
    hooks = [mixed._ops[i].register_forward_hook(
        lambda m, inp, out, name=name: store.setdefault(name, []).append(out.detach().flatten(1)))
        for i, name in enumerate(mixed.op_names)]
    hooks.append(net.stem.register_forward_hook(lambda m, inp, out: seen.append(len(out))))
    return store, seen, hooks


@pytest.mark.parametrize('centering', ['position', 'global'])
def test_streaming_equals_numpy_corrcoef_and_max_samples_is_respected(centering):
    net = tiny_supernet('darts_small', layers=2)
    store, seen, hooks = record_outputs(net, 1, 3)
    per_edge, names = edge_correlations(net, batches(3, 10), edges=[(1, 3)], max_samples=25, centering=centering)
    for h in hooks: h.remove()
    assert sum(seen) == 25  # the third batch was cut to 5 images, and nothing ran after it
    data = np.stack([torch.cat(store[n]).double().numpy() for n in names])  # (ops, images, positions)
    assert data.shape[1] == 25
    if centering == 'position': data = data - data.mean(1, keepdims=True)
    expected = np.corrcoef(data.reshape(len(names), -1))
    np.testing.assert_allclose(per_edge[(1, 3)], expected, atol=1e-10)


def test_accumulator_matches_corrcoef_on_random_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 50, 6, generator=g)
    x[1] += 0.7 * x[0]
    acc = CorrelationAccumulator(4, 'global')
    for chunk in x.split([13, 1, 36], dim=1): acc.update(chunk)
    np.testing.assert_allclose(acc.correlation(), np.corrcoef(x.reshape(4, -1).double().numpy()), atol=1e-12)
    with pytest.raises(ValueError, match='expected outputs for 4 variables'): acc.update(x[:3])
    with pytest.raises(ValueError, match='no observations'): CorrelationAccumulator(2).correlation()


def test_average_is_taken_over_the_edges_that_hold_both_ops():
    net = tiny_supernet('s1', layers=3)
    per_edge, names = edge_correlations(net, batches(1, 8))
    corr, names2 = operator_correlation(net, batches(1, 8))
    assert names == names2 and 'skip_connect' not in names
    for i in range(len(names)):
        for j in range(len(names)):
            values = [m[i, j] for m in per_edge.values() if not np.isnan(m[i, j])]
            if values: np.testing.assert_allclose(corr[i, j], np.mean(values), atol=1e-12)
            else: assert np.isnan(corr[i, j])
    # every edge of s1 holds two ops; only those with two non-skip ops appear
    holds_two = [(c, e) for c, cell in enumerate(net.cells) for e, m in enumerate(cell.edges)
                 if 'skip_connect' not in m.op_names]
    assert sorted(per_edge) == sorted(holds_two)
    stacked = {(0, 0): np.array([[1., .2], [.2, 1.]]), (0, 1): np.array([[1., np.nan], [np.nan, np.nan]])}
    np.testing.assert_allclose(average_correlation(stacked), [[1., .2], [.2, 1.]])


def test_mode_is_restored_and_train_mode_differs_from_eval():
    net = tiny_supernet('darts_small')
    net.train()
    eval_corr, _ = operator_correlation(net, batches(1, 16), edges=[(0, 0)])
    assert net.training
    net.eval()
    train_corr, _ = operator_correlation(net, batches(1, 16), edges=[(0, 0)], train_mode=True)
    assert not net.training
    assert not np.allclose(eval_corr, train_corr)


def test_bad_correlation_arguments_give_clear_errors():
    net = tiny_supernet('darts_small')
    with pytest.raises(ValueError, match=r'edge \(0, 14\) does not exist'):
        operator_correlation(net, batches(1, 2), edges=[(0, 14)])
    with pytest.raises(ValueError, match="unknown operation 'sep_conv_9x9'"):
        operator_correlation(net, batches(1, 2), ops=['sep_conv_9x9'])
    with pytest.raises(ValueError, match="'dil_conv_3x3' is on none of the chosen edges"):
        operator_correlation(net, batches(1, 2), ops=['max_pool_3x3', 'dil_conv_3x3'])
    with pytest.raises(ValueError, match='max_samples must be at least 1'):
        operator_correlation(net, batches(1, 2), max_samples=0)
    with pytest.raises(ValueError, match='centering must be one of'):
        operator_correlation(net, batches(1, 2), centering='pixels')


def block_matrix(blocks, within, across, seed=0):
    "A correlation matrix with `within` inside each block and `across` between, plus small symmetric noise."
    k = sum(blocks)
    labels = np.repeat(np.arange(len(blocks)), blocks)
    r = np.where(labels[:, None] == labels[None, :], within, across)
    noise = np.random.default_rng(seed).uniform(-0.03, 0.03, (k, k))
    r = r + (noise + noise.T) / 2
    np.fill_diagonal(r, 1)
    return r


def test_grouping_recovers_planted_groups_in_any_order():
    ops = ['sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7', 'dil_conv_3x3', 'dil_conv_5x5', 'avg_pool_3x3']
    r = block_matrix([3, 2, 1], within=0.6, across=0.05)
    perm = np.random.default_rng(1).permutation(len(ops))
    shuffled_r, shuffled_ops = r[np.ix_(perm, perm)], [ops[i] for i in perm]
    expected = [['sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7'], ['dil_conv_3x3', 'dil_conv_5x5'], ['avg_pool_3x3']]
    space = SearchSpace.uniform('planted', ['none'] + ops)
    assert group_operations(shuffled_r, shuffled_ops, space=space) == expected
    assert group_operations(shuffled_r, shuffled_ops, n_groups=3, space=space) == expected
    assert group_operations(shuffled_r, shuffled_ops, n_groups=1, space=space) == [ops]
    assert len(group_operations(shuffled_r, shuffled_ops, threshold=0.1, space=space)) == 6


def test_grouping_gives_the_paper_groups_from_table6():
    corr, names = PAPER_TABLE6
    assert names == ('avg_pool_3x3', 'max_pool_3x3', 'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
    assert corr[names.index('sep_conv_3x3'), names.index('sep_conv_5x5')] == 0.38
    assert corr[names.index('dil_conv_3x3'), names.index('dil_conv_5x5')] == 0.27
    assert group_operations(corr, names) == [list(g) for g in DARTS_GROUPS]
    assert [sorted(g) for g in DARTS_GROUPS] == [['avg_pool_3x3', 'max_pool_3x3'], ['skip_connect'],
                                                 ['sep_conv_3x3', 'sep_conv_5x5'], ['dil_conv_3x3', 'dil_conv_5x5']]


def test_bad_grouping_arguments_give_clear_errors():
    corr, names = PAPER_TABLE6
    with pytest.raises(ValueError, match='not both'): group_operations(corr, names, threshold=0.8, n_groups=4)
    with pytest.raises(ValueError, match='n_groups must be between 1'): group_operations(corr, names, n_groups=7)
    with pytest.raises(ValueError, match='square matrix'): group_operations(corr[:5], names)
    with pytest.raises(ValueError, match="unknown operation 'maxpool'"):
        group_operations(corr, ('maxpool',) + names[1:])
    with pytest.raises(ValueError, match="'none' is never grouped"): group_operations(corr, ('none',) + names[1:])
    nan_corr = np.array(corr); nan_corr[0, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'): group_operations(nan_corr, names)


def test_representatives_follow_the_smallest_kernel_rule_and_overrides():
    assert [group_representative(g) for g in DARTS_GROUPS] == ['max_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                                                               'dil_conv_3x3']
    assert group_representative(['dil_conv_5x5', 'dil_conv_3x3']) == 'dil_conv_3x3'
    assert group_representative(['avg_pool_3x3', 'max_pool_3x3']) == 'max_pool_3x3'
    assert group_representative(['sep_conv_3x3', 'sep_conv_5x5'], prefer=['dil_conv_5x5', 'sep_conv_5x5']) == \
        'sep_conv_5x5'
    with pytest.raises(ValueError, match='at least one op'): group_representative([])


def test_stage1_space_matches_the_registered_stacnas_stage1():
    s1, reference = stage1_space('darts', DARTS_GROUPS), get_space('stacnas_stage1')
    assert s1.normal == reference.normal and s1.reduce == reference.reduce and s1.nodes == reference.nodes
    # the same with groups measured from Table 6
    s1_measured = stage1_space('darts', group_operations(*PAPER_TABLE6))
    assert s1_measured.normal == reference.normal


def test_stage1_space_rejects_bad_groups():
    with pytest.raises(ValueError, match="unknown operation 'sep_conv_3x4'"):
        stage1_space('darts', [('sep_conv_3x4',)] + list(DARTS_GROUPS))
    with pytest.raises(ValueError, match="'skip_connect' on normal edge 0 .* belongs to no group"):
        stage1_space('darts', [g for g in DARTS_GROUPS if g != ('skip_connect',)])
    with pytest.raises(ValueError, match='must be disjoint'):
        stage1_space('darts', list(DARTS_GROUPS) + [('max_pool_3x3',)])
    with pytest.raises(ValueError, match="'none' is never in a group"):
        stage1_space('darts', list(DARTS_GROUPS) + [('none',)])
    with pytest.raises(ValueError, match='is not a member of its group'):
        stage1_space('darts', DARTS_GROUPS, representatives=['skip_connect'] * 4)


def planted_alphas(stage1, seed):
    "Random α per cell type whose non-`none` argmax per edge is a known op (and `none` is made the largest)."
    g = torch.Generator().manual_seed(seed)
    alphas, winners = [], {}
    for cell_type in ('normal', 'reduce'):
        edges = stage1.edges(cell_type)
        alpha = 0.1 * torch.randn(1, len(edges), max(len(e) for e in edges), generator=g)
        winners[cell_type] = []
        for e, ops in enumerate(edges):
            choice = int(torch.randint(1, len(ops), (1,), generator=g))
            alpha[0, e, choice] = 1.0
            alpha[0, e, ops.index('none')] = 2.0
            winners[cell_type].append(ops[choice])
        alphas.append(alpha)
    return alphas, winners


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_stage2_edges_hold_exactly_the_winning_group_and_none(seed):
    darts, s1 = get_space('darts'), stage1_space('darts', DARTS_GROUPS)
    alphas, winners = planted_alphas(s1, seed)
    s2 = stage2_space('darts', DARTS_GROUPS, alphas)
    for cell_type in ('normal', 'reduce'):
        for e, ops in enumerate(s2.edges(cell_type)):
            group = next(g for g in DARTS_GROUPS if winners[cell_type][e] in g)
            assert ops == tuple(op for op in darts.edges(cell_type)[e] if op == 'none' or op in group)
            assert set(ops) == {'none', *group}
    wins = winning_groups(s1, DARTS_GROUPS, [a[0] for a in alphas])  # (n_edges, max_ops) is accepted too
    assert [w[0] for w in wins['normal']] == [next(g for g in DARTS_GROUPS if w in g)[0] for w in winners['normal']]


def test_stage2_accepts_a_supernet_and_rejects_bad_alphas():
    s1 = stage1_space('darts', DARTS_GROUPS)
    net = Supernet(C=4, num_classes=10, layers=3, space=s1, in_channels=1)
    s2 = stage2_space('darts', DARTS_GROUPS, net)
    assert s2.name == 'darts_stage2' and all(ops[0] == 'none' for ops in s2.normal + s2.reduce)
    alpha = torch.zeros(1, 14, 5)
    with pytest.raises(ValueError, match=r'normal α has shape \(14, 4\), expected \(14, 5\)'):
        stage2_space('darts', DARTS_GROUPS, (alpha[..., :4], alpha))
    with pytest.raises(ValueError, match=r'alphas must be \(alpha_normal, alpha_reduce\)'):
        stage2_space('darts', DARTS_GROUPS, (alpha,))
    per_cell = Supernet(C=4, num_classes=10, layers=4, space=s1, in_channels=1, alpha_per_cell=True)
    with pytest.raises(NotImplementedError, match='alpha_per_cell=False'):
        stage2_space('darts', DARTS_GROUPS, per_cell)


def test_complete_groups_is_the_one_place_singletons_are_added():
    from stacvs import methods
    assert complete_groups([['max_pool_3x3']], 'darts_small') == [['max_pool_3x3'], ['sep_conv_3x3'], ['sep_conv_5x5']]
    assert complete_groups([['sep_conv_5x5', 'sep_conv_3x3'], ['max_pool_3x3']], get_space('darts_small')) == \
        [['sep_conv_5x5', 'sep_conv_3x3'], ['max_pool_3x3']]  # nothing to add: given groups kept as they are
    with pytest.raises(ValueError, match=r"groups name ops \['skip_connect'\] that space 'darts_small' does not offer"):
        complete_groups([['skip_connect']], 'darts_small')
    corr, names = PAPER_TABLE6
    clustered = group_operations(corr, names, space=None)
    assert sorted(map(sorted, group_operations(corr, names, space='darts'))) == \
        sorted(map(sorted, complete_groups(clustered, 'darts')))
    with pytest.raises(ValueError, match='does not offer'):  # a matrix over ops the space lacks
        group_operations(corr, names, space='darts_small')
    assert methods.complete_groups is complete_groups
