"The reproduction layer: every notebook in nbs/repro runs on the smoke profile through the batch runner."
import json
from pathlib import Path
import pytest
from stacvs.repro import run_batch, run_item, default_notebook_dir, repro_items, write_report
from stacvs.cli import main

NOTEBOOKS = sorted(p.stem for p in default_notebook_dir().glob('*.ipynb'))


@pytest.fixture(scope='module')
def smoke_batch(tmp_path_factory):
    out = tmp_path_factory.mktemp('repro')
    return out, run_batch(NOTEBOOKS, 'smoke', out, overrides=dict(device='cpu'), show_progress=False)


def test_every_notebook_is_a_known_item_with_three_profiles():
    assert NOTEBOOKS and set(NOTEBOOKS) <= set(repro_items())
    for item in NOTEBOOKS:
        for profile in ('smoke', 'quick', 'paper'):
            assert (default_notebook_dir() / 'profiles' / profile / f'{item}.yaml').exists(), (item, profile)


def test_smoke_batch_completes_every_notebook_and_writes_the_report(smoke_batch):
    out, summary = smoke_batch
    failed = [s for s in summary if s['status'] != 'complete']
    assert not failed, failed
    for item in NOTEBOOKS:
        results = json.loads((out / item / 'results.json').read_text())
        assert results['status'] == 'complete' and results['profile'] == 'smoke' and results['comparison']
        assert all(r['paper'] is not None or r['measured'] is not None for r in results['comparison'])
        assert all((out / item / f).exists() for f in results['figures'])
    report = (out / 'report.md').read_text()
    assert all(f'## {item} (smoke' in report for item in NOTEBOOKS) and (out / 'report.csv').exists()


def test_complete_items_are_skipped_on_a_second_run(smoke_batch):
    out, _ = smoke_batch
    again = run_batch(NOTEBOOKS, 'smoke', out, overrides=dict(device='cpu'), show_progress=False)
    assert {s['status'] for s in again} == {'skipped'}


def test_a_bad_parameter_fails_that_item_only_with_a_clear_message(tmp_path, smoke_batch):
    item = NOTEBOOKS[0]
    record = run_item(item, 'smoke', tmp_path, overrides=dict(seeds='zero'))
    assert record['status'] == 'failed' and "bad papermill parameter seeds='zero'" in record['message']
    assert json.loads((tmp_path / item / 'failure.json').read_text())['status'] == 'failed'
    assert 'Failures' in write_report(tmp_path).read_text()


def test_cli_repro_list_and_errors(capsys):
    assert main(['repro', 'list']) == list(repro_items())
    with pytest.raises(SystemExit) as e: main(['repro', 'run', 'table99'])
    assert e.value.code == 2 and "unknown reproduction item(s) ['table99']" in capsys.readouterr().err
