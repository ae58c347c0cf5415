"""RobustDARTS's DARTS-ES rule and DARTS-ADA (stacvs.robust_darts): the rule against the code's bookkeeping, ADA's
regularization levels, resume after a kill, and the command line."""
import json, math, random
from unittest import mock
import pytest
import torch
import stacvs.robust_darts  # registers darts_es, darts_ada and the robust-darts pipeline
from stacvs.robust_darts import RobustEarlyStop, es_decision, es_first_stop, es_measures, local_average
from stacvs.methods import METHOD_PRESETS, run_method, method_config
from stacvs.cli import main

TINY = dict(dataset='digits', space='darts_small', layers=3, channels=4, batch_size=16, fraction=0.2,
            max_steps_per_epoch=2, eval_valid=False, progress=False, quiet=True, seed=0)
SHORT_RULE = dict(es_every=1, es_window=3, es_delta=1, es_start_epoch=2)  # decisions from epoch 4 on


# --- the rule: an independent transcription of RobustDARTS's EVLocalAvg bookkeeping (src/utils.py), epochs from 0 ---
class CodeTracker:
    def __init__(self, window, ev_freq, epochs):
        self.window, self.ev_freq, self.epochs = window, ev_freq, epochs
        self.ev, self.ev_local_avg, self.la_epochs = [], [], {}
        self.la_start_idx, self.la_end_idx = 0, window

    def update(self, epoch, ev):
        self.ev.append(ev)
        if len(self.ev) >= int(math.ceil(self.window / 2)) and epoch < self.epochs - 1:
            if len(self.ev) < self.window: self.ev_local_avg.append(sum(self.ev) / len(self.ev))
            else:
                window = self.ev[self.la_start_idx:self.la_end_idx]
                assert len(window) == self.window
                self.ev_local_avg.append(sum(window) / len(window))
                self.la_start_idx += 1; self.la_end_idx += 1
            self.la_epochs[epoch] = int(epoch - int(self.ev_freq * math.floor(self.window / 2)))
        elif len(self.ev) < int(math.ceil(self.window / 2)):
            self.la_epochs[epoch] = -1

    def early_stop(self, epoch, factor, es_start_epoch, delta):
        if int(self.la_epochs[epoch] - self.ev_freq * delta) >= es_start_epoch:
            if self.ev_local_avg[-1] / self.ev_local_avg[-1 - delta] > factor:
                return int(self.la_epochs[epoch] - self.ev_freq * delta)
        return None


def code_first_stop(values, window=5, delta=4, factor=1.3, es_start_epoch=10, ev_freq=2, epochs=50):
    "train_search.py's loop: λ when epoch % ev_freq == 0 or at the last epoch; no decision at the last."
    tracker = CodeTracker(window, ev_freq, epochs)
    for epoch in range(epochs):
        if epoch % ev_freq == 0 or epoch == epochs - 1:
            tracker.update(epoch, values[epoch])
            if epoch != epochs - 1:
                stop = tracker.early_stop(epoch, factor, es_start_epoch, delta)
                if stop is not None: return epoch, stop
    return None


def ours_first_stop(values, window=5, delta=4, factor=1.3, es_start_epoch=10, ev_freq=2, epochs=50):
    "stacvs's rule on the same λ, its epochs counted from 1 (code epoch e = stacvs epoch e + 1)."
    measured = [e for e in range(1, epochs + 1) if es_measures(e, ev_freq, epochs)]
    got = es_first_stop(measured, [values[e - 1] for e in measured], last_epoch=epochs, window=window, delta=delta,
                        factor=factor, start_epoch=es_start_epoch + 1)
    return None if got is None else (got[0] - 1, got[1] - 1)


def _sequences():
    rng = random.Random(0)
    slow = [1.1 ** (e / 2) for e in range(50)]  # +10 % per measurement (two epochs)
    yield 'slow rise', slow, {}
    yield 'slower rise', [1.05 ** (e / 2) for e in range(50)], {}
    yield 'noisy', [1 + rng.uniform(-0.3, 0.3) for _ in range(50)], {}
    yield 'jump after epoch 10', [1.0 if e <= 10 else 5.0 for e in range(50)], {}
    yield 'jump late', [1.0 if e < 30 else 3.0 for e in range(50)], {}
    yield 'noisy rise', [math.exp(0.03 * e + rng.gauss(0, 0.15)) for e in range(50)], {}
    for i in range(150):
        rule = rng.choice([{}, dict(window=3, delta=2, es_start_epoch=4, ev_freq=1, epochs=30),
                           dict(window=4, delta=3, factor=1.2, es_start_epoch=6, ev_freq=3, epochs=40),
                           dict(window=6, delta=1, factor=1.1, es_start_epoch=0, ev_freq=2, epochs=25)])
        walk = [1.0]
        for _ in range(rule.get('epochs', 50) - 1): walk.append(walk[-1] * math.exp(rng.gauss(0.02, 0.12)))
        yield f'walk {i}', walk, rule


