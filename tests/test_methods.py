"The methods: presets and switches, the two-stage pipeline end to end, resume, and the command line."
import json, math
import pytest
import torch
from stacvs.cli import main
from stacvs.larc import LARC
from stacvs.methods import method_config, run_method, run_two_stage, TwoStageConfig
from stacvs.search import Search
from stacvs.spaces import get_space

TINY = dict(dataset='digits', channels=4, epochs=1, batch_size=32, fraction=0.3, max_steps_per_epoch=2, progress=False)
TINY_ARGS = ['--dataset', 'digits', '--channels', '4', '--epochs', '1', '--batch-size', '32', '--fraction', '0.3',
             '--max-steps-per-epoch', '2', '--no-progress']


@pytest.mark.parametrize('switches', [dict(node_norm=False, larc=False, relaxation='softmax'),  # VS-DARTS Table 4 rows
                                      dict(larc=False, relaxation='softmax'), dict(relaxation='softmax'), {}])
def test_vsdarts_ablation_switches_reach_the_search(switches):
    config, stages = method_config('vsdarts', layers=3, **TINY, **switches)
    search = Search(config)
    expected = {**dict(node_norm=True, larc=True, relaxation='sqrt'), **switches}
    norms = {type(n).__name__ for cell in search.model.cells for n in cell.node_norms}
    assert norms == ({'BatchNorm2d'} if expected['node_norm'] else {'Identity'})
    assert isinstance(search.w_optimizer, LARC) == expected['larc']
    assert search.model.relaxation.name == expected['relaxation']
    assert not isinstance(search.a_optimizer, LARC) and stages is None
    assert config.optimization == 'bilevel' and config.batch_size == 32  # the user's value beats the preset's 96


def test_stacnas_pipeline_outputs_and_stage_spaces(tmp_path):
    r = run_method('stacnas', layers=3, stage2_layers=3, out=str(tmp_path), **TINY)
    names = {p.name for p in tmp_path.iterdir()}
    assert {'grouping', 'stage1', 'stage2', 'result.json', 'normal.png', 'reduce.png'} <= names
    assert (tmp_path / 'grouping' / 'correlation_paper.png').exists()  # the published matrix the groups come from
    assert get_space(r['stage1_space']).normal == get_space('stacnas_stage1').normal  # the recorded space itself
    stage1_config = json.loads((tmp_path / 'stage1' / 'config.json').read_text())  # alone rebuilds the stage's space
    assert get_space(stage1_config['space']) == get_space(r['stage1_space']) and stage1_config['space']['name'] == 'stage1'
    for t in ('normal', 'reduce'):  # stage 2: exactly `none` + the members of the group that won the edge
        for ops, won in zip(r['stage2_space'][t], r['winning_groups'][t]):
            assert sorted(ops) == sorted(['none', *won])
    assert json.loads((tmp_path / 'result.json').read_text())['genotype'] == r['genotype'] == r['stage2_genotype']


class KillInStage2:
    "Interrupts the stage-2 search at a step, as a kill would."
    def __init__(self, step): self.step = step
    def on_step_end(self, s):
        if s.model.space.name.startswith('stage2') and s.global_step == self.step: raise KeyboardInterrupt


def test_two_stage_search_killed_in_stage2_resumes_to_the_same_result(tmp_path):
    kw = dict(TINY, epochs=2)
    full = run_method('stacnas', layers=3, stage2_layers=3, out=str(tmp_path / 'full'), **kw)
    config, stages = method_config('stacnas', layers=3, stage2_layers=3, out=str(tmp_path / 'killed'), **kw)
    with pytest.raises(KeyboardInterrupt): run_two_stage(config, stages, callbacks=[KillInStage2(3)])
    assert (tmp_path / 'killed' / 'stage1' / 'result.json').exists()
    assert not (tmp_path / 'killed' / 'stage2' / 'result.json').exists()
    resumed = run_method('stacnas', layers=3, stage2_layers=3, out=str(tmp_path / 'killed'), resume=True, **kw)
    assert resumed['genotype'] == full['genotype'] and resumed['stage1_genotype'] == full['stage1_genotype']
    with pytest.raises(ValueError, match='already holds a finished run'):
        run_method('stacnas', layers=3, stage2_layers=3, out=str(tmp_path / 'killed'), **kw)


