"The command line and the benchmark: outputs, help, errors (no timing assertions)."
import json
import subprocess, sys
import pytest
from stacvs.cli import main, build_parser
from stacvs.bench import BenchCase, time_search_steps, PAPER_CPU_CASES, format_rows
from stacvs.search import SearchConfig

TINY = ['--dataset', 'digits', '--layers', '3', '--channels', '4', '--batch-size', '32', '--fraction', '0.2',
        '--max-steps-per-epoch', '2', '--no-progress']


def test_help_lists_every_command_and_paper_defaults():
    text = build_parser().format_help()
    for cmd in ('search', 'train', 'genotype', 'bench'): assert cmd in text
    out = subprocess.run([sys.executable, '-c', 'from stacvs.cli import main; main()', 'search', '--help'],
                         capture_output=True, text=True)
    assert out.returncode == 0 and '--second-order' in out.stdout and '--resume' in out.stdout


def test_search_writes_a_complete_run_directory_and_resumes(tmp_path):
    out = tmp_path / 'run'
    first = main(['search', *TINY, '--epochs', '2', '--out', str(out)])
    names = {p.name for p in out.iterdir()}
    assert {'config.json', 'checkpoint.pt', 'log.jsonl', 'result.json', 'normal.png', 'reduce.png'} <= names
    config = json.loads((out / 'config.json').read_text())
    assert config['layers'] == 3 and 'torch' in json.dumps(config)
    again = main(['search', *TINY, '--epochs', '2', '--out', str(out), '--resume'])  # finished: nothing left to do
    assert again['genotype'] == first['genotype']


def test_train_from_a_search_result(tmp_path):
    main(['search', *TINY, '--epochs', '1', '--out', str(tmp_path / 's')])
    result = main(['train', '--genotype', str(tmp_path / 's' / 'result.json'), '--dataset', 'digits',
                   '--layers', '3', '--channels', '4', '--epochs', '1', '--batch-size', '64', '--fraction', '0.2',
                   '--no-progress', '--out', str(tmp_path / 't')])
    assert 0 <= result['test_acc'] <= 1 and (tmp_path / 't' / 'result.json').exists()


def test_genotype_commands(tmp_path, capsys):
    assert 'DARTS_V2' in main(['genotype', 'list'])
    assert main(['genotype', 'params', 'DARTS_V2']) == main(['genotype', 'params', 'darts_v2'])
    paths = main(['genotype', 'plot', 'DARTS_V2', '--out', str(tmp_path)])
    assert [p.name for p in paths] == ['normal.png', 'reduce.png'] and all(p.exists() for p in paths)


@pytest.mark.parametrize('argv,message', [
    (['search', '--space', 'nope'], "unknown search space 'nope'"),
    (['search', '--dataset', 'cifar10', '--data-root', '/nonexistent'], 'cifar'),
    (['genotype', 'show', 'NOT_A_GENOTYPE'], 'NOT_A_GENOTYPE'),
])
def test_bad_input_is_a_clear_one_line_error(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv + (['--out', str(tmp_path)] if argv[0] == 'search' else []))
    assert e.value.code == 2
    assert message.lower() in capsys.readouterr().err.lower()


def test_bench_measures_a_step_and_formats_reference_ratios():
    row = time_search_steps(BenchCase('tiny', SearchConfig(layers=3, channels=4, batch_size=4), image_size=8), steps=1)
    assert row['median_s'] > 0 and row['peak_rss_gb'] > 0
    table = format_rows([dict(row, case=PAPER_CPU_CASES[2].name)], PAPER_CPU_CASES)
    assert PAPER_CPU_CASES[2].name in table and '0.89' in table
