"""StacNAS as published: appendix D's depth matching (both stages, budget recorded, degenerate ζ refused or warned) and
appendix B's correlation supernet with the hierarchical and the official KMeans grouping."""
import json, warnings
from dataclasses import replace
import pytest
from stacvs import methods
from stacvs.cli import main
from stacvs.confusion import DegenerateConfusionWarning
from stacvs.grouping import DARTS_GROUPS, group_operations
from stacvs.methods import (method_config, run_method, choose_depth, confusion_budget, correlation_search_config,
                            correlation_protocol, TwoStageConfig)
from stacvs.paper_values import PAPER_TABLE6, read_item
from stacvs.search import SearchConfig
from stacvs.spaces import SearchSpace, get_space

TINY = dict(dataset='digits', channels=4, epochs=1, batch_size=32, fraction=0.3, max_steps_per_epoch=2, progress=False)
TINY_ARGS = ['--dataset', 'digits', '--channels', '4', '--epochs', '1', '--batch-size', '32', '--fraction', '0.3',
             '--max-steps-per-epoch', '2', '--no-progress']
TOY_SPACE = SearchSpace.uniform('toy_depth', ('none', 'skip_connect', 'sep_conv_3x3'), nodes=2)
ZERO_TABLE = ("stage-1 depth matching: gradient confusion is 0 for every network (3 rows: the gradients of every draw "
              "agree), so the table cannot rank the depths; 2 cells taken without a measurement: train the networks "
              "longer (--confusion-epochs) or give the depth (--layers N)")


def test_a_degenerate_confusion_table_is_one_recorded_warning_line_or_an_error(tmp_path, monkeypatch):
    "ζ = 0 everywhere used to pick the first candidate silently; now it is a warning (recorded) or, if asked, an error."
    monkeypatch.setattr(methods, 'confusion_statistic', lambda *a, **k: dict(zeta_mean=0.0, zeta_per_param=0.0, params=1))
    config = SearchConfig(**dict(TINY, layers='auto'))
    stages = TwoStageConfig(final_layers=2, final_channels=4, depth_candidates=(2, 3), confusion_steps=1,
                            confusion_iterations=2)
    with pytest.warns(DegenerateConfusionWarning) as caught:
        depth, record = choose_depth(config, stages, TOY_SPACE, tmp_path)
    assert [str(w.message) for w in caught] == [ZERO_TABLE] and record['warning'] == ZERO_TABLE and depth == 2
    assert json.loads((tmp_path / 'confusion' / 'depth.json').read_text())['warning'] == ZERO_TABLE
    with pytest.raises(ValueError) as refused:  # the trained networks are read back, the table refused
        choose_depth(config, replace(stages, on_degenerate="error"), TOY_SPACE, tmp_path)
    assert str(refused.value) == ZERO_TABLE


def test_layers_auto_records_both_stages_depths_with_the_training_budget(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DegenerateConfusionWarning)  # tiny networks: ζ may well be 0
        r = run_method('stacnas', layers='auto', depth_candidates=(2, 3), stage2_depth_candidates=(2, 3), final_layers=3,
                       final_channels=4, confusion_steps=2, confusion_iterations=2, out=str(tmp_path), **TINY)
    stage1, stage2 = r['confusion']['stage1'], r['confusion']['stage2']
    assert (r['stage1_layers'], r['stage2_layers']) == (stage1['depth'], stage2['depth'])
    for stage, record in ((1, stage1), (2, stage2)):
        assert record['stage'] == stage and record['depth'] in (2, 3) and record['candidates'] == [2, 3]
        assert (record['training'], record['epochs'], record['max_steps_per_epoch']) == ('2 steps', 1, 2)
        assert record['protocol'] == 'reduced: 2 steps, 30% of the images, 2 draws'
        assert [(row['role'], row['layers']) for row in record['table']] == [('final', 3), ('search', 2), ('search', 3)]
        assert (record['warning'] is None) == (record['warning'] not in r['warnings'])
    assert stage2['table'][0] == stage1['table'][0]  # one final network, measured once
    assert stage1['table'][0]['genotype'] == 'STACNAS_CIFAR10' and stage1['table'][0]['channels'] == 4
    saved = json.loads((tmp_path / 'result.json').read_text())
    assert saved['confusion']['stage2']['depth'] == r['stage2_layers']
    assert json.loads((tmp_path / 'confusion' / 'depth_stage2.json').read_text())['depth'] == r['stage2_layers']
    assert json.loads((tmp_path / 'stage2' / 'config.json').read_text())['layers'] == r['stage2_layers']
    assert {p.name for p in (tmp_path / 'confusion').iterdir()} >= {
        'final', 'stage1-2cells', 'stage1-3cells', 'stage2-2cells', 'stage2-3cells', 'confusion.png',
        'confusion_stage2.png'}