def test_cli_stacnas_auto_depth_end_to_end(tmp_path):
    r = main(['search', '--method', 'stacnas', *TINY_ARGS, '--layers', 'auto', '--depth-candidates', '2', '3',
              '--final-layers', '4', '--confusion-steps', '2', '--confusion-iterations', '2', '--stage2-layers', '3',
              '--out', str(tmp_path)])
    assert r['stage1_layers'] in (2, 3)
    depth = json.loads((tmp_path / 'confusion' / 'depth.json').read_text())
    assert depth['depth'] == r['stage1_layers'] and {row['role'] for row in depth['table']} == {'final', 'search'}
    assert (tmp_path / 'confusion' / 'confusion.png').exists()
    assert json.loads((tmp_path / 'stage1' / 'config.json').read_text())['layers'] == r['stage1_layers']


def test_measured_groups_and_stacvs_with_stage3(tmp_path):
    r = run_method('stacvs', layers=2, stage2_layers=2, groups='measured', correlation_epochs=1,
                   correlation_samples=64, stage3=True, out=str(tmp_path), **TINY)
    grouping = json.loads((tmp_path / 'grouping' / 'groups.json').read_text())
    assert grouping['source'] == 'measured' and len(grouping['correlation']) == len(grouping['op_names'])
    assert (tmp_path / 'grouping' / 'correlation.png').exists()
    assert sorted(op for g in r['groups'] for op in g) == sorted(op for op in get_space('darts').ops if op != 'none')
    config = json.loads((tmp_path / 'stage2' / 'config.json').read_text())
    assert config['node_norm'] and config['larc'] and config['relaxation'] == 'sqrt'
    space3 = json.loads((tmp_path / 'stage3' / 'config.json').read_text())['space_definition']
    assert all(len(ops) == 2 and ops[0] == 'none' for t in ('normal', 'reduce') for ops in space3[t])
    assert r['genotype'] == r['stage3_genotype']


@pytest.mark.parametrize('argv,message', [
    (['--method', 'darts', '--stage2-layers', '5'], 'only apply to the two-stage methods'),
    (['--method', 'darts', '--layers', 'auto'], 'needs a two-stage method'),
    (['--method', 'stacnas', '--alpha-per-cell', '--stage3'], '--stage3 with --alpha-per-cell is not supported'),
    (['--method', 'stacnas', '--groups', 'conv_9x9'], 'does not offer'),
    (['--method', 'vsdarts', '--second-order'], '--larc with --second-order is not supported'),
    (['--diagnostics', 'variance'], "unknown diagnostics ['variance']"),
])
def test_method_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: main(['search', *argv, *TINY_ARGS, '--out', str(tmp_path / 'x')])
    assert e.value.code == 2 and message in capsys.readouterr().err


ABLATION_ROWS = [['--no-node-norm', '--no-larc', '--relaxation', 'softmax'], ['--no-larc', '--relaxation', 'softmax'],
                 ['--relaxation', 'softmax'], []]  # VS-DARTS Table 4: DARTS, +NodeNorm, +LARC, +√β


@pytest.mark.parametrize('row', ABLATION_ROWS)
def test_vsdarts_table4_rows_run_from_the_cli_with_diagnostic_plots(row, tmp_path):
    main(['search', '--method', 'vsdarts', *row, *TINY_ARGS, '--layers', '3', '--out', str(tmp_path),
          '--diagnostics', 'node_variance', 'none_weight', 'grad_norm', 'edge_statistics'])
    written = {p.name for p in (tmp_path / 'diagnostics').iterdir()}
    assert {f'{n}.{ext}' for n in ('node_variance', 'none_weight', 'grad_norm', 'edge_statistics')
            for ext in ('json', 'png')} <= written
    config = json.loads((tmp_path / 'config.json').read_text())
    assert (config['node_norm'], config['larc'], config['relaxation']) == \
        ('--no-node-norm' not in row, '--no-larc' not in row, 'softmax' if row else 'sqrt')


