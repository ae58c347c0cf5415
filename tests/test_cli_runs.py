"Run directories from the command line: finished results are never lost, resume reads the saved config, --override."
import json, os
import pytest
import torch
from stacvs.cli import main
from stacvs.methods import method_config
from stacvs.runs import RunDir
from stacvs.search import Search, search
from stacvs.train import Trainer, TrainConfig

TINY = dict(dataset='digits', layers=3, channels=4, epochs=2, batch_size=32, fraction=0.3, max_steps_per_epoch=2,
            progress=False)
TINY_ARGS = ['--dataset', 'digits', '--layers', '3', '--channels', '4', '--epochs', '2', '--batch-size', '32',
             '--fraction', '0.3', '--max-steps-per-epoch', '2', '--no-progress', '--quiet']
TINY_TRAIN = ['--genotype', 'DARTS_V2', '--dataset', 'digits', '--layers', '2', '--channels', '4', '--epochs', '2',
              '--batch-size', '64', '--fraction', '0.2', '--max-steps-per-epoch', '2', '--no-progress', '--quiet']


class Killed(Exception): pass


class KillAt:
    "Stops a search abruptly at a global step, as a kill would."
    def __init__(self, step): self.step = step
    def on_step_end(self, s):
        if s.global_step == self.step: raise Killed


class Diverge:
    "Breaks the weights during epoch 2, as a too-large learning rate would."
    def on_step_end(self, s):
        if s.epoch == 1: next(iter(s.model.weights())).data.fill_(float('nan'))


def fails(argv, capsys) -> str:
    "Run the CLI expecting a bad-input exit; the one line it printed."
    with pytest.raises(SystemExit) as e: main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def snapshot(path):
    "Every file under `path` with its bytes."
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


def test_a_finished_two_stage_run_is_not_replaced_by_another_search(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['search', '--method', 'stacnas', '--stage2-layers', '3', *TINY_ARGS, '--epochs', '1', '--out', str(out)])
    before = snapshot(out)
    err = fails(['search', '--method', 'darts', *TINY_ARGS, '--out', str(out)], capsys)
    assert 'already holds a finished run (result.json, config.json' in err and '--overwrite' in err
    assert snapshot(out) == before
    main(['search', '--method', 'darts', *TINY_ARGS, '--out', str(out), '--overwrite'])
    names = {p.name for p in out.iterdir()}
    assert 'stage1' not in names and 'grouping' not in names and json.loads((out / 'config.json').read_text())['method'] == 'darts'


def test_a_run_without_its_checkpoint_keeps_its_result_and_log(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['search', *TINY_ARGS, '--out', str(out)])
    (out / 'checkpoint.pt').unlink(); (out / 'checkpoint.prev.pt').unlink()  # deleted to save space
    before = snapshot(out)
    assert 'already holds a finished run' in fails(['search', *TINY_ARGS, '--out', str(out)], capsys)
    assert snapshot(out) == before
    main(['search', '--out', str(out), '--resume', '--quiet'])  # finished: the saved result, nothing rewritten
    assert snapshot(out) == before


def test_resume_needs_only_the_run_directory_and_checks_options(tmp_path, capsys):
    config, _ = method_config('vsdarts', **TINY, out=str(tmp_path / 'full'))
    full = Search(config).run()
    config, _ = method_config('vsdarts', **TINY, out=str(tmp_path / 'cut'))
    with pytest.raises(Killed): Search(config, [KillAt(3)]).run()  # killed in epoch 2
    err = fails(['search', '--out', str(tmp_path / 'cut'), '--resume', '--w-lr', '0.1'], capsys)
    assert "--w-lr 0.1 differs from the saved run's 0.025" in err and '--override w_lr=0.1' in err
    resumed = main(['search', '--out', str(tmp_path / 'cut'), '--resume', '--quiet'])
    assert resumed['method'] == 'vsdarts' and resumed['alpha_normal'] == full['alpha_normal']
    assert resumed['genotype'] == full['genotype']


