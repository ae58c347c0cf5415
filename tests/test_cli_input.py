"Command-line input: bad values fail at once (one line, exit 2, nothing written), space files, plugins, Ctrl-C, pipes."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from stacvs.cli import main, build_parser

TINY = ['--dataset', 'digits', '--layers', '3', '--channels', '4', '--batch-size', '32', '--fraction', '0.2',
        '--max-steps-per-epoch', '2', '--no-progress']
TOY_OP = 'toy_conv_1x1_cli'
PLUGIN = f'''
import torch.nn as nn
from stacvs.ops import register_op

@register_op({TOY_OP!r})
def toy_conv(C, stride, affine):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1, stride, bias=False), nn.BatchNorm2d(C, affine=affine))
'''


def toy_space(ops=('none', 'skip_connect', 'sep_conv_3x3'), nodes=2, name='toy'):
    edges = [list(ops)] * sum(2 + i for i in range(nodes))
    return dict(name=name, nodes=nodes, normal=edges, reduce=edges)


@pytest.fixture(autouse=True)
def quiet_threads(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # no busy-machine warning line on stderr


def run_bad(argv, capsys):
    "Run `main(argv)`, expecting bad input: the exit status and the lines on stderr."
    with pytest.raises(SystemExit) as e: main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


BAD = [  # (command-line, the option the message must name)
    (['search', '--epochs', '0'], '--epochs'), (['search', '--epochs', '-3'], '--epochs'),
    (['search', '--layers', '0'], '--layers'), (['search', '--channels', '0'], '--channels'),
    (['search', '--batch-size', '0'], '--batch-size'), (['search', '--derive', 'foo'], '--derive'),
    (['search', '--relaxation', 'foo'], '--relaxation'), (['search', '--device', 'foo'], '--device'),
    (['search', '--optimization', 'foo'], '--optimization'), (['search', '--fraction', '1.5'], '--fraction'),
    (['search', '--train-portion', '1'], '--train-portion'), (['search', '--lr', '0'], '--w-lr'),
    (['search', '--space', 'nope'], '--space'), (['search', '--epochs', 'abc'], '--epochs'),
    (['search', '--dataset', 'nope'], '--dataset'),
    (['train', '--epochs', '0'], '--epochs'), (['train', '--epochs', '-3'], '--epochs'),
    (['train', '--layers', '0'], '--layers'), (['train', '--channels', '0'], '--channels'),
    (['train', '--batch-size', '0'], '--batch-size'), (['train', '--device', 'foo'], '--device'),
    (['train', '--fraction', '0'], '--fraction'), (['train', '--drop-path-prob', '1.5'], '--drop-path-prob'),
    (['train', '--schedule', 'step'], '--schedule'), (['train', '--protocol', 'nope'], '--protocol'),
    (['train', '--w-lr', '-1'], '--lr'), (['train', '--label-smoothing', '1'], '--label-smoothing'),
    (['genotype', 'params', 'DARTS_V2', '--channels', '0'], '--channels'),
    (['--import', 'no_such_plugin_module', 'genotype', 'list'], '--import'),
    (['search', '--import', 'my_ops'], '--import'),
]


@pytest.mark.parametrize('argv,option', BAD, ids=[' '.join(a) for a, _ in BAD])
def test_bad_values_fail_at_once_with_one_line_naming_the_option(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default run directory would appear here
    command = next(a for a in argv if not a.startswith('-') and a != 'no_such_plugin_module')
    out = ['--out', str(tmp_path / 'run')] if command in ('search', 'train') and '--import' not in argv else []
    code, lines = run_bad(argv + out, capsys)
    assert code == 2 and len(lines) == 1 and option in lines[0], lines
    assert lines[0].startswith('stacvs') and ': error: ' in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize('command', ['search', 'train'])
def test_an_out_that_is_a_file_or_not_writable_fails_before_anything_is_written(command, tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    extra = ['--dataset', 'digits'] if command == 'train' else []
    for out, problem in ((tmp_path / 'file', 'is a file'), (tmp_path / 'file' / 'run', 'cannot be created'),
                         (Path('/sys/stacvs-run'), 'not writable')):
        if problem == 'not writable' and not Path('/sys').is_dir(): continue  # no read-only /sys (not Linux)
        code, lines = run_bad([command, *extra, '--out', str(out)], capsys)
        assert code == 2 and len(lines) == 1 and '--out' in lines[0] and problem in lines[0], lines
    assert [p.name for p in tmp_path.iterdir()] == ['file'] and (tmp_path / 'file').read_text() == 'x'
    code, lines = run_bad(['genotype', 'plot', 'DARTS_V2', '--out', str(tmp_path / 'file')], capsys)
    assert code == 2 and len(lines) == 1 and '--out' in lines[0]



def test_genotype_plot_never_replaces_diagrams_without_overwrite(tmp_path, capsys):
    (tmp_path / 'normal.png').write_bytes(b'a finished diagram')
    code, lines = run_bad(['genotype', 'plot', 'DARTS_V2', '--out', str(tmp_path)], capsys)
    assert code == 2 and len(lines) == 1 and 'normal.png already exists' in lines[0] and '--overwrite' in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ['normal.png']  # refused before anything was written
    assert (tmp_path / 'normal.png').read_bytes() == b'a finished diagram'
    paths = main(['genotype', 'plot', 'DARTS_V2', '--out', str(tmp_path), '--overwrite'])
    assert [p.name for p in paths] == ['normal.png', 'reduce.png']
    assert (tmp_path / 'normal.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize('content,problem', [
    ('{"name": "x",', 'is not valid JSON'),
    (json.dumps(toy_space(ops=('none', 'conv_9x9'))), "unknown operation 'conv_9x9'"),
    (json.dumps(dict(toy_space(), nodes=3)), 'has 5 edge lists, but a cell with 3 nodes has 9 edges'),
    (json.dumps(dict(name='x', normal=[])), "['reduce'] missing"),
])
def test_a_bad_space_file_is_one_line_naming_the_file_and_the_problem(content, problem, tmp_path, capsys):
    (tmp_path / 'space.json').write_text(content)
    code, lines = run_bad(['search', '--space', str(tmp_path / 'space.json'), '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and len(lines) == 1 and problem in lines[0] and 'space.json' in lines[0] and '--space' in lines[0]
    assert not (tmp_path / 'run').exists()


def test_a_space_file_searches_end_to_end_and_resumes(tmp_path):
    space = toy_space()
    (tmp_path / 'toy.json').write_text(json.dumps(space))
    out = tmp_path / 'run'
    first = main(['search', *TINY, '--space', str(tmp_path / 'toy.json'), '--epochs', '2', '--no-eval-valid',
                  '--out', str(out)])
    config = json.loads((out / 'config.json').read_text())
    assert config['space'] == str(tmp_path / 'toy.json') and config['space_definition'] == space
    assert first['space'] == 'toy' and len(first['genotype']['normal']) == 4  # two nodes, two inputs each
    again = main(['search', '--out', str(out), '--resume'])  # the saved config names the space file
    assert again['genotype'] == first['genotype']


@pytest.fixture
def plugin(tmp_path):
    from stacvs.ops import OPS
    path = tmp_path / 'toy_cli_ops.py'
    path.write_text(PLUGIN)
    yield path
    OPS.pop(TOY_OP, None); sys.modules.pop('toy_cli_ops', None)  # leave the registry as other tests expect it


def test_a_plugin_op_is_known_to_search_train_and_genotype_plot(plugin, tmp_path, capsys, monkeypatch):
    (tmp_path / 'space.json').write_text(json.dumps(toy_space(ops=('none', TOY_OP))))
    code, lines = run_bad(['search', '--space', str(tmp_path / 'space.json'), '--out', str(tmp_path / 's')], capsys)
    assert code == 2 and len(lines) == 1 and f"unknown operation '{TOY_OP}'" in lines[0] and '--import' in lines[0]
    monkeypatch.chdir(tmp_path); monkeypatch.setattr(sys, 'path', list(sys.path))  # a module beside the user
    found = main(['--import', 'toy_cli_ops', 'search', *TINY, '--space', str(tmp_path / 'space.json'), '--epochs', '1',
                  '--no-eval-valid', '--out', str(tmp_path / 's')])
    assert {op for op, _ in found['genotype']['normal']} == {TOY_OP}
    trained = main(['--import', str(plugin), 'train', '--genotype', str(tmp_path / 's' / 'result.json'),
                    '--dataset', 'digits', '--layers', '2', '--channels', '4', '--epochs', '1', '--batch-size', '64',
                    '--cutout', '0', '--max-steps-per-epoch', '2', '--no-progress', '--out', str(tmp_path / 't')])
    assert 0 <= trained['test_acc'] <= 1
    paths = main(['--import', str(plugin), 'genotype', 'plot', str(tmp_path / 's' / 'result.json'),
                  '--out', str(tmp_path / 'plots')])
    assert [p.name for p in paths] == ['normal.png', 'reduce.png'] and all(p.stat().st_size > 0 for p in paths)


def test_help_gives_choices_presets_and_both_spellings():
    commands = build_parser()._subparsers._group_actions[0].choices
    search = {a.dest: a for a in commands['search']._actions}
    assert '(default: 50; presets: ' in search['epochs'].help
    assert 'stacnas 80' in search['epochs'].help and 'stacvs 80' in search['epochs'].help
    assert 'choices: darts, ' in search['space'].help and 'JSON file' in search['space'].help
    for dest in ('dataset', 'relaxation', 'derive', 'optimization'): assert 'choices: ' in search[dest].help
    assert {'--w-lr', '--lr'} <= set(search['w_lr'].option_strings)
    train = {a.dest: a for a in commands['train']._actions}
    for dest in ('protocol', 'schedule', 'dataset'): assert 'choices: ' in train[dest].help
    assert {'--lr', '--w-lr'} <= set(train['lr'].option_strings)
    assert {'--weight-decay', '--w-weight-decay'} <= set(train['weight_decay'].option_strings)
    for name in ('search', 'train', 'genotype', 'bench'):
        missing = [a.dest for a in commands[name]._actions if not a.help]
        assert not missing, (name, missing)
    assert '--grad-clip' in commands['search'].format_help() and '--w-grad-clip' in commands['train'].format_help()


def _cli(*argv, **kw):
    return subprocess.Popen([sys.executable, '-m', 'stacvs.cli', *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), **kw)


def test_ctrl_c_ends_with_one_line_saying_how_to_resume(tmp_path):
    out = tmp_path / 'run'
    proc, started = _cli('search', *TINY, '--epochs', '1000', '--out', str(out)), time.time()
    while not (out / 'checkpoint.pt').exists() and time.time() - started < 120 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == [f"stacvs search: interrupted; continue with: stacvs search --out {out} --resume"]
    assert main(['search', '--out', str(out), '--resume', '--override', 'epochs=2'])['epochs'] == 2  # as it says


def test_a_closed_pipe_ends_quietly():
    proc = _cli('genotype', 'show', 'DARTS_V2')
    proc.stdout.close()  # as `| head -1` does once it has its line
    err = proc.stderr.read(); proc.wait()
    assert err == '' and proc.returncode == 141
