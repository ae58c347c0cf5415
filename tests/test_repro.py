"The reproduction layer: every notebook in nbs/repro runs on the smoke profile through the batch runner."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from stacvs.repro import run_batch, run_item, default_notebook_dir, repro_items, ReproRun, read_item
from stacvs.report import write_report
from stacvs.cli import main

NOTEBOOKS = list(repro_items())  # every item with a data file nbs/repro/<item>.yaml


BATCH = ("import json, sys; from stacvs.repro import run_batch; "
         "print(json.dumps(run_batch(sys.argv[1:-1], 'smoke', sys.argv[-1], overrides=dict(device='cpu'), "
         "show_progress=False)))")

@pytest.fixture(scope='module')
def smoke_batch(tmp_path_factory):
    "Every item through the batch runner: two batches into one directory at once (a core each), then one report."
    out = tmp_path_factory.mktemp('repro')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    halves = [subprocess.Popen([sys.executable, '-c', BATCH, *NOTEBOOKS[i::2], str(out)], env=env, text=True,
                               stdout=subprocess.PIPE) for i in (0, 1)]
    outputs = [p.communicate()[0] for p in halves]
    assert all(p.returncode == 0 for p in halves), outputs
    summary = [s for o in outputs for s in json.loads(o.strip().splitlines()[-1])]
    write_report(out)  # both batches' items, whichever finished last
    return out, sorted(summary, key=lambda s: NOTEBOOKS.index(s['item']))


def test_every_notebook_is_a_known_item_with_three_profiles():
    "An item is two files: its notebook and its data file (with the three profiles), and nothing else names it."
    assert NOTEBOOKS and set(NOTEBOOKS) == {p.stem for p in default_notebook_dir().glob('*.ipynb')}
    for item in NOTEBOOKS:
        for profile in ('smoke', 'quick', 'paper'):
            assert profile in read_item(item)['profiles'], (item, profile)


def test_cli_repro_params_writes_the_file_papermill_takes(tmp_path, capsys):
    "`stacvs repro params ITEM --profile P` prints the parameters `papermill -f` reads; a bad item is one line, rc 2."
    assert main(['repro', 'params', 'stacnas_table6', '--profile', 'quick', '--seeds', '0', '1']) == dict(
        dataset='cifar10', data_root='/data', epochs=20, layers=8, channels=16, batch_size=64, max_steps_per_epoch=None,
        samples=10000, device='cuda', seeds=[0, 1], profile='quick')
    out = capsys.readouterr().out
    assert out.splitlines()[0] == 'dataset: cifar10' and out.splitlines()[-1] == 'profile: quick'
    with pytest.raises(SystemExit) as e: main(['repro', 'params', 'table99'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "unknown reproduction item 'table99'" in err


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


TINY = dict(epochs=1, max_steps_per_epoch=2, samples=64)  # stacnas_table6 in seconds


def test_every_notebook_names_its_kernel_for_papermill():
    "`papermill NB OUT` needs a kernelspec in the notebook (nbdev-clean keeps it)."
    for item in NOTEBOOKS:
        spec = json.loads((default_notebook_dir() / f'{item}.ipynb').read_text())['metadata'].get('kernelspec', {})
        assert spec.get('name') == 'python3' and spec.get('language') == 'python', item


def test_papermill_int_seeds_are_rejected_by_name_before_any_work(tmp_path):
    "`-p seeds 0` gives the int 0 where the notebooks loop over a list: one line naming the parameter and the fix."
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    done = subprocess.run([sys.executable, '-m', 'papermill', str(default_notebook_dir() / 'stacnas_table6.ipynb'),
                           str(tmp_path / 'out.ipynb'), '-p', 'profile', 'smoke', '-p', 'seeds', '0',
                           '-p', 'out_dir', str(tmp_path / 'run')], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode != 0
    assert ("ValueError: bad papermill parameter seeds=0: expected a non-empty list of integers, "
            "e.g. -y 'seeds: [0, 1, 2]'") in done.stdout + done.stderr, done.stderr[-2000:]
    assert not (tmp_path / 'run').exists()


def test_an_int_seed_given_to_the_runner_becomes_a_list(tmp_path):
    "`stacvs repro run ITEM --param seeds=0` (or run_item's overrides) runs seed 0."
    record = run_item('stacnas_table6', 'smoke', tmp_path, overrides=dict(seeds=0, device='cpu', **TINY))
    assert record['status'] == 'complete', record
    assert json.loads((tmp_path / 'stacnas_table6' / 'results.json').read_text())['parameters']['seeds'] == [0]


def test_cli_repro_report_reads_the_directory_it_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    batch = tmp_path / 'batch-a'
    ReproRun('stacnas_table1', batch / 'stacnas_table1', profile='smoke', seeds=[0]).finish({'stage1.14_cells': 0.6})
    assert main(['repro', 'report', str(batch)]) == batch / 'report.md'
    assert '| stage1.14_cells |' in (batch / 'report.md').read_text() and not (tmp_path / 'repro-runs').exists()
    with pytest.raises(SystemExit) as e: main(['repro', 'report', 'missing'])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == (
        "stacvs repro: error: no batch directory missing: give the --out of a `stacvs repro run`")


def test_cli_repro_run_exits_1_on_a_failed_item_and_keeps_every_batch_summary(tmp_path, capsys):
    out = tmp_path / 'batch'
    for _ in range(2):  # a failing item runs again in the second batch
        with pytest.raises(SystemExit) as e:
            main(['repro', 'run', 'stacnas_table6', '--out', str(out), '--param', 'seeds=zero'])
        assert e.value.code == 1
    assert '0 item(s) complete or skipped, 1 failed' in capsys.readouterr().out
    summaries = sorted((out / 'summaries').glob('*.json'))
    assert len(summaries) == 2 and all(json.loads(p.read_text())[0]['status'] == 'failed' for p in summaries)
    assert (out / 'summary.json').read_text() == summaries[-1].read_text()


def test_cli_repro_run_without_notebooks_is_one_line_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['repro', 'run', 'stacnas_table6', '--notebooks', str(tmp_path / 'none'), '--out', str(tmp_path / 'out')])
    assert e.value.code == 2 and not (tmp_path / 'out').exists()
    assert capsys.readouterr().err.strip() == (f"stacvs repro: error: no reproduction notebooks in {tmp_path / 'none'}: "
                                               "pass --notebooks DIR (nbs/repro of a stacvs checkout) or set STACVS_REPRO_NOTEBOOKS")
