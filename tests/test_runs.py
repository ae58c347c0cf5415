"Run directories: atomic writes, resume-safe logs, RNG state capture, config checks, JSON conversion, progress."
import io, json, random
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import pytest
import torch
from stacvs.runs import (RunDir, atomic_write_json, atomic_write_text, atomic_torch_save, to_jsonable,
                         seed_everything, get_rng_state, set_rng_state, resolve_device, progress, check_finite,
                         NonFiniteLossError)


class FailsToPickle:
    def __reduce__(self): raise RuntimeError('serialization failed')


class FailsToJson:
    pass


def test_failed_json_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'result.json'
    atomic_write_json(path, {'acc': 0.97})
    with pytest.raises(TypeError):
        atomic_write_json(path, {'acc': 0.5, 'bad': FailsToJson()})
    assert json.loads(path.read_text()) == {'acc': 0.97}
    assert [p.name for p in tmp_path.iterdir()] == ['result.json']


def test_failed_checkpoint_write_leaves_old_checkpoint(tmp_path):
    rd = RunDir(tmp_path)
    rd.save_checkpoint({'epoch': 1, 'w': torch.arange(3.)})
    with pytest.raises(RuntimeError, match='serialization failed'):
        rd.save_checkpoint({'epoch': 2, 'w': FailsToPickle()})
    state = rd.load_checkpoint()
    assert state['epoch'] == 1 and torch.equal(state['w'], torch.arange(3.))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pt']


def test_failure_during_the_file_write_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / 'a.txt'
    atomic_write_text(path, 'old')
    def broken_replace(src, dst): raise OSError('disk gone')
    monkeypatch.setattr('stacvs.runs.os.replace', broken_replace)
    with pytest.raises(OSError, match='disk gone'):
        atomic_write_text(path, 'new')
    assert path.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['a.txt']


def test_resume_truncates_the_log_to_the_checkpoint(tmp_path):
    rd = RunDir(tmp_path)
    for epoch in (1, 2, 3, 4): rd.log({'epoch': epoch, 'loss': 1 / epoch})
    rd.truncate_log(3)  # checkpoint after epoch 2: epochs 3 and 4 will run again
    assert [r['epoch'] for r in rd.read_log()] == [1, 2]
    rd.log({'epoch': 3, 'loss': 0.3})
    assert [r['epoch'] for r in rd.read_log()] == [1, 2, 3]


def test_torn_last_log_line_is_skipped(tmp_path):
    rd = RunDir(tmp_path)
    rd.log({'epoch': 1})
    with open(rd.log_path, 'a') as f: f.write('{"epoch": 2, "lo')
    assert rd.read_log() == [{'epoch': 1}]
    rd.truncate_log(5)
    assert rd.log_path.read_text() == '{"epoch": 1}\n'


def draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_state_round_trip_repeats_the_same_numbers(tmp_path):
    seed_everything(123)
    draws()
    state = get_rng_state()
    expected = draws()
    seed_everything(0); draws()  # disturb every generator
    rd = RunDir(tmp_path); rd.save_checkpoint({'rng': state})  # through a checkpoint file, as on resume
    set_rng_state(rd.load_checkpoint()['rng'])
    assert draws() == expected


def test_seed_everything_is_reproducible():
    seed_everything(7); a = draws()
    seed_everything(7); assert draws() == a
    seed_everything(8); assert draws() != a


def test_config_mismatch_names_the_differing_keys(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_config({'layers': 20, 'lr': 0.025, 'out': 'a', 'seed': 0})
    rd.check_resumable({'layers': 20, 'lr': 0.025, 'out': 'b', 'resume': True, 'progress': False, 'seed': 0})
    with pytest.raises(ValueError) as e:
        rd.check_resumable({'layers': 14, 'lr': 0.1, 'out': 'a', 'seed': 0})
    message = str(e.value)
    assert 'layers, lr' in message and 'saved 20, now 14' in message and 'seed' not in message


def test_start_refuses_to_overwrite_and_resumes_with_checks(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.start({'layers': 3}) is None
    config = rd.read_config()
    assert config['layers'] == 3 and config['versions']['torch'] == torch.__version__
    rd.log({'epoch': 1}); rd.save_checkpoint({'epoch': 1})
    with pytest.raises(ValueError, match='already holds a started run'):
        rd.start({'layers': 3})
    assert rd.start({'layers': 3}, resume=True) == {'epoch': 1}
    with pytest.raises(ValueError, match='differs in layers'):
        rd.start({'layers': 4}, resume=True)


def test_fresh_start_clears_a_log_without_checkpoint(tmp_path):
    rd = RunDir(tmp_path)
    rd.log({'epoch': 1})  # a run that died before its first checkpoint
    assert rd.start({'layers': 3}, resume=True) is None and rd.read_log() == []


@dataclass
class Cfg:
    lr: float
    root: Path


def test_to_jsonable_converts_run_values():
    obj = {'cfg': Cfg(0.1, Path('/data')), 't': torch.tensor([[1, 2]]), 'n': np.float32(0.5),
           'a': np.arange(2), 'tuple': (1, 'x'), 3: torch.device('cpu')}
    assert json.loads(json.dumps(to_jsonable(obj))) == {
        'cfg': {'lr': 0.1, 'root': '/data'}, 't': [[1, 2]], 'n': 0.5, 'a': [0, 1], 'tuple': [1, 'x'], '3': 'cpu'}


def test_figure_path_is_under_figures(tmp_path):
    path = RunDir(tmp_path).figure_path('alpha.png')
    assert path == tmp_path / 'figures' / 'alpha.png' and path.parent.is_dir()


def test_resolve_device_and_check_finite():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type in ('cpu', 'cuda')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            resolve_device('cuda')
    check_finite(torch.tensor(2.0), 'epoch 1')
    with pytest.raises(NonFiniteLossError, match='at epoch 3'):
        check_finite(torch.tensor(float('inf')), 'epoch 3')


def test_progress_is_quiet_without_a_terminal_unless_forced():
    # pytest captures stderr, so there is no terminal here
    assert progress(range(2)).disable
    bar = progress(range(2), force=True, file=io.StringIO())
    assert not bar.disable and list(bar) == [0, 1]
    assert progress(range(2), force=True, disable=True).disable


def test_a_run_saved_before_a_setting_existed_resumes_with_the_value_it_ran_with(tmp_path):
    "A config.json written before `factorized_reduce` existed ran DARTS's FactorizedReduce: resuming with it is the same run."
    from stacvs.runs import RunDir, ADDED_SETTINGS
    rd = RunDir(tmp_path)
    rd.write_config(dict(epochs=3, seed=0))  # an older version's config: no accelerate, no factorized_reduce
    assert rd.check_resumable(dict(epochs=3, seed=0, **ADDED_SETTINGS)) == {}
    with pytest.raises(ValueError, match="factorized_reduce: saved 'darts', now 'vsdarts'"):
        rd.check_resumable(dict(epochs=3, seed=0, accelerate=True, factorized_reduce='vsdarts'))
