"DARTS-PT's progressive projection (`stacvs.projection`, the `darts_pt` method): order, decisions, training, resume, CLI."
import json, warnings
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import stacvs.projection  # registers the `darts-pt` pipeline and the `darts_pt` method
from stacvs.cells import Supernet, CELL_TYPES
from stacvs.cli import main
from stacvs.data import search_loaders
from stacvs.diagnostics import evaluation_batches, make_diagnostics
from stacvs.discretization import edited_mixing_weights, without_edge, PTOneShotSelection
from stacvs.evaluation import preserved
from stacvs.methods import run_method
from stacvs.spaces import SearchSpace, edge_inputs, space_to_dict
from stacvs.projection import (ProjectionState, projection_order, project_node, projection_metrics, scoring,
                               choose_op, choose_edge_to_drop)

S3 = dict(dataset='digits', space='s3', layers=3, channels=4, epochs=1, batch_size=16, max_steps_per_epoch=2,
          fraction=0.5, proj_intv=1, proj_max_batches=1, progress=False, quiet=True)
TINY_SPACE = SearchSpace.uniform('pt_tiny', ('none', 'skip_connect', 'sep_conv_3x3'), nodes=2)  # 5 edges, 1 node
TINY = dict(S3, space=TINY_SPACE)


class Snapshots:
    "Weights and α at each projection."
    def __init__(self): self.taken = []
    def on_projection(self, projection, record):
        m = projection.search.model
        self.taken.append((torch.cat([p.detach().flatten() for p in m.weights()]),
                           torch.cat([a.detach().flatten() for a in m.alphas()])))


class Stop:
    "Raises KeyboardInterrupt (as Ctrl-C would) after a search epoch's checkpoint or after a projection."
    def __init__(self, epoch=None, projection=None): self.epoch, self.projection = epoch, projection
    def on_checkpoint(self, search):
        if search.epoch == self.epoch: raise KeyboardInterrupt
    def on_projection(self, projection, record):
        if record['index'] == self.projection: raise KeyboardInterrupt


def _decisions(result):
    return [{t: r[t] for t in CELL_TYPES} | dict(kind=r['kind'], epoch=r['epoch']) for r in result['projections']]


def test_fourteen_op_projections_per_cell_type_in_seeded_order_with_training_between_and_two_inputs_per_node():
    snaps = Snapshots()
    result = run_method('darts_pt', callbacks=lambda: [snaps], proj_order_seed=7, **S3)
    d = result['projections']
    assert [r['kind'] for r in d] == ['op'] * 14 + ['topology'] * 3
    assert [r['epoch'] for r in d] == list(range(17))  # one projection per tuning epoch (proj_intv 1), 17 epochs
    rng = np.random.default_rng(7)
    order = {t: rng.permutation(14).tolist() for t in CELL_TYPES}
    nodes = {t: (rng.permutation(3) + 1).tolist() for t in CELL_TYPES}
    for t in CELL_TYPES:
        assert [r[t]['edge'] for r in d[:14]] == order[t] and sorted(order[t]) == list(range(14))
        assert [r[t]['node'] for r in d[14:]] == nodes[t]
        assert all(r[t]['ops'] == ['skip_connect', 'sep_conv_3x3'] for r in d[:14])  # `none` is never a candidate
        assert all(r[t]['op'] == r[t]['ops'][int(np.argmin(r[t]['acc']))] for r in d[:14])
    assert len(snaps.taken) == 17
    for (w0, a0), (w1, a1) in zip(snaps.taken, snaps.taken[1:]):  # the supernet trains between projections
        assert not torch.equal(w0, w1) and not torch.equal(a0, a1)
    inputs = edge_inputs(4)
    for t in CELL_TYPES:
        g = result['genotype'][t]
        assert len(g) == 8  # two (op, input) pairs for each of the four nodes
        kept = {0: [0, 1], **{r[t]['node']: r[t]['kept'] for r in d[14:]}}
        ops = {r[t]['edge']: r[t]['op'] for r in d[:14]}
        assert g == [[ops[e], inputs[e][1]] for n in range(4) for e in kept[n]]
        assert all(len(set(kept[n])) == 2 and all(inputs[e][0] == n for e in kept[n]) for n in range(4))
    cost = result['cost']
    assert cost['tuning_epochs'] == 17 and cost['search_epochs'] == 1
    assert cost['evaluations'] == dict(op=2 * 14 * 2, edge=2 * (3 + (4 + 3) + (5 + 4 + 3)))
    assert cost['extra_seconds_ratio'] > 0


def test_resume_after_interruptions_in_search_and_projection_gives_the_same_result(tmp_path):
    settings = dict(TINY, epochs=2)
    whole = run_method('darts_pt', out=str(tmp_path / 'whole'), **settings)
    out = str(tmp_path / 'cut')
    with pytest.raises(KeyboardInterrupt):  # during the search, after epoch 1's checkpoint
        run_method('darts_pt', callbacks=lambda: [Stop(epoch=1)], out=out, **settings)
    assert not (tmp_path / 'cut' / 'projection').exists()
    with pytest.raises(KeyboardInterrupt):  # during the projection, after the second projection's checkpoint
        run_method('darts_pt', callbacks=lambda: [Stop(projection=2)], out=out, resume=True, **settings)
    log = (tmp_path / 'cut' / 'projection' / 'log.jsonl').read_text().splitlines()
    assert [json.loads(line)['epoch'] for line in log] == [1]
    resumed = run_method('darts_pt', out=out, resume=True, **settings)
    assert _decisions(resumed) == _decisions(whole)  # the same decisions, with the same accuracies and losses
    assert resumed['genotype'] == whole['genotype'] and resumed['final'] == whole['final']
    assert json.loads((tmp_path / 'cut' / 'result.json').read_text())['genotype'] == whole['genotype']
    assert len((tmp_path / 'cut' / 'projection' / 'log.jsonl').read_text().splitlines()) == 6  # 5 · 1 + 1 epochs
    again = run_method('darts_pt', out=out, resume=True, **settings)  # finished: read back
    assert again['genotype'] == whole['genotype']


