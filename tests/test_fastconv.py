"Fast CPU depthwise conv: exact agreement with F.conv2d autograd, gradcheck, the path per module, fallbacks, the module."
import itertools
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from stacvs.accel import fastconv
from stacvs.accel.fastconv import (DepthwiseConv2dFunction, FastDepthwiseConv2d, depthwise_conv2d, fast_path_refusal,
                                   swap_depthwise_convs)

FAST = 'DepthwiseConv2dFunctionBackward'
PLAIN = 'ConvolutionBackward0'


def reference(x, w, stride, padding, dilation, grad_out):
    "Output and (grad_x, grad_w) of torch's own depthwise conv."
    y = F.conv2d(x, w, None, stride, padding, dilation, x.shape[1])
    return (y, *torch.autograd.grad(y, (x, w), grad_out))


def leaf(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


# every DARTS depthwise conv: (kernel, dilation) with padding dilation*(kernel-1)//2, strides 1 and 2,
# odd and even (and non-square) spatial sizes, batch 1 and 3
CASES = list(itertools.product([3, 5], [1, 2], [1, 2], [(7, 9), (8, 6)], [1, 3]))


@pytest.mark.parametrize('kernel,dilation,stride,size,batch', CASES)
def test_function_matches_conv2d_output_and_gradients(kernel, dilation, stride, size, batch):
    torch.manual_seed(0)
    padding = dilation * (kernel - 1) // 2
    x, w = leaf(batch, 4, *size), leaf(4, 1, kernel, kernel)
    g = torch.randn_like(F.conv2d(x.detach(), w.detach(), None, stride, padding, dilation, 4))
    y_ref, gx_ref, gw_ref = reference(x, w, stride, padding, dilation, g)
    y = DepthwiseConv2dFunction.apply(x, w, (stride,) * 2, (padding,) * 2, (dilation,) * 2)
    assert y.grad_fn.name() == FAST
    gx, gw = torch.autograd.grad(y, (x, w), g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize('kernel,padding,dilation,stride', [((3, 5), (1, 4), (1, 2), (2, 1)), (3, 0, 1, 3), (5, 1, 2, 2)])
def test_function_matches_conv2d_for_other_geometries(kernel, padding, dilation, stride):
    "Asymmetric kernels/paddings/dilations, stride 3, padding smaller than the kernel's half."
    torch.manual_seed(1)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    x, w = leaf(2, 3, 11, 10), leaf(3, 1, kh, kw)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    y_ref = F.conv2d(x, w, None, stride, padding, dilation, 3)
    g = torch.randn_like(y_ref)
    y = DepthwiseConv2dFunction.apply(x, w, pair(stride), pair(padding), pair(dilation))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for got, expected in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_fp32_agrees_with_fp32_reference():
    torch.manual_seed(2)
    x, w = leaf(2, 8, 16, 16, dtype=torch.float32), leaf(8, 1, 5, 5, dtype=torch.float32)
    y_ref = F.conv2d(x, w, None, 2, 4, 2, 8)
    g = torch.randn_like(y_ref)
    y = DepthwiseConv2dFunction.apply(x, w, (2, 2), (4, 4), (2, 2))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref)
    for got, expected in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_only_requested_gradients_are_computed():
    x, w = leaf(1, 2, 6, 6), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    y = DepthwiseConv2dFunction.apply(x, w, (1, 1), (2, 2), (2, 2))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(F.conv2d(x, w, None, 1, 2, 2, 2).sum(), x)[0])
    x2, w2 = torch.randn(1, 2, 6, 6, dtype=torch.float64), leaf(2, 1, 3, 3)
    DepthwiseConv2dFunction.apply(x2, w2, (1, 1), (2, 2), (2, 2)).sum().backward()
    torch.testing.assert_close(w2.grad, torch.autograd.grad(F.conv2d(x2, w2, None, 1, 2, 2, 2).sum(), w2)[0])