@pytest.mark.parametrize('name, values, rule', list(_sequences()), ids=lambda x: x if isinstance(x, str) else '')
def test_es_rule_matches_robustdarts_bookkeeping(name, values, rule):
    assert ours_first_stop(values, **rule) == code_first_stop(values, **rule)


def test_es_rule_by_hand():
    epochs = list(range(1, 50, 2))
    slow = [1.1 ** n for n in range(25)]
    # λ̄ ratio 1.1⁴ everywhere, but no stop epoch before 11: the first decision is at epoch 23, six measurements later
    assert es_first_stop(epochs, slow) == (23, 11)
    assert es_first_stop(epochs, slow, start_epoch=1) == (13, 1)  # the rule without its start epoch
    assert es_first_stop(epochs, [1.05 ** n for n in range(25)]) is None  # 1.05⁴ = 1.22 < 1.3
    after_start = [1.0 if e <= 11 else 5.0 for e in epochs]
    assert local_average(after_start, 7) == pytest.approx(2.6)  # (1 + 1 + 1 + 5 + 5) / 5
    assert es_first_stop(epochs, after_start) == (23, 11)
    assert es_first_stop(epochs, [1.0 if e <= 29 else 3.0 for e in epochs]) == (31, 19)  # λ̄ 1.4 at once
    assert es_decision([1, 3, 5, 7, 9, 11, 13], [-1.0] * 6 + [5.0], window=3, delta=1, start_epoch=1) is None
    assert es_decision([1, 3], [1.0, 9.0], start_epoch=1) is None  # too few measurements
    assert [e for e in range(1, 51) if es_measures(e)] == list(range(1, 50, 2)) + [50]


# --- the methods on a tiny search, with λ scripted as a function of the epoch and the weight decay ---
def scripted(fn):
    return mock.patch.object(RobustEarlyStop, 'eigenvalue',
                             lambda self, s: fn(s.epoch, s.w_optimizer.param_groups[0]['weight_decay']))


class Killed(Exception): pass


class KillAt:
    def __init__(self, step): self.step = step
    def on_step_end(self, search):
        if search.global_step == self.step: raise Killed


def _state(s):
    "Weights with BN statistics and α, the optimizers' momentum and Adam moments, the learning rate."
    tensors = {f'model.{k}': v for k, v in s.model.state_dict().items()}
    for name, opt in (('w', s.w_optimizer), ('a', s.a_optimizer)):
        for i, st in opt.state_dict()['state'].items():
            tensors.update({f'{name}.{i}.{k}': v for k, v in st.items() if torch.is_tensor(v)})
    return {k: v.clone() for k, v in tensors.items()}, s.scheduler.get_last_lr()


class States:
    "The weight decay after every epoch, and the search's state at the end of each epoch and at each (re)start."
    def __init__(self): self.wd, self.ends, self.starts = [], {}, []
    def on_start(self, s): self.starts.append((s.epoch, *_state(s)))
    def on_epoch_end(self, s, record):
        self.wd.append((record['epoch'], s.w_optimizer.param_groups[0]['weight_decay']))
        self.ends.setdefault(record['epoch'], _state(s))


def _drop_timing(result):
    return {k: v for k, v in result.items() if k not in ('seconds_this_session', 'final')}


def test_presets_are_second_order_robustdarts():
    for method, action in (('darts_es', 'stop'), ('darts_ada', 'adapt')):
        preset = METHOD_PRESETS[method]
        assert (preset['optimization'], preset['second_order'], preset['pipeline']) == ('bilevel', True, 'robust-darts')
        config, settings = method_config(method)
        assert (config.second_order, config.w_weight_decay, config.epochs) == (True, 3e-4, 50)
        assert (settings.es_every, settings.es_window, settings.es_delta, settings.es_factor, settings.es_start_epoch,
                settings.ada_factor, settings.ada_max_weight_decay) == (2, 5, 4, 1.3, 11, 10.0, 0.03)


