"Under torchrun, K processes at global batch B take exactly the steps one process takes at batch B (gloo on CPU)."
import json, os, subprocess, sys
from dataclasses import replace
from pathlib import Path
import pytest
import torch
from stacvs.distributed import run_local_processes
from stacvs.search import Search, SearchConfig
from stacvs.train import Trainer, TrainConfig

SEARCH = SearchConfig(dataset='digits', layers=3, channels=4, batch_size=16, fraction=0.1, epochs=2,
                      max_steps_per_epoch=2, progress=False, space='darts_small')


class _Records:
    def __init__(self): self.records = []
    def on_epoch_end(self, search, record):
        self.records.append({k: v for k, v in record.items() if isinstance(v, float)})


def _search(config: SearchConfig) -> dict:
    "Model state (weights, α, BN statistics) and the epoch records after a short search."
    records = _Records()
    search = Search(config, [records])
    search.run()
    return dict(state={k: v.detach().clone() for k, v in search.model.state_dict().items()}, records=records.records,
                world=search.dist.world_size)


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.parametrize('optimization,second_order', [('one-level', False), ('bilevel', False), ('bilevel', True)])
def test_two_processes_search_like_one_process_at_the_same_global_batch(optimization, second_order):
    config = replace(SEARCH, optimization=optimization, second_order=second_order)
    single = _search(config)
    ranks = run_local_processes(_search, 2, config)
    assert [r['world'] for r in ranks] == [2, 2] and single['world'] == 1
    assert _max_difference(ranks[0]['state'], ranks[1]['state']) == 0  # the ranks stay identical
    for k, v in single['state'].items():
        torch.testing.assert_close(ranks[0]['state'][k], v, rtol=1e-4, atol=1e-5, msg=f"{k} differs")
    for mine, theirs in zip(ranks[0]['records'], single['records']):
        assert mine.keys() == theirs.keys()
        for k in mine.keys() - {'seconds'}: assert mine[k] == pytest.approx(theirs[k], rel=1e-4, abs=1e-6), k


def test_per_rank_batchnorm_is_a_different_computation():
    "With sync_bn=False (the original multi-GPU code) each rank normalizes with its own rows: the results differ."
    single, synced = _search(SEARCH), run_local_processes(_search, 2, SEARCH)[0]
    per_rank = run_local_processes(_search, 2, replace(SEARCH, sync_bn=False))[0]
    assert _max_difference(per_rank['state'], single['state']) > 100 * _max_difference(synced['state'], single['state'])


TRAIN = TrainConfig(genotype='DARTS_V2', dataset='digits', layers=2, channels=4, epochs=2, batch_size=32, cutout=2,
                    fraction=0.1, auxiliary=True, drop_path_prob=0.0, max_steps_per_epoch=3, device='cpu',
                    progress=False)


def _train(config: TrainConfig) -> dict:
    trainer = Trainer(config)
    result = trainer.run()
    return dict(state={k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                test_acc=result['test_acc'], train_loss=result['train_loss'])


def test_two_processes_train_like_one_process_at_the_same_global_batch():
    "DDP with global-batch BatchNorm (drop-path off: its masks are drawn per rank)."
    single, ranks = _train(TRAIN), run_local_processes(_train, 2, TRAIN)
    assert _max_difference(ranks[0]['state'], ranks[1]['state']) == 0
    for k, v in single['state'].items():
        torch.testing.assert_close(ranks[0]['state'][k], v, rtol=1e-4, atol=1e-5, msg=f"{k} differs")
    assert ranks[0]['test_acc'] == single['test_acc']
    assert ranks[0]['train_loss'] == pytest.approx(single['train_loss'], rel=1e-5)


def test_torchrun_cli_search_writes_one_run_like_a_single_process(tmp_path):
    "`torchrun --no-python stacvs search ...`: rank 0 writes the run; α equals the single-process run's."
    args = ['search', '--dataset', 'digits', '--layers', '3', '--channels', '4', '--batch-size', '16', '--fraction',
            '0.1', '--epochs', '1', '--max-steps-per-epoch', '2', '--space', 'darts_small', '--no-progress']
    stacvs = str(Path(sys.executable).parent / 'stacvs')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    subprocess.run([stacvs, *args, '--out', str(tmp_path / 'single')], check=True, env=env, capture_output=True)
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           '--no-python', stacvs, *args, '--out', str(tmp_path / 'two')], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    single, two = (json.loads((tmp_path / run / 'result.json').read_text()) for run in ('single', 'two'))
    assert json.loads((tmp_path / 'two' / 'config.json').read_text())['dataset'] == 'digits'
    assert two['genotype'] == single['genotype']
    for key in ('alpha_normal', 'alpha_reduce'):
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(single[key]), rtol=1e-4, atol=1e-7)