def test_projecting_a_finished_search_equals_searching_first(tmp_path):
    base = {k: v for k, v in TINY.items() if not k.startswith('proj_')}
    run_method('darts', out=str(tmp_path / 'darts'), **base)
    own = run_method('darts_pt', **TINY)
    reused = run_method('darts_pt', out=str(tmp_path / 'pt'), proj_from=str(tmp_path / 'darts'), **TINY)
    assert _decisions(reused) == _decisions(own) and reused['genotype'] == own['genotype']
    assert not (tmp_path / 'pt' / 'search').exists() and reused['searched_in'] == str(tmp_path / 'darts')
    with pytest.raises(ValueError, match=r"--proj-from .*other settings \(w_weight_decay: 0\.0003 there, 0\.001 here"):
        run_method('darts_pt', proj_from=str(tmp_path / 'darts'), **dict(TINY, w_weight_decay=1e-3))
    with pytest.raises(ValueError, match='holds no finished search'):
        run_method('darts_pt', proj_from=str(tmp_path / 'nothing'), **TINY)


def test_decision_rules_and_scores_match_direct_computations():
    s = [dict(acc=.5, loss=1.), dict(acc=.25, loss=2.), dict(acc=.25, loss=2.), dict(acc=.75, loss=.5),
         dict(acc=.75, loss=.5)]
    assert (choose_op(s), choose_op(s, 'loss')) == (1, 1)  # removal hurts most: first of ties
    assert (choose_edge_to_drop(s), choose_edge_to_drop(s, 'loss')) == (4, 4)  # hurts least: last of ties
    torch.manual_seed(0)
    model = Supernet(4, 10, 3, 'darts_small', in_channels=1, alpha_init_scale=1.)
    _, valid = search_loaders('digits', batch_size=16, fraction=0.2, seed=0)
    batches = evaluation_batches(valid, 2)
    with scoring(model): r = projection_metrics(model, batches)
    with preserved(model, train_mode=True, seed=0), torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches]); y = torch.cat([y for _, y in batches])
    assert r['acc'] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert r['loss'] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    # topology: by default an edge dropped from the node stays dropped; the code's way scores with it back in
    for official in (False, True):
        state = ProjectionState(*projection_order(model.space, 0))
        rec = project_node(model, batches, state, 'normal', 3, official=official)  # five inputs, three rounds
        assert [len(x['edges']) for x in rec['rounds']] == [5, 4, 3] and len(rec['kept']) == 2
        first, second = rec['rounds'][:2]
        dropped = [first['dropped']] if not official else []
        e = second['edges'][0]
        with edited_mixing_weights(model, {('normal', x): without_edge() for x in dropped + [e]}), scoring(model):
            assert second['acc'][0] == pytest.approx(projection_metrics(model, batches)['acc'])
        assert first['dropped'] == first['edges'][choose_edge_to_drop([dict(acc=a) for a in first['acc']])]


def test_cli_runs_darts_pt_and_refuses_bad_settings_before_writing(tmp_path, capsys):
    space = tmp_path / 'tiny_space.json'
    space.write_text(json.dumps(space_to_dict(TINY_SPACE)))
    args = ['--import', 'stacvs.projection', 'search', '--method', 'darts_pt', '--dataset', 'digits', '--space',
            str(space), '--layers', '3', '--channels', '4', '--epochs', '1', '--batch-size', '16',
            '--max-steps-per-epoch', '2', '--proj-intv', '1', '--proj-max-batches', '1', '--quiet']
    out = tmp_path / 'run'
    result = main(args + ['--out', str(out)])
    saved = json.loads((out / 'result.json').read_text())
    assert saved['genotype'] == result['genotype'] and result['method'] == 'darts_pt'
    assert [r['kind'] for r in saved['projections']] == ['op'] * 5 + ['topology']
    assert json.loads((out / 'config.json').read_text())['proj_intv'] == 1
    assert {'search', 'projection', 'normal.png', 'reduce.png'} <= {p.name for p in out.iterdir()}
    assert 'darts_pt search finished' in capsys.readouterr().out
    assert main(['search', '--out', str(out), '--resume'])['genotype'] == result['genotype']  # finished: read back
    capsys.readouterr()
    for bad, message in ((['--proj-intv', '0'], '--proj-intv must be a whole number ≥ 1, got 0'),
                         (['--proj-crit', 'drop'], "--proj-crit: unknown projection criterion 'drop'")):
        with pytest.raises(SystemExit) as e: main(args + bad + ['--out', str(tmp_path / 'bad')])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1 and message in err
    with pytest.raises(SystemExit) as e:
        main(['search', '--method', 'darts', '--proj-intv', '2', '--out', str(tmp_path / 'bad')])
    assert e.value.code == 2 and "only apply to the darts-pt methods ['darts_pt']" in capsys.readouterr().err
    assert not (tmp_path / 'bad').exists()


def test_the_one_shot_proxy_keeps_its_old_names_with_a_warning_naming_the_new_ones():
    assert type(make_diagnostics(['pt_oneshot'])[0]) is PTOneShotSelection
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        old = make_diagnostics(['pt_selection'])[0]
    assert isinstance(old, PTOneShotSelection) and old.name == 'pt_selection'
    assert old.result_keys == ('genotype_pt_oneshot', 'genotype_pt')
    assert caught[0].category is DeprecationWarning and "'pt_oneshot'" in str(caught[0].message)
