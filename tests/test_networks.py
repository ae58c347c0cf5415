"Final networks: exact published parameter counts, cell wiring, drop-path, auxiliary heads, small inputs."
import json
import pytest
import torch
import torch.nn as nn
from stacvs.genotypes import GENOTYPES, make_genotype
from stacvs.networks import (Cell, AuxiliaryHeadCIFAR, AuxiliaryHeadImageNet, NetworkCIFAR, NetworkImageNet,
                             SqueezeExcite, count_parameters, drop_path)


@pytest.mark.parametrize('build,expected,millions', [
    (lambda: NetworkCIFAR(36, 10, 20, True, 'DARTS_V2'), 3_349_342, 3.349),
    (lambda: NetworkCIFAR(36, 10, 20, True, 'VS_DARTS_BEST'), 3_716_326, 3.716),
    (lambda: NetworkImageNet(48, 1000, 14, True, 'DARTS_V2'), 4_718_752, 4.719),
    (lambda: NetworkImageNet(48, 1000, 14, True, 'STACNAS_IMAGENET'), 5_715_040, 5.715),
])
def test_published_parameter_counts(build, expected, millions):
    n = count_parameters(build())  # auxiliary head excluded, as papers report (reference §8)
    assert n == expected and round(n / 1e6, 3) == millions


def test_auxiliary_head_is_counted_only_on_request():
    net = NetworkCIFAR(36, 10, 20, True, 'DARTS_V2')
    C_aux = 4 * 144  # output of cell 2·20//3 = 13, the second reduction cell: 4 nodes × 144 channels
    head = 128 * C_aux + 2 * 128 + 128 * 768 * 2 * 2 + 2 * 768 + 768 * 10 + 10
    assert count_parameters(net, auxiliary=True) - count_parameters(net) == head
    assert count_parameters(NetworkCIFAR(36, 10, 20, False, 'DARTS_V2')) == count_parameters(net)
    assert not hasattr(NetworkCIFAR(36, 10, 20, False, 'DARTS_V2'), 'auxiliary_head')
    imagenet = NetworkImageNet(48, 1000, 14, True, 'DARTS_V2')  # no BN after the 768-channel conv, as in DARTS
    C_aux = 4 * 192
    assert count_parameters(imagenet, auxiliary=True) - count_parameters(imagenet) == \
        128 * C_aux + 2 * 128 + 128 * 768 * 4 + 768 * 1000 + 1000


def test_pool_bn_and_se_add_exactly_their_parameters():
    base = count_parameters(NetworkCIFAR(36, 10, 20, False, 'DARTS_V2'))
    # DARTS_V2 pools only in its reduction cell (5 max pools); reduction cells at 6 (72 ch) and 13 (144 ch)
    assert count_parameters(NetworkCIFAR(36, 10, 20, False, 'DARTS_V2', pool_bn=True)) - base == 2 * 5 * (72 + 144)
    se = lambda D, r: 2 * D * (D // r) + D // r + D
    widths = [36] * 6 + [72] * 7 + [144] * 7  # channels per cell, 20 cells
    for r in (16, 4):
        extra = sum(se(4 * C, r) for C in widths)
        assert count_parameters(NetworkCIFAR(36, 10, 20, False, 'DARTS_V2', se=True, se_reduction=r)) - base == extra
    assert count_parameters(NetworkImageNet(48, 1000, 14, False, 'STACNAS_IMAGENET', se=True)) == \
        5_715_040 + sum(se(4 * C, 16) for C in [48] * 4 + [96] * 5 + [192] * 5)


def test_reduction_cells_channels_and_preprocessing():
    net = NetworkCIFAR(8, 10, 8, True, 'DARTS_V2')
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [8 // 3, 2 * 8 // 3]
    for i, c in enumerate(net.cells):
        after_reduction = i - 1 in (2, 5)
        assert type(c.preprocess0).__name__ == ('FactorizedReduce' if after_reduction else 'ReLUConvBN')
    assert net.classifier.in_features == 4 * 32
    strides = [getattr(op, 'stride', None) for op in net.cells[2]._ops]  # the pools of the reduction cell
    assert [s for s, (_, i) in zip(strides, GENOTYPES['DARTS_V2'].reduce) if s is not None and i < 2] == [2] * 5


def test_genotype_by_name_object_or_path_gives_the_same_network(tmp_path):
    from stacvs.genotypes import genotype_to_json
    (tmp_path / 'g.json').write_text(genotype_to_json(GENOTYPES['VS_DARTS_BEST']))
    counts = {count_parameters(NetworkCIFAR(8, 10, 5, False, g))
              for g in ('vs_darts_best', GENOTYPES['VS_DARTS_BEST'], str(tmp_path / 'g.json'))}
    assert len(counts) == 1
    with pytest.raises(ValueError, match='unknown genotype'):
        NetworkCIFAR(8, 10, 5, False, 'NOT_A_GENOTYPE')


def test_drop_path_is_per_sample_and_scaled():
    torch.manual_seed(0)
    x = torch.randn(500, 3, 2, 2)
    y = drop_path(x, 0.3)
    kept = y.flatten(1).ne(0).any(1)
    assert torch.allclose(y[kept], x[kept] / 0.7) and torch.all(y[~kept] == 0)
    assert 0.62 < kept.float().mean() < 0.78
    assert drop_path(x, 0.) is x
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r'drop_prob must be in \[0, 1\)'):
            drop_path(x, bad)


def test_drop_path_skips_identities_and_only_acts_in_training():
    torch.manual_seed(0)
    s = torch.randn(4, 12, 8, 8)
    skips = make_genotype([('skip_connect', 0), ('skip_connect', 1)] * 4, [('max_pool_3x3', 0)] * 8)
    cell = Cell(skips, 12, 12, 4, False, False)
    with torch.no_grad():
        assert torch.allclose(cell(s, s, drop_prob=0.9), cell(s, s))  # identities are never dropped
        convs = Cell(GENOTYPES['DARTS_V2'], 12, 12, 4, False, False)
        assert not torch.equal(convs(s, s, drop_prob=0.5), convs(s, s))
        convs.eval()
        assert torch.equal(convs(s, s, drop_prob=0.5), convs(s, s))


def test_auxiliary_logits_only_in_training_with_the_head():
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 5, True, 'DARTS_V2', drop_path_prob=0.2, in_channels=1)
    x = torch.randn(2, 1, 8, 8)
    logits, aux = net(x)
    assert logits.shape == aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    assert net.stem[0].weight.grad is not None and net.auxiliary_head.classifier.weight.grad is not None
    net.eval()
    with torch.no_grad():
        assert net(x)[1] is None and torch.equal(net(x)[0], net(x)[0])
    assert NetworkCIFAR(4, 10, 5, False, 'DARTS_V2', in_channels=1)(x)[1] is None