def test_non_contiguous_output_gradient():
    torch.manual_seed(3)
    x, w = leaf(2, 3, 8, 8), leaf(3, 1, 5, 5)
    r = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    loss = lambda y: (y.transpose(2, 3) * r).sum()  # its gradient w.r.t. y is a transposed, non-contiguous view
    fast = torch.autograd.grad(loss(DepthwiseConv2dFunction.apply(x, w, (1, 1), (2, 2), (1, 1))), (x, w))
    plain = torch.autograd.grad(loss(F.conv2d(x, w, None, 1, 2, 1, 3)), (x, w))
    for got, expected in zip(fast, plain): torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    torch.manual_seed(4)
    x, w = leaf(2, 2, 6, 5), leaf(2, 1, 3, 3)
    for args in [((2, 2), (2, 2), (2, 2)), ((1, 1), (1, 1), (1, 1)), ((2, 2), (1, 1), (1, 1))]:
        assert torch.autograd.gradcheck(lambda a, b: DepthwiseConv2dFunction.apply(a, b, *args), (x, w))
    x, w = leaf(1, 1, 5, 4), leaf(1, 1, 3, 3)  # double backward differentiates the backward formulas: tiny case
    assert torch.autograd.gradgradcheck(lambda a, b: DepthwiseConv2dFunction.apply(a, b, (2, 2), (2, 2), (2, 2)), (x, w))


@pytest.fixture
def no_size_threshold(monkeypatch):
    "Let tiny test inputs take the fast path."
    monkeypatch.setattr(fastconv, 'FAST_MIN_ELEMENTS', 0)


@pytest.mark.parametrize('kernel,padding,dilation', [(5, 2, 1), (3, 2, 2), (5, 4, 2)])
@pytest.mark.parametrize('stride', [1, 2])
def test_depthwise_conv2d_fast_path_for_darts_convs(kernel, padding, dilation, stride, no_size_threshold):
    torch.manual_seed(5)
    x, w = leaf(3, 4, 9, 8), leaf(4, 1, kernel, kernel)
    y = depthwise_conv2d(x, w, stride, padding, dilation)
    assert y.grad_fn.name() == FAST
    y_ref = F.conv2d(x, w, None, stride, padding, dilation, 4)
    g = torch.randn_like(y_ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for got, expected in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_the_path_is_chosen_by_the_module_not_by_a_switch(no_size_threshold):
    x = leaf(1, 2, 8, 8)
    plain = nn.Conv2d(2, 2, 5, 1, 2, groups=2, bias=False).double()
    fast = FastDepthwiseConv2d.from_conv2d(plain)
    assert fast(x).grad_fn.name() == FAST and plain(x).grad_fn.name() == PLAIN
    other = nn.Sequential(nn.Conv2d(2, 2, 5, 1, 2, groups=2, bias=False)).double()
    assert swap_depthwise_convs(other) == 1
    assert plain(x).grad_fn.name() == PLAIN  # swapping one model leaves every other module as it was
    torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=1e-12)


def test_fallbacks_name_their_reason_and_give_the_same_result(no_size_threshold):
    x, w5, w3 = leaf(2, 4, 8, 8), leaf(4, 1, 5, 5), leaf(4, 1, 3, 3)
    assert fast_path_refusal(x, w5, (2, 2), (1, 1)) is None
    assert fast_path_refusal(x, w3, (1, 1), (1, 1)).startswith('undilated kernel of at most 3×3')
    assert fast_path_refusal(x, w3, (2, 2), (2, 2)) is None
    assert fast_path_refusal(x, w5, (5, 5), (1, 1)).startswith('padding (5, 5)')
    assert fast_path_refusal(x, leaf(4, 2, 5, 5), (2, 2), (1, 1)).startswith('not a depthwise conv')
    assert 'dtype' in fast_path_refusal(x.detach().half().requires_grad_(), w5.detach().half(), (2, 2), (1, 1))
    assert fast_path_refusal(x.detach(), w5.detach(), (2, 2), (1, 1)) == 'no gradient needed'
    with torch.no_grad(): assert fast_path_refusal(x, w5, (2, 2), (1, 1)) == 'no gradient needed'
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert fast_path_refusal(x.float(), w5.float(), (2, 2), (1, 1)) == 'CPU autocast is on'
        assert depthwise_conv2d(x.float(), w5.float(), 1, 2).grad_fn.name() != FAST
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert 'channels_last' in fast_path_refusal(x_cl, w5, (2, 2), (1, 1))
    y_cl = depthwise_conv2d(x_cl, w5, 1, 2)
    assert y_cl.grad_fn.name() == PLAIN
    torch.testing.assert_close(y_cl, F.conv2d(x, w5, None, 1, 2, 1, 4))
    y3 = depthwise_conv2d(x, w3, 2, 1)
    assert y3.grad_fn.name() == PLAIN
    torch.testing.assert_close(y3, F.conv2d(x, w3, None, 2, 1, 1, 4))


