"Operations, search spaces and the supernet: shapes, registry errors, masking, parameter split."
import pytest
import torch
import torch.nn as nn
from stacvs.ops import OPS, make_op, register_op, FactorizedReduce, Zero
from stacvs.spaces import SearchSpace, get_space, space_to_dict, space_from_dict, num_edges
from stacvs.cells import MixedOp, Supernet


@pytest.mark.parametrize('name', sorted(OPS))
@pytest.mark.parametrize('stride', [1, 2])
def test_every_op_keeps_channels_and_strides(name, stride):
    y = make_op(name, 6, stride, affine=False)(torch.randn(2, 6, 9, 9))
    assert y.shape == (2, 6, 5 if stride == 2 else 9, 5 if stride == 2 else 9)


def test_factorized_reduce_matches_darts_on_even_sizes():
    "On even sizes the padded shift equals DARTS's x[:, :, 1:, 1:]."
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 8).eval()
    x = torch.randn(2, 4, 8, 8)
    r = torch.relu(x)
    expected = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], 1))
    torch.testing.assert_close(fr(x), expected)


def test_none_costs_no_convolution_work():
    mixed = MixedOp(4, 1, ('none', 'skip_connect'))
    assert isinstance(mixed._ops[0], Zero) and mixed.active == [1]
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(mixed(x, torch.tensor([0.9, 0.1])), 0.1 * x)


def test_noise_has_no_gradient_path_and_is_stochastic_in_eval():
    op = make_op('noise', 4).eval()
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    a, b = op(x), op(x)
    assert not a.requires_grad and not torch.equal(a, b)


def test_registry_errors_and_extension():
    with pytest.raises(ValueError, match="unknown operation 'conv_9x9'.*register_op"):
        make_op('conv_9x9', 4)
    with pytest.raises(ValueError, match='already registered'):
        register_op('sep_conv_3x3')(lambda C, s, a: nn.Identity())
    register_op('identity_demo')(lambda C, stride, affine: nn.Identity())
    try:
        assert 'identity_demo' in SearchSpace.uniform('x', ['identity_demo', 'none']).ops
    finally:
        del OPS['identity_demo']


def test_space_validation_messages():
    with pytest.raises(ValueError, match='has 3 edge lists.*14 edges'):
        SearchSpace('s', [('none',)] * 3, [('none',)] * 14)
    with pytest.raises(ValueError, match='repeats an operation'):
        SearchSpace.uniform('s', ['none', 'none'])
    with pytest.raises(ValueError, match='no candidate operations'):
        SearchSpace('s', [()] + [('none',)] * 13, [('none',)] * 14)
    with pytest.raises(ValueError, match="unknown search space 'foo'"):
        get_space('foo')


def test_named_spaces():
    assert get_space('darts').normal[0] == ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
                                             'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
    assert get_space('darts_sep7').normal[0] == ('none', 'max_pool_3x3', 'sep_conv_7x7', 'skip_connect',
                                                  'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
    assert set(get_space('darts_small').ops) == {'max_pool_3x3', 'sep_conv_3x3', 'sep_conv_5x5', 'none'}
    s1 = get_space('s1')
    assert s1.normal[12] == ('dil_conv_3x3', 'dil_conv_5x5') and s1.reduce[6] == ('max_pool_3x3', 'sep_conv_3x3')
    assert get_space('s3').normal[0] == ('none', 'skip_connect', 'sep_conv_3x3')
    assert get_space('s4').reduce[5] == ('noise', 'sep_conv_3x3')
    for name in ('darts', 's1'):
        assert space_from_dict(space_to_dict(get_space(name))) == get_space(name)
    assert num_edges(5) == 20 and len(SearchSpace.uniform('five', ['none'], nodes=5).normal) == 20


def test_supernet_split_and_shapes():
    torch.manual_seed(0)
    net = Supernet(C=4, num_classes=7, layers=5, space='darts', in_channels=1)
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 7)
    ids = {id(p) for p in net.weights()}
    assert all(id(a) not in ids for a in net.alphas())
    assert len(ids) + 2 == len(list(net.parameters()))
    assert net.alpha_normal.shape == (1, 14, 8) and net.alpha_reduce.shape == (1, 14, 8)
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]


def test_padding_gets_no_weight_and_no_gradient():
    space = SearchSpace('ragged', [('none', 'skip_connect', 'sep_conv_3x3')] + [('skip_connect',)] * 13,
                        [('max_pool_3x3', 'skip_connect')] * 14)
    net = Supernet(C=4, layers=3, space=space, in_channels=1)
    w = net.mixing_weights('normal')
    assert torch.all(w[0, 1:, 1:] == 0) and torch.allclose(w.sum(-1), torch.ones(1, 14))
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    assert torch.all(net.alpha_normal.grad[0, 1:, 1:] == 0)
    assert net.alpha_normal.grad[0, 0].abs().sum() > 0


def test_alpha_per_cell_reads_its_own_alpha():
    torch.manual_seed(0)
    net = Supernet(C=4, layers=4, alpha_per_cell=True, in_channels=1).eval()
    x = torch.randn(2, 1, 8, 8)
    base = net(x)
    with torch.no_grad(): net.alpha_normal[1].add_(5 * torch.randn_like(net.alpha_normal[1]))
    assert not torch.allclose(base, net(x))
    assert net.alpha_normal.shape[0] == 2 and net.alpha_reduce.shape[0] == 2
