"Search engine: resume equality, failure handling. (The second-order checks against exact autograd are lessons in nbs/08_search.ipynb.)"
import json
from dataclasses import replace
import pytest
import torch
from stacvs.search import SearchConfig, Search, search, UPDATE_RULES
from stacvs.runs import NonFiniteLossError

TINY = SearchConfig(dataset='digits', layers=3, channels=4, epochs=2, batch_size=16, fraction=0.2,
                    max_steps_per_epoch=3, progress=False, eval_valid=False)


def _batches(s, n=2):
    it = iter(s.train_loader)
    return [next(it) for _ in range(n)]


class KillAt:
    def __init__(self, step): self.step = step
    def on_step_end(self, s):
        if s.global_step == self.step: raise KeyboardInterrupt


@pytest.mark.parametrize('optimization,second_order,checkpoint_every,kill', [
    ('bilevel', False, 0, 5), ('one-level', False, 0, 4), ('bilevel', True, 1, 5), ('one-level', False, 2, 5)])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, optimization, second_order, checkpoint_every, kill):
    cfg = replace(TINY, optimization=optimization, second_order=second_order, checkpoint_every=checkpoint_every, epochs=3)
    full = search(replace(cfg, out=str(tmp_path / 'full')))
    killed = replace(cfg, out=str(tmp_path / 'killed'))
    with pytest.raises(KeyboardInterrupt):
        Search(killed, [KillAt(kill)]).run()
    resumed = search(replace(killed, resume=True))
    assert resumed['alpha_normal'] == full['alpha_normal'] and resumed['alpha_reduce'] == full['alpha_reduce']
    assert resumed['genotype'] == full['genotype']
    log = [json.loads(l) for l in open(tmp_path / 'killed' / 'log.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2, 3]


def test_resume_refuses_a_different_config(tmp_path):
    cfg = replace(TINY, out=str(tmp_path), epochs=1)
    search(cfg)
    with pytest.raises(ValueError, match='layers'):
        search(replace(cfg, layers=4, resume=True))


class Corrupt:
    def on_step_end(self, s):
        if s.global_step == 4:
            with torch.no_grad(): s.model.classifier.weight.fill_(float('nan'))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = replace(TINY, out=str(tmp_path), epochs=3)
    with pytest.raises(NonFiniteLossError, match='non-finite loss'):
        Search(cfg, [Corrupt()]).run()
    state = torch.load(tmp_path / 'checkpoint.pt', weights_only=False)
    assert state['epoch'] == 1
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def test_search_is_deterministic():
    a, b = search(replace(TINY, epochs=1)), search(replace(TINY, epochs=1))
    assert a['alpha_normal'] == b['alpha_normal']


def test_one_level_moves_alpha_and_bilevel_first_order_leaves_weight_grads_out():
    s = Search(replace(TINY))
    (x, y), (xv, yv) = _batches(s)
    grads, _, _ = s.first_order_alpha_grad(xv, yv)
    assert all(p.grad is None for p in s.model.weights())  # no weight gradients computed in the α step
    assert all(g.abs().sum() > 0 for g in grads)
    before = s.model.alpha_normal.detach().clone()
    UPDATE_RULES['one-level'].step(s, x, y)  # the one-level rule on this (bilevel) search's batch
    assert not torch.equal(before, s.model.alpha_normal)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        SearchConfig(space='nope')
    with pytest.raises(ValueError, match="unknown optimization 'pc-darts'"):
        SearchConfig(optimization='pc-darts')