def test_small_inputs_fall_back_by_size():
    w = leaf(4, 1, 5, 5)
    small = leaf(1, 4, 8, 8)
    assert small.numel() < fastconv.FAST_MIN_ELEMENTS
    assert 'FAST_MIN_ELEMENTS' in fast_path_refusal(small, w, (2, 2), (1, 1))
    big = leaf(1, 4, 128, 128, dtype=torch.float32)
    assert big.numel() >= fastconv.FAST_MIN_ELEMENTS
    assert depthwise_conv2d(big, w.detach().float().requires_grad_(), 1, 2).grad_fn.name() == FAST


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_falls_back():
    x, w = leaf(1, 4, 64, 64).cuda(), leaf(4, 1, 5, 5).cuda()
    assert fast_path_refusal(x, w, (2, 2), (1, 1)) == 'input on cuda, not the CPU'
    assert depthwise_conv2d(x, w, 1, 2).grad_fn.name() != FAST


def test_state_dict_moves_between_module_and_conv2d():
    torch.manual_seed(6)
    fast = FastDepthwiseConv2d(8, 8, 5, 2, 4, dilation=2)
    plain = nn.Conv2d(8, 8, 5, 2, 4, dilation=2, groups=8, bias=False)
    assert list(fast.state_dict()) == list(plain.state_dict()) == ['weight']
    plain.load_state_dict(fast.state_dict())
    assert torch.equal(plain.weight, fast.weight)
    other = nn.Conv2d(8, 8, 5, 2, 4, dilation=2, groups=8, bias=False)
    fast.load_state_dict(other.state_dict())
    assert torch.equal(fast.weight, other.weight)
    x = torch.randn(2, 8, 12, 12)
    torch.testing.assert_close(fast(x), other(x))


def test_module_forward_and_gradients_match_conv2d_with_bias(no_size_threshold):
    torch.manual_seed(7)
    fast = FastDepthwiseConv2d(4, 4, 3, 1, 2, dilation=2, bias=True).double()
    plain = nn.Conv2d(4, 4, 3, 1, 2, dilation=2, groups=4, bias=True).double()
    plain.load_state_dict(fast.state_dict())
    x = leaf(2, 4, 7, 7)
    y = fast(x)
    assert y.grad_fn is not None
    torch.testing.assert_close(y, plain(x), rtol=0, atol=1e-12)
    y.square().sum().backward(); plain(x).square().sum().backward()
    for a, b in zip(fast.parameters(), plain.parameters()): torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)


def test_module_rejects_non_depthwise():
    with pytest.raises(ValueError, match='groups == in_channels == out_channels'): FastDepthwiseConv2d(4, 8, 3)
    with pytest.raises(ValueError, match='groups == in_channels == out_channels'): FastDepthwiseConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match='numeric zero padding'): FastDepthwiseConv2d(4, 4, 3, padding='same')
    with pytest.raises(ValueError, match='numeric zero padding'): FastDepthwiseConv2d(4, 4, 3, padding=1, padding_mode='reflect')
    assert FastDepthwiseConv2d(4, 4, 3).groups == 4


def test_swap_depthwise_convs_shares_parameters_and_keeps_results():
    torch.manual_seed(8)
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(6, 6, 5, 2, 2, groups=6, bias=False), nn.Conv2d(6, 6, 1, bias=False),
                          nn.Sequential(nn.Conv2d(6, 6, 3, 1, 2, dilation=2, groups=6, bias=False)),
                          nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False))
    x = torch.randn(2, 6, 10, 10)
    before = model(x)
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    assert swap_depthwise_convs(model) == 2
    assert type(model[1]) is FastDepthwiseConv2d and type(model[3][0]) is FastDepthwiseConv2d
    assert type(model[2]) is nn.Conv2d and type(model[4]) is nn.Conv2d
    assert [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before)
    assert swap_depthwise_convs(model) == 0
