"The optimized search step and the straightforward one (the original code's way) compute the same thing."
from dataclasses import replace
import pytest
import torch
import stacvs.accel.fastconv as fastconv
from stacvs.accel.fastconv import FastDepthwiseConv2d, FastFactorizedReduce
from stacvs.accel.fused import FusedSearchCell
from stacvs.bench import straightforward_search, BenchCase, time_search_steps, format_rows, PAPER_CPU_CASES
from stacvs.cells import SearchCell
from stacvs.search import Search, SearchConfig

TINY = SearchConfig(dataset='digits', layers=3, channels=4, batch_size=16, fraction=0.3, progress=False,
                    eval_valid=False, space='darts')


def _trajectory(config, plain: bool, steps: int = 3, fused: bool = True):
    "α and weights after `steps` search steps in fp64, by the optimized or the straightforward path."
    torch.manual_seed(0)
    s = straightforward_search(config) if plain else Search(config)
    if not fused:  # accelerated, but each edge computed on its own
        for cell in s.model.cells: cell.__class__ = SearchCell
    s.model.double()
    train, valid = iter(s.train_loader.eval_loader()), iter((s.valid_loader or s.train_loader).eval_loader())
    for _ in range(steps):
        (x, y), (xv, yv) = next(train), next(valid)
        s.step(x.double(), y, *((xv.double(), yv) if s.rule.needs_valid else ()))
    return [p.detach().clone() for p in s.model.alphas() + s.model.weights()]


@pytest.mark.parametrize('optimization,second_order', [('one-level', False), ('bilevel', False), ('bilevel', True)])
def test_optimized_and_straightforward_paths_give_the_same_alpha_and_weights(optimization, second_order, monkeypatch):
    monkeypatch.setattr(fastconv, 'FAST_MIN_ELEMENTS', 0)  # tiny inputs take the fast depthwise backward too
    probe = torch.randn(16, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    assert fastconv.fast_path_refusal(probe, torch.randn(4, 1, 5, 5, dtype=torch.float64), (2, 2), (1, 1)) is None
    config = replace(TINY, optimization=optimization, second_order=second_order)
    fast, plain = _trajectory(config, plain=False), _trajectory(config, plain=True)
    assert not all(torch.equal(a, b) for a, b in zip(fast[:2], _trajectory(replace(config, seed=1), plain=False)[:2]))
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)



@pytest.mark.parametrize('optimization,second_order', [('one-level', False), ('bilevel', False), ('bilevel', True)])
@pytest.mark.parametrize('fused', [True, False])  # unfused: per-edge ops, sub-grid dilated convs, subsample gradients
def test_channels_last_search_gives_the_same_alpha_and_weights(optimization, second_order, fused):
    config = replace(TINY, optimization=optimization, second_order=second_order)
    nhwc = _trajectory(replace(config, channels_last=True), plain=False, fused=fused)
    nchw = _trajectory(replace(config, channels_last=False), plain=True)
    for a, b in zip(nhwc, nchw):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_channels_last_is_chosen_for_large_cpu_states_only():
    small = Search(TINY)
    assert not small.channels_last and all(p.is_contiguous() for p in small.model.weights())
    forced = Search(replace(TINY, channels_last=True))
    outputs = []
    forced.model.cells[0].register_forward_hook(lambda module, inputs, out: outputs.append(out))
    x, y = next(iter(forced.train_loader))
    forced.loss(x, y)
    assert forced.channels_last and outputs[0].is_contiguous(memory_format=torch.channels_last)
    assert not outputs[0].is_contiguous()
    # digits at batch 2048 × 4 channels × 8² = 2**19 elements per state: large enough
    assert Search(replace(TINY, batch_size=2048, fraction=1.0)).channels_last


def test_the_two_searches_are_built_side_by_side():
    "The plain search's model has no accelerated module and steps like the original code; the other is untouched by it."
    fast = Search(replace(TINY, optimization='bilevel'))
    plain = straightforward_search(replace(TINY, optimization='bilevel'))
    kinds = lambda s: {type(m) for m in s.model.modules()}
    assert {FastDepthwiseConv2d, FastFactorizedReduce, FusedSearchCell} <= kinds(fast)
    assert not {FastDepthwiseConv2d, FastFactorizedReduce, FusedSearchCell} & kinds(plain)
    assert 'plain' in plain.first_order_alpha_grad.func.__name__ and not plain.channels_last
    assert fast.first_order_alpha_grad.__func__.__name__ == 'first_order_alpha_grad'


def test_bench_table_shows_both_paths_and_the_reference():
    case = BenchCase('tiny', SearchConfig(layers=3, channels=4, batch_size=4), image_size=8)
    rows = [time_search_steps(case, steps=1), time_search_steps(replace(case, path='straightforward'), steps=1)]
    assert [r['path'] for r in rows] == ['optimized', 'straightforward']
    table = format_rows([dict(r, case=PAPER_CPU_CASES[2].name) for r in rows], PAPER_CPU_CASES)
    assert len(table.splitlines()) == 2 and '0.89' in table and 'plain s' in table
