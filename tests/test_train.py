"Final-network training: exact resume, protocols, schedules, the loss, non-finite stops, results and seed summaries."
import copy, json, math
from dataclasses import replace
import pytest
import torch
import torch.nn.functional as F
from stacvs.train import (TrainConfig, Trainer, train, train_config, apply_protocol, resolve_protocol, PROTOCOLS,
                          build_network, evaluate, summarize_seeds)
from stacvs.networks import count_parameters
from stacvs.runs import RunDir, NonFiniteLossError



TINY = TrainConfig(genotype='DARTS_V2', dataset='digits', layers=2, channels=4, epochs=3, batch_size=64, cutout=2,
                   fraction=0.2, device='cpu', progress=False)


class Killed(Exception): pass


class KillAfterEpoch:
    def __init__(self, epoch): self.epoch = epoch
    def on_checkpoint(self, trainer):  # after the epoch's checkpoint
        if trainer.epoch == self.epoch: raise Killed


def without_time(records): return [{k: v for k, v in r.items() if k != 'seconds'} for r in records]


@pytest.mark.parametrize('cap', [None, 3])  # 3: epochs stop mid-pass through the data, which resume must continue
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, cap):
    config = replace(TINY, max_steps_per_epoch=cap)
    full = Trainer(replace(config, out=str(tmp_path / 'full'))); full_result = full.run()
    with pytest.raises(Killed):
        Trainer(replace(config, out=str(tmp_path / 'cut')), [KillAfterEpoch(1)]).run()
    assert [r['epoch'] for r in RunDir(tmp_path / 'cut').read_log()] == [1]
    resumed = Trainer(replace(config, out=str(tmp_path / 'cut'), resume=True)); resumed_result = resumed.run()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for key in ('test_acc', 'test_loss', 'train_loss', 'best_test_acc', 'best_epoch', 'epochs'):
        assert resumed_result[key] == full_result[key], key
    assert without_time(RunDir(tmp_path / 'cut').read_log()) == without_time(RunDir(tmp_path / 'full').read_log())


def test_finished_run_resumed_again_does_nothing_and_reports_the_same(tmp_path):
    config = replace(TINY, epochs=1, out=str(tmp_path))
    first = train(config)
    again = train(replace(config, resume=True))
    assert again['test_acc'] == first['test_acc'] and len(RunDir(tmp_path).read_log()) == 1


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    with pytest.raises(Killed):
        Trainer(replace(TINY, out=str(tmp_path)), [KillAfterEpoch(1)]).run()
    with pytest.raises(ValueError, match=r'differs in lr, weight_decay'):
        Trainer(replace(TINY, out=str(tmp_path), resume=True, lr=0.1, weight_decay=0.0)).run()


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    train(replace(TINY, epochs=1, out=str(tmp_path)))
    with pytest.raises(ValueError, match='pass resume=True'):
        train(replace(TINY, epochs=1, out=str(tmp_path)))
    with pytest.raises(ValueError, match='needs the run directory'):
        TrainConfig(dataset='digits', resume=True)


class PoisonInEpoch:
    "Sets the classifier's weights to NaN during epoch 2, as a diverging run would."
    def on_step_end(self, trainer):
        if trainer.epoch == 1: trainer.model.classifier.weight.data.fill_(float('nan'))


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path):
    with pytest.raises(NonFiniteLossError, match='non-finite loss .* epoch 2'):
        Trainer(replace(TINY, out=str(tmp_path)), [PoisonInEpoch()]).run()
    rd = RunDir(tmp_path)
    state = rd.load_checkpoint()
    assert state['epoch'] == 1 and [r['epoch'] for r in rd.read_log()] == [1]
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def test_run_directory_and_result(tmp_path):
    result = train(replace(TINY, epochs=2, out=str(tmp_path)))
    rd = RunDir(tmp_path)
    config = rd.read_config()
    assert config['layers'] == 2 and config['protocol'] == 'base' and config['epochs'] == 2
    assert config['genotype_definition']['normal'][0] == ['sep_conv_3x3', 0] and 'torch' in config['versions']
    log = rd.read_log()
    assert [r['drop_path_prob'] for r in log] == [0.0, 0.2 / 2]
    assert result['test_acc'] == log[-1]['test_acc'] and result['epochs'] == 2
    assert result['best_test_acc'] == max(r['test_acc'] for r in log)
    assert result['best_epoch'] == max(log, key=lambda r: r['test_acc'])['epoch'] and 'test set' in result['best_note']
    net = build_network(TINY)
    assert result['params'] == count_parameters(net) < count_parameters(net, auxiliary=True)
    assert (tmp_path / 'figures' / 'normal.png').exists() and json.loads(rd.result_path.read_text()) == result