def test_ada_raises_weight_decay_on_each_trigger_and_restores_the_stop_epoch():
    states = States()
    # λ jumps at epoch 5: each time back to epoch 3, weight decay ×3 (args.py's defaults) up to a cap of 8.1e-3, where
    # the fourth trigger is ignored and the search runs to its end
    with scripted(lambda epoch, wd: 1.0 if epoch < 5 else 10.0):
        r = run_method('darts_ada', callbacks=[states], epochs=6, second_order=False, ada_factor=3,
                       ada_max_weight_decay=8.1e-3, **SHORT_RULE, **TINY)
    rd = r['robust_darts']
    assert rd['weight_decays'] == pytest.approx([3e-4, 9e-4, 2.7e-3, 8.1e-3]) and rd['weight_decays'][-1] == 8.1e-3
    assert rd['decision_epochs'] == [5, 5, 5] and rd['stop_epochs'] == [3, 3, 3]
    assert [t['weight_decay'] for t in rd['triggers']] == pytest.approx([3e-4, 9e-4, 2.7e-3])
    assert [t['new_weight_decay'] for t in rd['triggers']] == pytest.approx([9e-4, 2.7e-3, 8.1e-3])
    assert [(e['round'], e['epoch']) for e in rd['eigenvalues']] == (
        [(1, e) for e in range(1, 6)] + [(2, 4), (2, 5), (3, 4), (3, 5), (4, 4), (4, 5), (4, 6)])
    # the optimizer trained each round with that round's weight decay
    assert [e for e, _ in states.wd] == [1, 2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 6]
    assert [wd for _, wd in states.wd] == pytest.approx([3e-4] * 5 + [9e-4] * 2 + [2.7e-3] * 2 + [8.1e-3] * 3)
    # each restart begins from the state at the end of epoch 3: weights, BN statistics, α, both optimizers, lr
    assert [epoch for epoch, _, _ in states.starts] == [0, 3, 3, 3]
    state3, lr3 = states.ends[3]
    assert any(k.startswith('w.') for k in state3) and any(k.startswith('a.') for k in state3)
    for _, state, lr in states.starts[1:]:
        assert lr == lr3 and state.keys() == state3.keys() and all(torch.equal(state[k], state3[k]) for k in state3)
    assert r['epochs'] == 6 and rd['early_stop_genotype'] == rd['triggers'][0]['genotype']


def test_darts_es_resumed_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    jump = lambda epoch, wd: 1.0 if epoch < 5 else 10.0
    kw = dict(epochs=8, second_order=False, **SHORT_RULE, **TINY)
    with scripted(jump):
        whole = run_method('darts_es', out=str(tmp_path / 'whole'), **kw)
        with pytest.raises(Killed): run_method('darts_es', callbacks=[KillAt(7)], out=str(tmp_path / 'k'), **kw)
        resumed = run_method('darts_es', out=str(tmp_path / 'k'), resume=True, **kw)
    # epoch 5: λ̄ (1 + 1 + 10)/3 = 4 against 1: stop, with the α of epoch 3
    assert whole['robust_darts']['decision_epochs'] == [5] and whole['robust_darts']['stop_epochs'] == [3]
    assert whole['epochs'] == 5 and _drop_timing(resumed) == _drop_timing(whole)
    # killed after the stop was checkpointed, before its result: the resume trains nothing and gives the same result
    (tmp_path / 'whole' / 'result.json').unlink()
    with scripted(jump): again = run_method('darts_es', out=str(tmp_path / 'whole'), resume=True, **kw)
    assert _drop_timing(again) == _drop_timing(whole)
    log = [json.loads(line)['epoch'] for line in (tmp_path / 'whole' / 'log.jsonl').read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5]


def test_resume_with_other_rule_settings_is_refused(tmp_path):
    with scripted(lambda epoch, wd: 1.0):
        run_method('darts_es', out=str(tmp_path), epochs=1, second_order=False, **SHORT_RULE, **TINY)
        with pytest.raises(ValueError, match='es_factor'):
            run_method('darts_es', out=str(tmp_path), resume=True, epochs=1, second_order=False, es_factor=2.0,
                       **SHORT_RULE, **TINY)


CLI_TINY = ['--dataset', 'digits', '--space', 'darts_small', '--layers', '3', '--channels', '4', '--batch-size', '16',
            '--fraction', '0.2', '--max-steps-per-epoch', '2', '--epochs', '2', '--no-eval-valid', '--quiet',
            '--es-iterations', '2']


@pytest.mark.parametrize('method', ['darts_es', 'darts_ada'])
def test_cli_runs_darts_es_and_ada_with_the_real_eigenvalue(tmp_path, method, capsys):
    out = tmp_path / method
    result = main(['search', '--method', method, '--out', str(out), *CLI_TINY])
    saved = json.loads((out / 'result.json').read_text())
    eig = saved['robust_darts']['eigenvalues']
    assert [e['epoch'] for e in eig] == [1, 2] and all(math.isfinite(e['eigenvalue']) for e in eig)
    config = json.loads((out / 'config.json').read_text())
    assert saved['second_order'] is True and config['method'] == method and result['method'] == method
    assert config['es_action'] == {'darts_es': 'stop', 'darts_ada': 'adapt'}[method] and config['es_iterations'] == 2
    assert (out / 'diagnostics' / 'robust_early_stop.png').exists()
    again = main(['search', '--out', str(out), '--resume'])  # settings and method from config.json
    assert again['robust_darts'] == result['robust_darts']


def test_cli_refuses_a_bad_action_before_writing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['search', '--method', 'darts_es', '--es-action', 'halt', '--out', str(tmp_path / 'x'), *CLI_TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith('stacvs search: error: --es-action')
    assert not (tmp_path / 'x').exists()