def test_appendix_d_is_the_default_budget_and_table1_paper_profile():
    assert confusion_budget(*method_config('stacnas', layers='auto'))['protocol'] == 'appendix D'
    paper = read_item('stacnas_table1')['profiles']['paper']
    config, stages = method_config('stacnas', layers='auto', fraction=paper['fraction'],
                                   max_steps_per_epoch=paper['max_steps_per_epoch'], confusion_epochs=paper['epochs'],
                                   confusion_iterations=paper['iterations'])
    assert confusion_budget(config, stages) == dict(epochs=100, max_steps_per_epoch=None, training='100 epochs',
                                                    iterations=10, protocol='appendix D')
    assert (paper['stage1_depths'], paper['stage2_layers'], paper['final_layers'], paper['final_channels']) == \
        ([14, 17, 20], 20, 20, 36)
    defaults = TwoStageConfig()
    assert (defaults.depth_candidates, defaults.final_genotype, defaults.final_channels) == \
        ((14, 17, 20), 'STACNAS_CIFAR10', 36)


def test_kmeans_and_hierarchical_grouping_give_the_paper_groups_on_table6():
    corr, names = PAPER_TABLE6
    paper = [list(g) for g in DARTS_GROUPS]
    assert group_operations(corr, names) == group_operations(corr, names, method='kmeans') == paper
    assert group_operations(corr, names, n_groups=3, method='kmeans') == paper


@pytest.mark.parametrize('stages', [TwoStageConfig(), None])
def test_correlation_supernet_settings_resolved_for_paper_are_appendix_b(stages):
    "`groups='measured'` with the defaults, and Table 6's paper profile: 14 cells, 100 epochs, all 8 ops, ≥ 10,000 images."
    if stages is not None:
        config, _ = method_config('stacvs', groups='measured')
        layers, epochs, samples = stages.correlation_layers, stages.correlation_epochs, stages.correlation_samples
    else:
        paper = read_item('stacnas_table6')['profiles']['paper']
        config, _ = method_config('stacnas', dataset=paper['dataset'], channels=paper['channels'],
                                  batch_size=paper['batch_size'], max_steps_per_epoch=paper['max_steps_per_epoch'])
        layers, epochs, samples = paper['layers'], paper['epochs'], paper['samples']
    run = correlation_search_config(config, layers, epochs)
    assert (run.layers, run.epochs, run.optimization, run.method) == (14, 100, 'bilevel', 'darts') and samples >= 10000
    assert (run.w_lr, run.w_momentum, run.w_weight_decay, run.channels, run.batch_size) == (0.025, 0.9, 3e-4, 16, 64)
    assert not (run.node_norm or run.larc) and run.relaxation == 'softmax'  # DARTS's, not the method's switches
    assert len(get_space(run.space).ops) == 8
    assert correlation_protocol(run, samples) == 'appendix B'


def test_measured_kmeans_groups_record_their_reduced_protocol(tmp_path):
    r = run_method('stacnas', layers=2, stage2_layers=2, groups='measured', grouping_method='kmeans',
                   correlation_layers=3, correlation_epochs=1, correlation_samples=64, out=str(tmp_path), **TINY)
    grouping = json.loads((tmp_path / 'grouping' / 'groups.json').read_text())
    assert grouping['grouping_method'] == 'kmeans' and grouping['supernet']['layers'] == 3
    assert grouping['protocol'] == ('reduced: 1 epoch, 3 cells, 64 images, 4 channels, batch 32, 30% of the images, '
                                    '≤ 2 steps per epoch')
    supernet = json.loads((tmp_path / 'grouping' / 'supernet' / 'config.json').read_text())
    assert (supernet['method'], supernet['optimization'], supernet['layers']) == ('darts', 'bilevel', 3)
    assert r['grouping']['protocol'] == grouping['protocol']


@pytest.mark.parametrize('argv,message', [
    (['--on-degenerate', 'loud'], "--on-degenerate: unknown on degenerate 'loud'"),
    (['--grouping-method', 'spectral'], "--grouping-method: unknown grouping method 'spectral'"),
    (['--grouping-method', 'kmeans', '--group-threshold', '0.8'], '--group-threshold cuts the hierarchical tree'),
    (['--stage2-depth-candidates', '0'], '--stage2-depth-candidates must be a whole number ≥ 1'),
])
def test_bad_protocol_settings_are_one_line_before_any_file(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(['search', '--method', 'stacnas', '--layers', 'auto', *argv, *TINY_ARGS, '--out', str(tmp_path / 'x')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'x').exists()