def test_a_diverged_search_resumes_with_a_lower_learning_rate(tmp_path, capsys):
    out = tmp_path / 'run'
    with pytest.raises(RuntimeError, match=rf'stacvs search --out {out} --resume --override w_lr=0.0125'):
        Search(method_config('darts', **TINY, out=str(out))[0], [Diverge()]).run()
    # the log stays strict JSON: NaN is written as null and flagged
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f'{c} in the log'))
               for line in (out / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [1] and RunDir(out).load_checkpoint()['epoch'] == 1
    assert 'config differs' not in fails(['search', '--out', str(out), '--resume', '--override', 'layers=5'], capsys)
    result = main(['search', '--out', str(out), '--resume', '--override', 'w_lr=0.0125', '--quiet'])
    assert result['epochs'] == 2
    saved = json.loads((out / 'config.json').read_text())
    assert saved['w_lr'] == 0.0125 and saved['resume_overrides'] == [dict(epoch=1, changes=dict(w_lr=[0.025, 0.0125]))]


def test_override_needs_resume(tmp_path, capsys):
    err = fails(['search', *TINY_ARGS, '--out', str(tmp_path / 'r'), '--override', 'w_lr=0.01'], capsys)
    assert '--override changes a run being resumed: add --resume' in err and not (tmp_path / 'r').exists()


def test_a_truncated_checkpoint_names_the_file_and_the_way_out(tmp_path, capsys):
    out = tmp_path / 'run'
    config = method_config('darts', **{**TINY, 'epochs': 3}, out=str(out))[0]
    with pytest.raises(Killed): Search(config, [KillAt(5)]).run()  # checkpoints after epochs 1 and 2
    checkpoint = out / 'checkpoint.pt'
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a copy cut short
    err = fails(['search', '--out', str(out), '--resume'], capsys)
    assert f'checkpoint {checkpoint} is truncated or corrupt' in err and f'mv {out / "checkpoint.prev.pt"}' in err
    os.replace(out / 'checkpoint.prev.pt', checkpoint)  # what the message says: the epoch before
    assert main(['search', '--out', str(out), '--resume', '--quiet'])['epochs'] == 3


def test_run_files_are_readable_by_others(tmp_path):
    umask = os.umask(0o022)
    try: search(**TINY, out=str(tmp_path / 'run'))
    finally: os.umask(umask)
    for name in ('config.json', 'result.json', 'checkpoint.pt', 'log.jsonl'):
        assert (tmp_path / 'run' / name).stat().st_mode & 0o777 == 0o644, name


def test_train_resumes_from_its_directory_and_refuses_to_replace_a_result(tmp_path, capsys):
    out = tmp_path / 'train'
    main(['train', *TINY_TRAIN, '--out', str(out)])
    before = snapshot(out)
    assert 'already holds a finished run' in fails(['train', *TINY_TRAIN, '--lr', '0.1', '--out', str(out)], capsys)
    assert snapshot(out) == before
    assert main(['train', '--out', str(out), '--resume', '--quiet'])['epochs'] == 2 and snapshot(out) == before
    # a killed training resumes with a deliberate, recorded change of its learning rate
    cut = tmp_path / 'cut'
    config = TrainConfig(genotype='DARTS_V2', dataset='digits', layers=2, channels=4, epochs=3, batch_size=64,
                         fraction=0.2, max_steps_per_epoch=2, progress=False, out=str(cut))

    class KillAfterEpoch1:
        def on_checkpoint(self, trainer):
            if trainer.epoch == 1: raise Killed
    with pytest.raises(Killed): Trainer(config, [KillAfterEpoch1()]).run()
    main(['train', '--out', str(cut), '--resume', '--override', 'lr=0.01', '--quiet'])
    log = RunDir(cut).read_log()
    assert [r['epoch'] for r in log] == [1, 2, 3] and log[0]['lr'] == 0.025
    assert log[1]['lr'] == pytest.approx(0.01 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()) / 2)


def test_a_reproduction_item_run_with_other_parameters_is_not_replaced(tmp_path, capsys):
    out = tmp_path / 'batch'
    main(['repro', 'run', 'stacnas_table6', '--profile', 'smoke', '--out', str(out), '--quiet'])
    item = out / 'stacnas_table6'
    before = snapshot(item)
    err = fails(['repro', 'run', 'stacnas_table6', '--profile', 'smoke', '--out', str(out), '--seeds', '5'], capsys)
    assert f'{item} holds a finished run with other parameters (seeds); pass --overwrite' in err
    assert snapshot(item) == before
    main(['repro', 'run', 'stacnas_table6', '--profile', 'smoke', '--out', str(out), '--quiet'])  # same: skipped
    assert snapshot(item) == before
