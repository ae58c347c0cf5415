"Runs that talk: a line per epoch where no bar is drawn, --quiet, the final summaries, log.csv, TensorBoard, --threads."
import csv, importlib.util, json, os, re, shutil, subprocess, sys
from dataclasses import replace
import pytest
import torch
from stacvs.cli import main
from stacvs.reporting import configure_threads, scalar_fields
from stacvs.repro import default_notebook_dir, repro_items, run_batch
from stacvs.runs import RunDir
from stacvs.search import Search, SearchConfig

TINY = ['--dataset', 'digits', '--layers', '3', '--channels', '4', '--batch-size', '32', '--max-steps-per-epoch', '2']
HAS_TENSORBOARD = importlib.util.find_spec('tensorboard') is not None


@pytest.fixture
def omp_one(monkeypatch):
    "In-process CLI runs: the user's OMP_NUM_THREADS is respected (no busy-machine warning, no thread change)."
    monkeypatch.setenv('OMP_NUM_THREADS', '1')


def csv_matches_jsonl(out):
    rows = list(csv.DictReader(open(out / 'log.csv')))
    records = [scalar_fields(r) for r in RunDir(out).read_log()]
    assert [{k: float(v) for k, v in row.items()} for row in rows] == records
    return rows


def test_search_under_a_file_stdout(tmp_path):
    "Stdout to a file: one line per epoch, no bar, the summary; log.csv mirrors log.jsonl; TensorBoard events."
    out = tmp_path / 'run'
    argv = [sys.executable, '-m', 'stacvs.cli', 'search', '--method', 'darts', *TINY, '--epochs', '3',
            '--threads', '1', '--out', str(out), *(['--tensorboard'] if HAS_TENSORBOARD else [])]
    with open(tmp_path / 'stdout', 'w') as stdout, open(tmp_path / 'stderr', 'w') as stderr:
        rc = subprocess.run(argv, stdout=stdout, stderr=stderr, cwd=tmp_path).returncode
    text, err = (tmp_path / 'stdout').read_text(), (tmp_path / 'stderr').read_text()
    assert rc == 0, err
    assert '\r' not in text + err  # no tqdm bar in a log
    lines = text.splitlines()
    epochs = [l for l in lines if re.match(r'search epoch \d+/3: ', l)]
    assert [l.split(':')[0] for l in epochs] == ['search epoch 1/3', 'search epoch 2/3', 'search epoch 3/3']
    assert all('train loss' in l and 'valid loss' in l and '| lr ' in l and ' left' in l for l in epochs)
    result = json.loads((out / 'result.json').read_text())
    assert re.fullmatch(r'darts search finished in [\d.]+s: supernet valid acc 0\.\d{4} \(final epoch\)', lines[-3])
    assert f"{result['final']['valid_acc']:.4f}" in lines[-3]
    assert json.loads(lines[-2].removeprefix('genotype: ')) == result['genotype']
    assert lines[-1].startswith(f'run directory: {out} ')
    assert [r['epoch'] for r in csv_matches_jsonl(out)] == ['1', '2', '3']
    if HAS_TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(str(out / 'tensorboard')); events.Reload()
        assert [s.step for s in events.Scalars('acc/valid')] == [1, 2, 3]
        tags = events.Tags()['scalars']
        assert 'lr' in tags and 'loss/train' in tags and any(t.startswith('mixing_reduce/edge13_') for t in tags)


