"The optimized search step and the straightforward one (the original code's way) compute the same thing."
from dataclasses import replace
import pytest
import torch
import stacvs.fastconv as fastconv
from stacvs.bench import straightforward, BenchCase, time_search_steps, format_rows, PAPER_CPU_CASES
from stacvs.search import Search, SearchConfig

TINY = SearchConfig(dataset='digits', layers=3, channels=4, batch_size=16, fraction=0.3, progress=False,
                    eval_valid=False, space='darts')


def _trajectory(config, plain: bool, steps: int = 3):
    "α and weights after `steps` search steps in fp64, by the optimized or the straightforward path."
    torch.manual_seed(0)
    s = Search(config)
    s.model.double()
    train, valid = iter(s.train_loader.eval_loader()), iter((s.valid_loader or s.train_loader).eval_loader())
    with straightforward(s) if plain else torch.enable_grad():
        for _ in range(steps):
            (x, y), (xv, yv) = next(train), next(valid)
            if config.bilevel: s.bilevel_step(x.double(), y, xv.double(), yv)
            else: s.one_level_step(x.double(), y)
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


def test_straightforward_block_restores_the_optimized_path():
    s = Search(replace(TINY, optimization='bilevel'))
    with straightforward(s):
        assert not fastconv.fast_depthwise_enabled() and 'plain' in s.first_order_alpha_grad.func.__name__
    assert fastconv.fast_depthwise_enabled() and s.first_order_alpha_grad.__func__.__name__ == 'first_order_alpha_grad'


def test_bench_table_shows_both_paths_and_the_reference():
    case = BenchCase('tiny', SearchConfig(layers=3, channels=4, batch_size=4), image_size=8)
    rows = [time_search_steps(case, steps=1), time_search_steps(replace(case, path='straightforward'), steps=1)]
    assert [r['path'] for r in rows] == ['optimized', 'straightforward']
    table = format_rows([dict(r, case=PAPER_CPU_CASES[2].name) for r in rows], PAPER_CPU_CASES)
    assert len(table.splitlines()) == 2 and '0.89' in table and 'plain s' in table