@pytest.mark.parametrize('size,channels', [(8, 1), (28, 1), (32, 3), (12, 3)])
def test_cifar_network_on_small_inputs(size, channels):
    net = NetworkCIFAR(4, 10, 5, True, 'STACNAS_CIFAR10', in_channels=channels, pool_bn=True)
    logits, aux = net(torch.randn(2, channels, size, size))
    assert logits.shape == aux.shape == (2, 10)


def test_auxiliary_heads_are_darts_heads_at_the_published_map_sizes():
    torch.manual_seed(0)
    for head, size, stride in ((AuxiliaryHeadCIFAR(16, 10), 8, 3), (AuxiliaryHeadImageNet(16, 10), 7, 2)):
        head.eval()
        x = torch.randn(3, 16, size, size)
        darts = nn.Sequential(nn.ReLU(), nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False),
                              *head.features, nn.Flatten(), head.classifier)
        with torch.no_grad():
            assert torch.allclose(head(x), darts(x))
    assert len(AuxiliaryHeadImageNet(16, 10).features) == len(AuxiliaryHeadCIFAR(16, 10).features) - 1


def test_imagenet_network_at_224_feeds_a_7x7_map_to_the_aux_head():
    torch.manual_seed(0)
    net = NetworkImageNet(8, 5, 5, True, 'DARTS_V2', se=True)
    seen = []
    net.auxiliary_head.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    logits, aux = net(torch.randn(1, 3, 224, 224))
    assert logits.shape == aux.shape == (1, 5) and seen == [(7, 7)]
    assert sum(isinstance(m, SqueezeExcite) for m in net.modules()) == 5


def test_a_repeated_genotype_list_builds_the_single_genotype_network():
    g = GENOTYPES['DARTS_V2']
    assert count_parameters(NetworkCIFAR(36, 10, 20, True, [g] * 20)) == 3_349_342  # the published count, unchanged
    assert count_parameters(NetworkImageNet(48, 1000, 14, True, ['DARTS_V2'] * 14)) == 4_718_752
    x = torch.randn(2, 1, 8, 8)
    torch.manual_seed(3); single = NetworkCIFAR(4, 10, 5, True, g, in_channels=1)
    torch.manual_seed(3); repeated = NetworkCIFAR(4, 10, 5, True, [g] * 5, in_channels=1)
    single.eval(); repeated.eval()
    with torch.no_grad():
        assert torch.equal(single(x)[0], repeated(x)[0])


def _wiring(cell): return [type(op).__name__ for op in cell._ops], list(cell.indices), cell.concat


def test_each_cell_builds_its_own_genotypes_half_of_its_type():
    names = ['DARTS_V2', 'VS_DARTS_BEST', 'STACNAS_CIFAR10', 'STACNAS_CIFAR100', 'DARTS_V1', 'STACNAS_IMAGENET']
    net = NetworkCIFAR(4, 10, 6, False, names, in_channels=1)
    assert [c.reduction for c in net.cells] == [False, False, True, False, True, False]
    for cell, name in zip(net.cells, names):
        alone = Cell(GENOTYPES[name], 12, 12, 4, cell.reduction, False)  # wiring does not depend on channels
        assert _wiring(cell) == _wiring(alone)
        half = GENOTYPES[name].reduce if cell.reduction else GENOTYPES[name].normal
        assert cell.indices == [i for _, i in half]
    assert net.genotypes == [GENOTYPES[n] for n in names]
    assert net(torch.randn(2, 1, 8, 8))[0].shape == (2, 10)


def test_per_cell_genotypes_from_a_search_result_file_and_length_errors(tmp_path):
    from stacvs.genotypes import genotype_to_dict
    from stacvs.networks import cell_genotypes, is_per_cell
    gs = [GENOTYPES['DARTS_V2'], GENOTYPES['VS_DARTS_BEST'], GENOTYPES['DARTS_V1']]
    path = tmp_path / 'result.json'
    path.write_text(json.dumps(dict(kind='search', genotype=[genotype_to_dict(g) for g in gs])))
    assert is_per_cell(str(path)) and not is_per_cell('DARTS_V2') and not is_per_cell(GENOTYPES['DARTS_V2'])
    assert cell_genotypes(str(path), 3) == gs
    assert NetworkCIFAR(4, 10, 3, False, str(path), in_channels=1).genotypes == gs
    with pytest.raises(ValueError, match=r'3 per-cell genotypes for a network of 5 cells.*layers=3'):
        NetworkCIFAR(4, 10, 5, False, str(path))
    with pytest.raises(ValueError, match='unknown genotype'):
        NetworkCIFAR(4, 10, 2, False, ['DARTS_V2', 'NOPE'])