def test_quiet_prints_only_the_summary(tmp_path, capsys, omp_one):
    main(['search', *TINY, '--epochs', '2', '--quiet', '--method', 'stacnas', '--layers', '3', '--stage2-layers', '3',
          '--out', str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    assert not [l for l in printed if re.search(r'epoch \d+/', l)]
    assert len(printed) == 3 and printed[0].startswith('stacnas search finished in ')
    # a two-stage search reports its last stage's supernet; one-level: the train accuracy, labelled
    assert re.search(r': supernet train acc 0\.\d{4} \(final epoch; one-level search: no valid split\)$', printed[0])


def test_train_lines_and_summary(tmp_path, capsys, omp_one):
    result = main(['train', '--genotype', 'DARTS_V2', *TINY, '--epochs', '2', '--cutout', '0', '--out', str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    assert [l.split(':')[0] for l in printed[:2]] == ['train epoch 1/2', 'train epoch 2/2']
    assert all('train loss' in l and 'test loss' in l for l in printed[:2])
    assert printed[2].startswith('train finished in ') and printed[2].endswith(
        f"final test acc {result['test_acc']:.4f} after 2 epochs")
    assert printed[3].startswith(f"best-over-epochs test acc {result['best_test_acc']:.4f} (epoch ")
    assert printed[3].endswith(f"; {result['params'] / 1e6:.3f}M parameters")
    assert printed[4].startswith(f'run directory: {tmp_path} ') and len(printed) == 5
    csv_matches_jsonl(tmp_path)


def test_csv_survives_resume(tmp_path):
    "Killed after logging epoch 2 but before its checkpoint: the resumed run drops that row, as log.jsonl's record."
    config = SearchConfig(dataset='digits', layers=3, channels=4, epochs=3, batch_size=16, fraction=0.2,
                          max_steps_per_epoch=2, eval_valid=False, progress=False, quiet=True, out=str(tmp_path))
    killed = Search(config)
    save = killed.save_checkpoint
    def save_or_die():
        if killed.epoch == 2: raise KeyboardInterrupt
        save()
    killed.save_checkpoint = save_or_die
    with pytest.raises(KeyboardInterrupt): killed.run()
    assert [r['epoch'] for r in csv.DictReader(open(tmp_path / 'log.csv'))] == ['1', '2']
    Search(replace(config, resume=True)).run()
    assert [r['epoch'] for r in csv_matches_jsonl(tmp_path)] == ['1', '2', '3']


@pytest.mark.parametrize('command', [['search'], ['train', '--genotype', 'DARTS_V2']])
def test_tensorboard_missing_is_one_line_error(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorboard', None)  # as if not installed
    with pytest.raises(SystemExit) as e:
        main([*command, *TINY, '--tensorboard', '--out', str(tmp_path / 'run')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f'stacvs {command[0]}: error: ') and 'pip install "stacvs[tensorboard]"' in err
    assert not (tmp_path / 'run').exists()


def test_threads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, 'getloadavg', lambda: (64.0, 64.0, 64.0))  # a busy machine
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert configure_threads(None, 'cpu') == torch.get_num_threads() and capsys.readouterr().err == ''  # respected
    monkeypatch.delenv('OMP_NUM_THREADS'); monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 4)  # torch's default on a 4-core machine
    configure_threads(None, 'cpu')
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and 'busy (1-min load average 64.0' in err[0] and '--threads 1' in err[0]
    monkeypatch.undo()
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # restored after the test
    try:
        assert configure_threads(2) == 2 and torch.get_num_threads() == 2 and os.environ['OMP_NUM_THREADS'] == '2'
    finally: torch.set_num_threads(1)
    with pytest.raises(SystemExit) as e: main(['search', *TINY, '--threads', '0', '--out', str(tmp_path / 'run')])
    assert e.value.code == 2 and 'error: --threads must be at least 1' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_repro_batch_prints_a_line_per_item(tmp_path, capsys):
    (tmp_path / 'nbs').mkdir(); (tmp_path / 'nbs' / 'unrelated.ipynb').write_text('{}')
    items = list(repro_items())[:2]  # their data files and unreadable notebooks: each fails at once, the batch goes on
    for item in items:
        shutil.copy(default_notebook_dir() / f'{item}.yaml', tmp_path / 'nbs')
        (tmp_path / 'nbs' / f'{item}.ipynb').write_text('{}')
    run_batch(items, 'smoke', tmp_path / 'out', notebooks=tmp_path / 'nbs')
    printed = capsys.readouterr().out.splitlines()
    assert [re.sub(r' (in|\().*', '', l.split(' | ')[0]) for l in printed] == [f'repro smoke {i}/2: {item} failed'
                                                                        for i, item in enumerate(items, 1)]
    run_batch(items, 'smoke', tmp_path / 'out', notebooks=tmp_path / 'nbs', show_progress=False)
    assert capsys.readouterr().out == ''
