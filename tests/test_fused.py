"The fused search-cell forward computes exactly what the plain per-edge forward computes, and falls back where it must."
from unittest import mock
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import copy
import stacvs.accel.fused as fused
from stacvs.accel.fused import fuse_search_cells, fused_cell_applies, fusion_key, FusedSearchCell
from stacvs.cells import Supernet, SearchCell
from stacvs.ops import OPS, register_op, make_op


def _step(space, fused_on, node_norm=False, relaxation='softmax', size=9, seed=0, model_hook=None):
    "Logits, every gradient (α and weights) and every buffer after one fp64 forward and backward of a 3-cell supernet."
    torch.manual_seed(seed)
    model = Supernet(C=2, num_classes=3, layers=3, space=space, node_norm=node_norm, relaxation=relaxation,
                     stem_multiplier=1).double()
    if model_hook: model_hook(model)
    if fused_on: fuse_search_cells(model)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    torch.manual_seed(seed + 1)  # `noise` ops draw from here: the same draws on both paths
    logits = model(x)
    logits.square().sum().backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return model, [logits] + grads + list(model.buffers())


def _assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b): torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('space', ['darts', 'stacnas_stage1', 's1', 's2', 's3', 's4'])
@pytest.mark.parametrize('node_norm,relaxation', [(False, 'softmax'), (True, 'sqrt')])
def test_fused_equals_plain_outputs_gradients_and_running_stats(space, node_norm, relaxation):
    _, fused_run = _step(space, True, node_norm, relaxation)
    _, plain_run = _step(space, False, node_norm, relaxation)
    _assert_same(fused_run, plain_run)
    assert fused_run[1].abs().sum() > 0  # gradients did flow


@pytest.mark.parametrize('node_norm,relaxation', [(True, 'softmax'), (False, 'sqrt')])
def test_fused_equals_plain_other_combinations_even_size(node_norm, relaxation):
    _assert_same(_step('darts', True, node_norm, relaxation, size=8)[1], _step('darts', False, node_norm, relaxation, size=8)[1])


def test_the_comparison_can_fail():
    "A different seed gives different results, so the equality above is not vacuous."
    a, b = _step('darts', True)[1], _step('darts', False, seed=5)[1]
    with pytest.raises(AssertionError): _assert_same(a, b)


def test_the_fused_path_is_taken_where_it_applies():
    plain_model = Supernet(C=2, num_classes=3, layers=3, space='darts', stem_multiplier=1)
    fused_model = copy.deepcopy(plain_model)
    assert fuse_search_cells(fused_model) == 3
    x = torch.randn(2, 3, 9, 9)
    def conv_calls(on, train=True):
        model = (fused_model if on else plain_model).train(train)
        with mock.patch.object(F, 'conv2d', wraps=F.conv2d) as conv: model(x)
        return conv.call_count
    plain, fused_calls = conv_calls(False), conv_calls(True)
    # stem 1, preprocessing 2 + 2 + 3 (FactorizedReduce after a reduction), and per cell 12 op convs (2 sep_conv × 4,
    # 2 dil_conv × 2) per edge (plain) or per state that feeds edges (fused: 5 of them); in the two reduction cells
    # skip_connect is a FactorizedReduce: 2 convs on each of the 8 edges from the inputs, or 1 per input state
    assert plain == 1 + 7 + 3 * 14 * 12 + 2 * 8 * 2
    assert fused_calls == 1 + 7 + 3 * 5 * 12 + 2 * 2 * 1
    assert conv_calls(True, train=False) == plain  # eval mode: the plain path
    with mock.patch.object(fused, 'FUSE_MAX_ELEMENTS', 0): assert conv_calls(True) == plain  # too large: plain
    with mock.patch.object(fused, 'fused_cell_forward', side_effect=RuntimeError('fused')):
        with pytest.raises(RuntimeError, match='fused'): fused_model.train()(x)
        plain_model.train()(x)  # a plain model never calls it


def test_fusing_is_a_property_of_one_model():
    "No process-wide switch: fusing one model leaves another plain, and state dicts move between the two."
    plain = Supernet(C=2, num_classes=3, layers=3, space='darts', stem_multiplier=1)
    fused_model = Supernet(C=2, num_classes=3, layers=3, space='darts', stem_multiplier=1)
    fuse_search_cells(fused_model)
    assert all(type(c) is SearchCell for c in plain.cells) and all(type(c) is FusedSearchCell for c in fused_model.cells)
    plain.load_state_dict(fused_model.state_dict())
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(plain(x), fused_model(x))


