"Genotypes: validation, conversions, derivation rules (DARTS softmax, StacNAS raw α), published genotypes, diagrams."
import collections
import json
import pytest
import torch
import matplotlib.pyplot as plt
from stacvs.genotypes import (GENOTYPES, Genotype, make_genotype, validate_genotype, derive_cell, derive_genotype,
                              genotype_to_dict, genotype_from_dict, genotype_to_json, genotype_from_json,
                              genotype_from_string, get_genotype, count_ops, plot_cell, save_cell_diagrams)
from stacvs.relaxations import get_relaxation
from stacvs.spaces import SearchSpace, get_space

SHORT = dict(sep3='sep_conv_3x3', sep5='sep_conv_5x5', dil3='dil_conv_3x3', dil5='dil_conv_5x5',
             max='max_pool_3x3', avg='avg_pool_3x3', skip='skip_connect')

def cell(text):
    "'sep3,0 skip,1 | ...' -> ((op, input), ...), written as in reference §9."
    return tuple((SHORT[op], int(i)) for op, i in (p.split(',') for p in text.replace('|', ' ').split()))

# reference §9, restated independently of the module
PUBLISHED = dict(
    DARTS_V1=('sep3,1 sep3,0 | skip,0 sep3,1 | skip,0 sep3,1 | sep3,0 skip,2',
              'max,0 max,1 | skip,2 max,0 | max,0 skip,2 | skip,2 avg,0'),
    DARTS_V2=('sep3,0 sep3,1 | sep3,0 sep3,1 | sep3,1 skip,0 | skip,0 dil3,2',
              'max,0 max,1 | skip,2 max,1 | max,0 skip,2 | skip,2 max,1'),
    STACNAS_CIFAR10=('sep3,1 skip,0 | sep3,2 skip,0 | sep3,1 sep3,0 | sep3,2 sep3,0',
                     'skip,1 max,0 | dil5,2 avg,0 | dil5,3 avg,0 | dil5,3 sep5,0'),
    STACNAS_CIFAR100=('skip,0 dil3,1 | sep3,0 sep3,1 | sep3,0 sep3,1 | sep3,0 sep3,1',
                      'avg,0 sep3,1 | avg,0 dil5,2 | dil5,2 sep5,1 | sep3,0 dil5,3'),
    STACNAS_IMAGENET=('skip,0 skip,1 | sep3,0 sep3,1 | sep3,0 sep3,1 | sep3,0 sep3,1',
                      'sep3,0 sep3,1 | sep3,0 sep3,1 | sep3,0 sep3,1 | sep3,0 sep3,1'),
    VS_DARTS_BEST=('sep3,1 skip,0 | sep3,1 sep3,2 | sep3,1 sep3,3 | sep3,1 max,0',
                   'max,0 max,1 | dil5,2 dil3,1 | dil5,2 max,0 | sep5,0 dil5,2'),
)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_genotypes_match_the_reference(name):
    normal, reduce = PUBLISHED[name]
    assert GENOTYPES[name] == Genotype(cell(normal), (2, 3, 4, 5), cell(reduce), (2, 3, 4, 5))


def test_genotype_is_immutable_and_darts_compatible():
    g = GENOTYPES['DARTS_V2']
    assert g._fields == ('normal', 'normal_concat', 'reduce', 'reduce_concat')
    with pytest.raises(AttributeError): g.normal = ()
    assert isinstance(g.normal, tuple) and all(isinstance(p, tuple) for p in g.normal)
    assert len({g, make_genotype(list(g.normal), list(g.reduce))}) == 1  # hashable, equal after normalization


@pytest.mark.parametrize('normal,reduce,concat,match', [
    ([('skip_connect', 2), ('skip_connect', 0)], [('skip_connect', 0)] * 2, None, r'node 0 takes input 2.*0\.\.1'),
    ([('conv_9x9', 0)] * 2, [('skip_connect', 0)] * 2, None, r"unknown operation 'conv_9x9'"),
    ([('skip_connect', 0)] * 3, [('skip_connect', 0)] * 2, None, 'has 3 .* pairs; expected two per node'),
    ([], [('skip_connect', 0)] * 2, None, 'has 0'),
    ([('skip_connect', 0)] * 2, [('skip_connect', 0)] * 2, [2, 3], r'among 2\.\.2'),
    ([('skip_connect', 0)] * 2, [('skip_connect', 0)] * 2, [2, 2], 'distinct'),
])
def test_bad_genotypes_are_refused_clearly(normal, reduce, concat, match):
    with pytest.raises(ValueError, match=match):
        make_genotype(normal, reduce, normal_concat=concat)


def test_validate_catches_hand_built_genotypes():
    with pytest.raises(ValueError, match='node 1 takes input 4'):
        validate_genotype(Genotype((('skip_connect', 0),) * 2 + (('skip_connect', 4),) * 2, (2, 3),
                                   (('skip_connect', 0),) * 2, (2,)))