@pytest.mark.parametrize('space', ['s1', 's2', 's3', 's4'])
def test_robustdarts_spaces_run_from_the_cli_with_darts_es(space, tmp_path):
    r = main(['search', '--method', 'darts', '--space', space, *TINY_ARGS, '--layers', '3', '--epochs', '2',
              '--out', str(tmp_path), '--diagnostics', 'node_variance', 'pt_selection', '--early-stop-ratio', '0.75'])
    hessian = json.loads((tmp_path / 'diagnostics' / 'hessian_eigenvalue.json').read_text())
    assert len(hessian['history']) == 2 and all(math.isfinite(h['eigenvalue']) for h in hessian['history'])
    assert (tmp_path / 'diagnostics' / 'hessian_eigenvalue.png').exists() and 'genotype_pt' in r
    for t in ('normal', 'reduce'):  # every chosen op is one its edge offered
        offered = {op for ops in get_space(space).edges(t) for op in ops}
        assert {op for op, _ in r['genotype'][t]} <= offered


def test_cli_stacvs_end_to_end_with_diagnostics_per_stage(tmp_path, monkeypatch):
    import stacvs.diagnostics
    built, make = [], stacvs.diagnostics.make_diagnostics
    monkeypatch.setattr(stacvs.diagnostics, 'make_diagnostics', lambda *a, **kw: built.append(a) or make(*a, **kw))
    r = main(['search', '--method', 'stacvs', *TINY_ARGS, '--layers', '3', '--stage2-layers', '3',
              '--out', str(tmp_path), '--diagnostics', 'node_variance'])
    assert r['method'] == 'stacvs'
    assert len(built) == 2  # once per stage: the names are checked without building instruments
    for stage in ('stage1', 'stage2'):
        assert (tmp_path / stage / 'diagnostics' / 'node_variance.png').exists()


def test_named_representatives_make_the_stage1_space(tmp_path):
    r = run_method('stacnas', layers=2, stage2_layers=2, representatives='avg_pool_3x3,sep_conv_5x5',
                   out=str(tmp_path), **TINY)
    ops = set(r['stage1_space']['normal'][0])
    assert ops == {'none', 'avg_pool_3x3', 'skip_connect', 'sep_conv_5x5', 'dil_conv_3x3'}


def test_stacnas_default_ranking_keeps_two_preferring_conv_edges_over_an_indifferent_skip_edge():
    "StacNAS stage 2 mixes edges of two and three candidates: the default rule must not favour the narrow skip edge."
    from stacvs.genotypes import derive_genotype
    from stacvs.spaces import SearchSpace
    conv = ('none', 'sep_conv_3x3', 'sep_conv_5x5')
    space = SearchSpace('stage2_toy', [conv, conv, ('none', 'skip_connect'), conv, conv], [('none', 'max_pool_3x3')] * 5,
                        nodes=2)
    alpha = torch.zeros(5, 3)
    alpha[2, :2] = torch.tensor([0.3, 0.3])            # skip edge, no preference: softmax 0.50
    alpha[3] = alpha[4] = torch.tensor([0., 0.6, 0.])  # clear preference for sep_conv_3x3: softmax 0.477
    derive = lambda method: derive_genotype(alpha, torch.zeros(5, 2), space, rule=method_config(method)[0].derive)
    for method in ('stacnas', 'stacvs'):
        assert derive(method).normal[2:4] == (('sep_conv_3x3', 1), ('sep_conv_3x3', 2)), method
    assert derive_genotype(alpha, torch.zeros(5, 2), space, rule='softmax').normal[2] == ('skip_connect', 0)