def test_learning_rate_schedules_per_epoch():
    cosine = Trainer(replace(TINY, epochs=4, lr=0.1, lr_min=0.01, max_steps_per_epoch=1), [Recorder()])
    cosine.run()
    expected = [0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert cosine.callbacks[0].lrs == pytest.approx(expected)
    exponential = Trainer(replace(TINY, epochs=3, lr=0.1, schedule='exponential', max_steps_per_epoch=1), [Recorder()])
    exponential.run()
    assert exponential.callbacks[0].lrs == pytest.approx([0.1, 0.097, 0.1 * 0.97 ** 2])


class Recorder:
    def __init__(self): self.lrs, self.steps = [], 0
    def on_epoch_end(self, trainer, record): self.lrs.append(record['lr'])
    def on_step_end(self, trainer): self.steps += 1


def test_training_loss_is_main_plus_weighted_auxiliary_with_smoothing():
    config = replace(TINY, label_smoothing=0.1, auxiliary_weight=0.4, drop_path_prob=0.0)
    trainer = Trainer(config)
    x, y = next(iter(trainer.train_loader))
    reference = copy.deepcopy(trainer.model).train()
    logits, aux = reference(x)
    expected = F.cross_entropy(logits, y, label_smoothing=0.1) + 0.4 * F.cross_entropy(aux, y, label_smoothing=0.1)
    loss_times_n, correct = trainer.train_step(x, y).tolist()
    assert loss_times_n / len(y) == pytest.approx(expected.item(), rel=1e-5)
    assert correct == (logits.argmax(1) == y).sum().item()


def test_evaluate_matches_a_direct_computation():
    trainer = Trainer(TINY)
    stats = evaluate(trainer.model, trainer.test_loader, trainer.device)
    trainer.model.eval()
    xs, ys = zip(*trainer.test_loader)
    with torch.no_grad(): logits = trainer.model(torch.cat(xs))[0]
    y = torch.cat(ys)
    assert stats['acc'] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert stats['loss'] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_capped_evaluation_sees_the_same_batches_every_time():
    trainer = Trainer(replace(TINY, max_steps_per_epoch=2))
    first, second = trainer.evaluate_test(), trainer.evaluate_test()
    full = evaluate(trainer.model, trainer.test_loader, trainer.device)
    assert first == second and first != full
    xs, ys = zip(*trainer.test_loader)
    with torch.no_grad(): logits = trainer.model(torch.cat(xs))[0]
    assert full['acc'] == pytest.approx((logits.argmax(1) == torch.cat(ys)).float().mean().item())


def test_max_steps_per_epoch_caps_training_steps():
    recorder = Recorder()
    Trainer(replace(TINY, epochs=2, max_steps_per_epoch=2), [recorder]).run()
    assert recorder.steps == 4


def test_protocol_presets():
    assert (PROTOCOLS['base']['epochs'], PROTOCOLS['aa']['epochs'], PROTOCOLS['imagenet_aa']['epochs']) == (600, 1200, 800)
    base = TrainConfig()
    assert (base.layers, base.channels, base.batch_size, base.lr, base.weight_decay, base.cutout, base.drop_path_prob,
            base.auxiliary_weight, base.schedule, base.autoaugment) == (20, 36, 96, 0.025, 3e-4, 16, 0.2, 0.4, 'cosine', False)
    imagenet = train_config('imagenet')
    assert (imagenet.dataset, imagenet.layers, imagenet.channels, imagenet.epochs, imagenet.batch_size, imagenet.lr,
            imagenet.schedule, imagenet.lr_gamma, imagenet.weight_decay, imagenet.label_smoothing,
            imagenet.cutout) == ('imagenet', 14, 48, 250, 128, 0.1, 'exponential', 0.97, 3e-5, 0.1, 0)
    aa = train_config('imagenet_aa')
    assert aa.autoaugment and aa.se and aa.epochs == 800
    small = train_config('small', dataset='cifar100')
    assert (small.layers, small.channels, small.dataset, small.epochs) == (8, 16, 'cifar100', 600)
    assert TrainConfig(dataset='imagenet').protocol == 'imagenet'


def test_explicit_values_beat_the_protocol_and_switching_protocols():
    assert TrainConfig(protocol='aa', epochs=10).epochs == 10  # as the CLI builds it: --protocol aa --epochs 10
    assert TrainConfig(protocol='aa', epochs=10).autoaugment
    switched = apply_protocol(TrainConfig(epochs=10), 'imagenet')
    assert (switched.protocol, switched.epochs, switched.lr) == ('imagenet', 250, 0.1)
    assert resolve_protocol(TrainConfig(protocol='imagenet', lr=0.05)).lr == 0.05


@pytest.mark.parametrize('kwargs,message', [
    (dict(protocol='cifar_aa'), "unknown training protocol 'cifar_aa'"),
    (dict(schedule='step'), "unknown schedule 'step'"),
    (dict(genotype='NOT_A_GENOTYPE'), 'NOT_A_GENOTYPE'),
    (dict(dataset='tinyimagenet'), "unknown dataset 'tinyimagenet'"),
])
def test_bad_configs_fail_at_once_with_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
    if 'protocol' in kwargs:
        with pytest.raises(ValueError, match='expected one of'):
            train_config(kwargs['protocol'])


def test_summarize_seeds_by_hand():
    s = summarize_seeds([{'test_acc': v} for v in (0.9700, 0.9720, 0.9740, 0.9760)])
    assert s['mean'] == pytest.approx(0.973) and s['n'] == 4 and s['best'] == 0.976
    assert s['std'] == pytest.approx(math.sqrt((0.003 ** 2 + 0.001 ** 2) * 2 / 3))  # sample std (n - 1)
    assert s['values'] == [0.97, 0.972, 0.974, 0.976]
    assert summarize_seeds([0.5], key='ignored') == dict(mean=0.5, std=0.0, n=1, values=[0.5], best=0.5)
    assert summarize_seeds([{'params_m': 3.3}, {'params_m': 3.5}], key='params_m')['mean'] == pytest.approx(3.4)
    with pytest.raises(ValueError, match='no results'):
        summarize_seeds([])


def test_per_cell_genotypes_train_end_to_end_and_are_recorded(tmp_path):
    from stacvs.genotypes import GENOTYPES, genotype_to_dict
    names = ['DARTS_V2', 'VS_DARTS_BEST', 'STACNAS_CIFAR10']
    config = replace(TINY, layers=3, epochs=1, max_steps_per_epoch=2, genotype=names, out=str(tmp_path))
    trainer = Trainer(config)
    assert trainer.model.genotypes == [GENOTYPES[n] for n in names]
    result = trainer.run()
    assert result['genotype'] == [genotype_to_dict(GENOTYPES[n]) for n in names]
    assert 0 <= result['test_acc'] <= 1 and result['epochs'] == 1
    assert RunDir(tmp_path).read_config()['genotype_definition'] == result['genotype']
    assert sorted(p.name for p in (tmp_path / 'figures').iterdir()) == \
        ['cell00_normal.png', 'cell01_reduce.png', 'cell02_reduce.png']  # each cell's own half
    with pytest.raises(ValueError, match='3 per-cell genotypes for a network of 2 cells'):
        replace(config, layers=2)


def test_a_repeated_genotype_list_trains_exactly_like_the_single_genotype():
    config = replace(TINY, epochs=1, max_steps_per_epoch=2)
    single, repeated = train(config), train(replace(config, genotype=['DARTS_V2'] * config.layers))
    assert single['params'] == repeated['params']
    assert single['test_acc'] == repeated['test_acc'] and single['train_loss'] == repeated['train_loss']


def test_trains_the_per_cell_result_of_an_alpha_per_cell_search(tmp_path):
    from stacvs.search import search
    from stacvs.genotypes import genotype_from_dict
    found = search(dataset='digits', channels=4, layers=3, epochs=1, max_steps_per_epoch=2, fraction=0.2,
                   alpha_per_cell=True, device='cpu', progress=False, out=str(tmp_path / 'search'))
    assert isinstance(found['genotype'], list) and len(found['genotype']) == 3
    config = replace(TINY, layers=3, epochs=1, max_steps_per_epoch=2, genotype=str(tmp_path / 'search' / 'result.json'))
    trainer = Trainer(config)
    assert trainer.model.genotypes == [genotype_from_dict(g) for g in found['genotype']]
    assert trainer.run()['genotype'] == found['genotype']
    assert Trainer(replace(config, genotype=found)).model.genotypes == trainer.model.genotypes  # the dict works too