def test_json_and_string_round_trips():
    for g in GENOTYPES.values():
        assert genotype_from_dict(json.loads(json.dumps(genotype_to_dict(g)))) == g
        assert genotype_from_json(genotype_to_json(g)) == g
        assert genotype_from_string(str(g)) == g
    assert genotype_from_dict(dict(normal=[['skip_connect', 0]] * 2, reduce=[['max_pool_3x3', 1]] * 2)).reduce_concat == (2,)
    with pytest.raises(ValueError, match=r"needs keys 'normal' and 'reduce'.*\['reduce'\] missing"):
        genotype_from_dict(dict(normal=[]))


def test_darts_printed_form_parses_and_code_is_refused():
    darts = collections.namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')
    g = GENOTYPES['DARTS_V2']
    printed = repr(darts(list(g.normal), range(2, 6), list(g.reduce), range(2, 6)))
    assert 'normal_concat=range(2, 6)' in printed and genotype_from_string(printed) == g
    original = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
                "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
                "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
                "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
                "('max_pool_3x3', 1)], reduce_concat=range(2, 6))")  # as printed by the DARTS code
    assert genotype_from_string(original) == g
    assert get_genotype(original) == g
    for evil in ("Genotype(normal=__import__('os').system('true'))", "Genotype(normal=[('a', 0)] * 4)",
                 "Genotype([('skip_connect', 0)])", "Genotype(normal=[", "print('hi')"):
        with pytest.raises(ValueError):
            genotype_from_string(evil)


