"Genotypes (derivation, JSON, published) and final networks (exact parameter counts, drop-path, aux head)."
import json
import pytest
import torch
from stacvs.genotypes import (GENOTYPES, Genotype, derive_genotype, genotype_to_dict, genotype_from_dict,
                              genotype_from_string, get_genotype, save_cell_diagrams, count_ops)
from stacvs.networks import NetworkCIFAR, NetworkImageNet, count_parameters, drop_path
from stacvs.spaces import get_space, SearchSpace


@pytest.mark.parametrize('net,expected', [
    (lambda: NetworkCIFAR(36, 10, 20, True, 'DARTS_V2'), 3_349_342),
    (lambda: NetworkCIFAR(36, 10, 20, True, 'VS_DARTS_BEST'), 3_716_326),
    (lambda: NetworkImageNet(48, 1000, 14, True, 'DARTS_V2'), 4_718_752),
    (lambda: NetworkImageNet(48, 1000, 14, True, 'STACNAS_IMAGENET'), 5_715_040),
])
def test_published_parameter_counts(net, expected):
    assert count_parameters(net()) == expected  # 3.349M, 3.716M, 4.719M, 5.715M (reference §8)


def test_auxiliary_head_is_excluded_from_the_count_but_exists():
    net = NetworkCIFAR(16, 10, 8, True, 'DARTS_V2')
    assert count_parameters(net, auxiliary=True) > count_parameters(net)
    assert count_parameters(NetworkCIFAR(16, 10, 8, False, 'DARTS_V2')) == count_parameters(net)


def _darts_rule(alpha, space):
    "DARTS model_search.genotype(), written out independently for a uniform space with 'none' at index 0."
    w = torch.softmax(alpha, -1).numpy()
    gene, start, n = [], 0, 2
    for i in range(4):
        W = w[start:start + n]
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != 0))[:2]
        for j in edges:
            k_best = max((k for k in range(len(W[j])) if k != 0), key=lambda k: W[j][k])
            gene.append((space.normal[0][k_best], j))
        start, n = start + n, n + 1
    return gene


def test_softmax_derivation_matches_the_darts_rule_on_random_alpha():
    space = get_space('darts')
    for seed in range(5):
        torch.manual_seed(seed)
        alpha = torch.randn(14, 8)
        assert list(derive_genotype(alpha, alpha, space).normal) == _darts_rule(alpha, space)


def test_raw_and_softmax_rules_can_differ():
    space = SearchSpace.uniform('toy', ['none', 'skip_connect', 'sep_conv_3x3'])
    alpha = torch.zeros(14, 3)
    alpha[2], alpha[3], alpha[4] = torch.tensor([0., 2., 0.]), torch.tensor([0., 2.5, 2.4]), torch.tensor([0., 1., 0.])
    assert derive_genotype(alpha, alpha, space).normal[2:4] == (('skip_connect', 0), ('skip_connect', 2))
    assert derive_genotype(alpha, alpha, space, rule='raw').normal[2:4] == (('skip_connect', 1), ('skip_connect', 0))


def test_ragged_space_uses_only_each_edges_candidates():
    s1 = get_space('s1')
    alpha = torch.zeros(14, 2); alpha[:, 1] = 1.0
    g = derive_genotype(alpha, alpha, s1)
    for op, inp in g.normal:
        assert op in {o for e in s1.normal for o in e}


def test_json_and_string_round_trips(tmp_path):
    for g in GENOTYPES.values():
        assert genotype_from_dict(json.loads(json.dumps(genotype_to_dict(g)))) == g
        assert genotype_from_string(str(g)) == g
    path = tmp_path / 'g.json'
    path.write_text(json.dumps(genotype_to_dict(GENOTYPES['STACNAS_CIFAR10'])))
    assert get_genotype(str(path)) == GENOTYPES['STACNAS_CIFAR10']


def test_bad_genotypes_are_refused_clearly():
    with pytest.raises(ValueError, match='only inputs 0..1'):
        genotype_from_dict(dict(normal=[['skip_connect', 2], ['skip_connect', 0]], reduce=[['skip_connect', 0]] * 2))
    with pytest.raises(ValueError, match="unknown genotype 'nasnet'.*DARTS_V2"):
        get_genotype('nasnet')
    with pytest.raises(ValueError):
        genotype_from_string("Genotype(normal=__import__('os').listdir('/'))")


def test_published_genotypes_as_in_reference():
    assert GENOTYPES['DARTS_V2'].normal[7] == ('dil_conv_3x3', 2)
    assert count_ops(GENOTYPES['STACNAS_IMAGENET']) == 2
    assert GENOTYPES['VS_DARTS_BEST'].reduce[6] == ('sep_conv_5x5', 0)


def test_cell_diagrams_are_written(tmp_path):
    paths = save_cell_diagrams(GENOTYPES['DARTS_V2'], tmp_path, prefix='x_')
    assert [p.name for p in paths] == ['x_normal.png', 'x_reduce.png'] and all(p.stat().st_size > 1000 for p in paths)


def test_drop_path_only_in_training_and_unbiased():
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, False, 'DARTS_V2', drop_path_prob=0.5, in_channels=1)
    x = torch.randn(4, 1, 8, 8)
    net.eval()
    assert torch.equal(net(x)[0], net(x)[0])
    y = drop_path(torch.ones(20000, 1, 1, 1), 0.3)
    assert abs(y.mean().item() - 1) < 0.03


def test_networks_on_small_and_odd_inputs():
    for size in (8, 28, 32):
        logits, aux = NetworkCIFAR(4, 10, 5, True, 'DARTS_V2', in_channels=1)(torch.randn(2, 1, size, size))
        assert logits.shape == aux.shape == (2, 10)