def test_cuda_inputs_take_the_plain_path():
    model = Supernet(C=2, num_classes=3, layers=3, space='darts', stem_multiplier=1)
    assert fused_cell_applies(model.cells[0], torch.zeros(1, 2, 4, 4, device='cpu'))
    assert not fused_cell_applies(model.cells[0], torch.zeros(1, 2, 4, 4, device='meta'))


def test_cells_with_large_states_take_the_plain_path():
    model = Supernet(C=16, num_classes=3, layers=3, space='darts')
    assert fused_cell_applies(model.cells[0], torch.zeros(16, 48, 16, 16))  # 16·16·16·16 · 4 edges = 2**18
    assert not fused_cell_applies(model.cells[0], torch.zeros(64, 48, 32, 32))  # the paper's search size


def test_a_hooked_op_falls_back_its_hook_fires_once_and_the_result_is_the_same():
    calls = []
    def hook_op(model):  # a hook on one op of one edge (as diagnostics and grouping do), and one on a whole edge
        model.cells[1].edges[3]._ops[4].register_forward_hook(lambda m, args, out: calls.append('op'))
        model.cells[0].edges[5].register_forward_hook(lambda m, args, out: calls.append('edge'))
    _, fused_run = _step('darts', True, model_hook=hook_op)
    assert sorted(calls) == ['edge', 'op']
    calls.clear()
    _, plain_run = _step('darts', False, model_hook=hook_op)
    assert sorted(calls) == ['edge', 'op']
    _assert_same(fused_run, plain_run)


def test_a_hooked_submodule_disables_fusion_of_its_op_only():
    op = make_op('sep_conv_3x3', 4, 1, affine=False)
    key = fusion_key(op)
    assert key is not None and key[0] == 'conv'
    handle = op[1][2].register_forward_pre_hook(lambda *args: None)
    assert fusion_key(op) is None
    handle.remove()
    assert fusion_key(op) == key
    assert fusion_key(make_op('sep_conv_3x3', 4, 1, affine=False)) == key
    assert fusion_key(make_op('sep_conv_5x5', 4, 1, affine=False)) != key
    assert fusion_key(make_op('noise', 4, 1)) is None


def test_a_user_registered_op_falls_back_and_is_called_once_per_edge():
    class Scale(nn.Module):
        calls = 0
        def forward(self, x):
            Scale.calls += 1
            return 2 * x
    register_op('test_fused_scale')(lambda C, stride, affine: Scale() if stride == 1 else nn.AvgPool2d(1, stride))
    try:
        from stacvs.spaces import SearchSpace
        space = SearchSpace.uniform('test_fused', ('test_fused_scale', 'sep_conv_3x3', 'skip_connect'))
        _, fused_run = _step(space, True)
        fused_calls, Scale.calls = Scale.calls, 0
        _, plain_run = _step(space, False)
        assert fused_calls == Scale.calls > 0
        _assert_same(fused_run, plain_run)
    finally:
        del OPS['test_fused_scale']


def test_running_stats_after_several_steps_match():
    "Two steps with an optimizer between them: weights and BatchNorm running statistics stay equal."
    def run(on):
        torch.manual_seed(0)
        model = Supernet(C=2, num_classes=3, layers=3, space='stacnas_stage1', stem_multiplier=1).double()
        if on: fuse_search_cells(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(2):
            x = torch.randn(3, 3, 9, 9, dtype=torch.float64)
            model(x).logsumexp(1).sum().backward()
            opt.step(); opt.zero_grad()
        return list(model.parameters()) + list(model.buffers())
    fused_state, plain_state = run(True), run(False)
    assert any(b.abs().sum() > 0 for b in fused_state if b.dtype == torch.float64)
    _assert_same(fused_state, plain_state)


def test_vsdarts_factorized_reduce_is_left_to_its_module_and_gives_the_same_result():
    "The VS-DARTS code's FactorizedReduce (convs → BN → ReLU) is not fused: the fused cell calls it, with the same sums."
    from stacvs.ops import set_factorized_reduce, FactorizedReduce
    vsdarts = lambda model: set_factorized_reduce(model, 'vsdarts')
    model, fused_run = _step('darts', True, model_hook=vsdarts)
    assert all(m.post_activation for m in model.modules() if isinstance(m, FactorizedReduce))
    assert all(fusion_key(op) is None for op in model.cells[1].edges[0]._ops if isinstance(op, FactorizedReduce))
    _assert_same(fused_run, _step('darts', False, model_hook=vsdarts)[1])
    with pytest.raises(AssertionError): _assert_same(fused_run, _step('darts', False)[1])  # the style matters