def _darts_parse(alpha, ops):
    "DARTS model_search.Network.genotype()._parse, written out independently (uniform space, softmax weights)."
    W = torch.softmax(alpha, -1).tolist()
    none = ops.index('none') if 'none' in ops else None
    gene, start, n = [], 0, 2
    for i in range(4):
        Wn = W[start:start + n]
        edges = sorted(range(i + 2), key=lambda x: -max(Wn[x][k] for k in range(len(Wn[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(Wn[j])):
                if k != none and (k_best is None or Wn[j][k] > Wn[j][k_best]): k_best = k
            gene.append((ops[k_best], j))
        start, n = start + n, n + 1
    return tuple(gene)


def _stacnas_raw(alpha, ops):
    "StacNAS build_genotype_from_alpha: per edge topk over raw α without `none`, then topk edges per node."
    keep = [k for k, op in enumerate(ops) if op != 'none']
    gene, start = [], 0
    for node in range(4):
        vals, best = alpha[start:start + node + 2][:, keep].max(-1)
        gene += [(ops[keep[best[e]]], e.item()) for e in torch.topk(vals, 2).indices]
        start += node + 2
    return tuple(gene)


@pytest.mark.parametrize('space_name', ['darts', 'darts_small', 's2', 's3'])
def test_both_rules_match_the_original_code_on_random_alpha(space_name):
    space = get_space(space_name)
    ops = space.normal[0]
    for seed in range(6):
        torch.manual_seed(seed)
        a_n, a_r = torch.randn(14, len(ops)), torch.randn(14, len(ops))
        g = derive_genotype(a_n, a_r, space)
        assert (g.normal, g.reduce) == (_darts_parse(a_n, ops), _darts_parse(a_r, ops))
        g = derive_genotype(a_n, a_r, space, rule='raw')
        assert (g.normal, g.reduce) == (_stacnas_raw(a_n, ops), _stacnas_raw(a_r, ops))


def test_raw_and_softmax_rules_differ_on_a_hand_made_alpha():
    space = SearchSpace.uniform('toy', ['none', 'skip_connect', 'sep_conv_3x3'])
    alpha = torch.zeros(14, 3)
    # node 1: edge 3 has the largest raw α, but its rival op halves its softmax weight (0.50 < 0.58 < 0.79)
    alpha[2], alpha[3], alpha[4] = torch.tensor([0., 2., 0.]), torch.tensor([0., 2.5, 2.4]), torch.tensor([0., 1., 0.])
    assert derive_genotype(alpha, alpha, space).normal[2:4] == (('skip_connect', 0), ('skip_connect', 2))
    assert derive_genotype(alpha, alpha, space, rule='raw').normal[2:4] == (('skip_connect', 1), ('skip_connect', 0))
    # and op choice within an edge: softmax and raw agree there (monotone), `none` never wins
    assert all(op != 'none' for op, _ in derive_genotype(alpha, alpha, space, rule='raw').normal)


def test_ties_go_to_the_earlier_edge_and_op_as_in_darts():
    space = get_space('darts')
    g = derive_genotype(torch.zeros(14, 8), torch.zeros(14, 8), space)
    assert g.normal == tuple((space.normal[0][1], i) for node in range(4) for i in (0, 1))


def test_ragged_space_reads_only_each_edges_candidates():
    s1 = get_space('s1')
    torch.manual_seed(0)
    alpha = torch.randn(14, 2)
    padded = torch.cat([alpha, torch.full((14, 6), 100.)], dim=1)  # padding entries must be ignored
    g = derive_genotype(padded, padded, s1)
    assert g == derive_genotype(alpha, alpha, s1)
    inputs = [(n, i) for n in range(4) for i in range(n + 2)]
    for k, (op, inp) in enumerate(g.normal):
        assert op in s1.normal[inputs.index((k // 2, inp))]  # the op is a candidate of the edge it came from


def test_relaxation_instance_and_bad_arguments():
    space, alpha = get_space('darts'), torch.randn(14, 8)
    assert derive_genotype(alpha, alpha, space, relaxation=get_relaxation('softmax')) == derive_genotype(alpha, alpha, space)
    with pytest.raises(ValueError, match="unknown derivation rule 'argmax'"):
        derive_genotype(alpha, alpha, space, rule='argmax')
    with pytest.raises(ValueError, match='k=3'):
        derive_genotype(alpha, alpha, space, k=3)
    with pytest.raises(ValueError, match=r'expected α of shape \(14, ≥8\)'):
        derive_genotype(alpha[:, :7], alpha, space)
    assert len(derive_cell(alpha, space.normal, 4, k=1)) == 4
    only_none = SearchSpace.uniform('nothing', ['none'])
    with pytest.raises(ValueError, match='only `none`'):
        derive_genotype(torch.zeros(14, 1), torch.zeros(14, 1), only_none)


def test_get_genotype_accepts_names_files_dicts_and_darts_tuples(tmp_path):
    g = GENOTYPES['STACNAS_CIFAR10']
    assert get_genotype('stacnas_cifar10') is g and get_genotype(' DARTS_v2 ') == GENOTYPES['DARTS_V2']
    (tmp_path / 'g.json').write_text(genotype_to_json(g))
    (tmp_path / 'result.json').write_text(json.dumps(dict(best_acc=0.9, genotype=genotype_to_dict(g))))
    assert get_genotype(str(tmp_path / 'g.json')) == g and get_genotype(tmp_path / 'result.json') == g
    assert get_genotype(genotype_to_dict(g)) == g
    darts = collections.namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')
    assert get_genotype(darts(list(g.normal), range(2, 6), list(g.reduce), range(2, 6))) == g
    (tmp_path / 'per_cell.json').write_text(json.dumps(dict(genotype=[genotype_to_dict(g)] * 3)))
    with pytest.raises(ValueError, match='one genotype per cell'):
        get_genotype(tmp_path / 'per_cell.json')
    (tmp_path / 'broken.json').write_text('{"normal": [')
    with pytest.raises(ValueError, match='not valid JSON'):
        get_genotype(tmp_path / 'broken.json')
    with pytest.raises(ValueError, match='does not exist'):
        get_genotype(tmp_path / 'missing.json')


def test_unknown_genotype_error_lists_names_and_the_json_option():
    with pytest.raises(ValueError, match=r"unknown genotype 'nasnet'.*DARTS_V1, DARTS_V2.*VS_DARTS_BEST.*\.json file"):
        get_genotype('nasnet')
    with pytest.raises(ValueError, match='unknown genotype 42'):
        get_genotype(42)


def test_count_ops():
    assert [count_ops(GENOTYPES[n]) for n in PUBLISHED] == [3, 2, 2, 1, 2, 1]
    assert count_ops('DARTS_V2', 'max_pool_3x3', 'reduce') == 5
    assert count_ops('STACNAS_IMAGENET', 'sep_conv_3x3', 'reduce') == 8
    with pytest.raises(ValueError, match="'normal' or 'reduce'"):
        count_ops('DARTS_V2', cell_type='both')


def test_cell_diagrams_are_png_files_and_leave_no_figures_open(tmp_path):
    open_before = plt.get_fignums()
    paths = save_cell_diagrams(GENOTYPES['VS_DARTS_BEST'], tmp_path / 'figs', prefix='vs_')
    assert [p.name for p in paths] == ['vs_normal.png', 'vs_reduce.png']
    for p in paths:
        assert p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and p.stat().st_size > 10_000
    assert sorted(q.name for q in (tmp_path / 'figs').iterdir()) == ['vs_normal.png', 'vs_reduce.png']  # no temp left
    assert plt.get_fignums() == open_before


def test_plot_cell_draws_every_edge_into_given_axes():
    fig, ax = plt.subplots()
    try:
        assert plot_cell('DARTS_V2', 'reduce', ax=ax) is fig
        labels = [t.get_text() for t in ax.texts]
        assert sorted(l for l in labels if '_' in l and '$' not in l) == sorted(op for op, _ in GENOTYPES['DARTS_V2'].reduce)
        assert {'0', '1', '2', '3', '$c_{k}$'} <= set(labels)
    finally:
        plt.close(fig)
