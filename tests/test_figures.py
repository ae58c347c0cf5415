"Every figure stacvs draws is readable at paper width: whole epochs, legends beside the data, titles, words as labels."
import json, warnings
from types import SimpleNamespace
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest
from stacvs.figures import (plot_curves, plot_alpha_trajectories, RunFigures, run_label, metric_label, op_styles,
                            series_styles)
from stacvs.runs import RunDir
from stacvs.spaces import get_space, space_to_dict
from stacvs.diagnostics import (plot_node_variance, plot_none_weight, plot_grad_norm, plot_edge_statistics,
                                plot_hessian_eigenvalue, NodeVariance, DiagnosticPlots)
from stacvs.grouping import plot_correlation, PAPER_TABLE6
from stacvs.confusion import plot_confusion_table, PAPER_TABLE1, closest_depth
from stacvs.discretization import plot_beta_vs_accuracy
from stacvs.experiments import plot_seed_spread, plot_skips_vs_depth, plot_alpha_vs_accuracy
from stacvs.genotypes import plot_cell
from stacvs.report import plot_paper_vs_measured

EPOCHS = [1, 2, 3]
DARTS = get_space('darts')
CONFIG = dict(kind='search', method='darts', dataset='digits', layers=3, channels=4, epochs=3, seed=0,
              space_definition=space_to_dict(DARTS))


def search_records(epochs=EPOCHS):
    "Epoch records shaped like a DARTS search's log (α drifting on edge 0)."
    rng = np.random.default_rng(0)
    alpha = lambda t, e: [[[0.2 * e * (i == 1) + float(rng.normal(0, 0.01)) for i in range(len(ops))]
                           for ops in DARTS.edges(t)]]
    return [dict(epoch=e, lr=0.025, train_loss=2.3 - 0.1 * e, train_acc=0.1 * e, valid_loss=2.4 - 0.1 * e,
                 valid_acc=0.08 * e, alpha_normal=alpha('normal', e), alpha_reduce=alpha('reduce', e)) for e in epochs]


def write_search(path) -> RunDir:
    rd = RunDir(path)
    rd.write_config(CONFIG)
    for r in search_records(): rd.log(r)
    return rd


@pytest.fixture
def search_dir(tmp_path): return write_search(tmp_path / 'run')


def diagnostics_histories():
    ops = list(DARTS.normal[0])
    return dict(
        node_variance=dict(cell_types=['normal', 'reduce', 'normal'],
                           history=[dict(epoch=e, variance=[[1 - 1e-6 * (n + e) for n in range(4)]] * 3) for e in EPOCHS]),
        none_weight=[dict(epoch=e, beta_none={t: [0.12 + 0.01 * e * n for n in range(4)] for t in ('normal', 'reduce')},
                          mixing_none={t: [0.3] * 4 for t in ('normal', 'reduce')}) for e in EPOCHS],
        grad_norm=dict(op='sep_conv_3x3', history=[dict(epoch=e, grad_norm={t: [0.1 * e + 0.01 * k for k in range(14)]
                                                                             for t in ('normal', 'reduce')}) for e in EPOCHS]),
        edge_statistics=dict(cell=0, edge=0, history=[dict(epoch=e, ops=ops, ratio=1 + 0.1 * e,
                                                            covariance=np.full((8, 8), 0.1 * e).tolist()) for e in EPOCHS]),
        hessian=[dict(epoch=e, eigenvalue=0.1 * e) for e in EPOCHS[:-1]] + [dict(epoch=3, eigenvalue=0.4, stopped=True,
                                                                                 alpha_from_epoch=1)])


def all_figures(run_dir):
    "Every plot function of the library, drawn from tiny inputs: name → figure."
    h = diagnostics_histories()
    table = [dict(role='final', layers=3, zeta_per_param=2e-7), dict(role='search', stage=1, layers=5, zeta_per_param=1e-7),
             dict(role='search', stage=1, layers=8, zeta_per_param=3e-7)]
    closest_depth(table)
    ops = list(DARTS.normal[0])
    rows = [dict(method='darts', depth=d, seed=s, skips_normal=d // 4 + s, skips_reduce=s) for d in (5, 8) for s in (0, 1)]
    joined = [dict(op=op, alpha=a, test_acc=acc) for op, a, acc in (('a', 0.1, 0.9), ('b', 0.3, 0.95), ('c', 0.2, 0.8))]
    return dict(
        curves=plot_curves(run_dir.path), alpha_normal=plot_alpha_trajectories(run_dir.path),
        alpha_reduce=plot_alpha_trajectories(run_dir.path, 'reduce'),
        node_variance=plot_node_variance(h['node_variance']), none_weight=plot_none_weight(h['none_weight']),
        none_weight_bars=plot_none_weight(h['none_weight'], epoch=-1), grad_norm=plot_grad_norm(h['grad_norm']),
        edge_statistics=plot_edge_statistics(h['edge_statistics']), hessian=plot_hessian_eigenvalue(h['hessian']),
        correlation=plot_correlation(*PAPER_TABLE6), confusion=plot_confusion_table(table),
        confusion_paper=plot_confusion_table(list(PAPER_TABLE1), 'gradient_confusion'),
        beta_vs_accuracy=plot_beta_vs_accuracy(np.linspace(0.1, 0.2, 8), np.linspace(0.3, 0.5, 8), ops),
        seed_spread=plot_seed_spread({'darts': [0.9, 0.95], 'random': [0.91, 0.92]}),
        skips=plot_skips_vs_depth(rows), alpha_vs_accuracy=plot_alpha_vs_accuracy(joined),
        cell=plot_cell('DARTS_V2'),
        paper_vs_measured=plot_paper_vs_measured([dict(item=f'item{i}', paper=i + 1., measured=i + 1.5) for i in range(12)]))


@pytest.fixture(scope='module')
def figures(tmp_path_factory):
    figs = all_figures(write_search(tmp_path_factory.mktemp('figures') / 'run'))
    for fig in figs.values(): fig.canvas.draw()
    yield figs
    plt.close('all')


def visible_ticks(ax, axis='x'):
    lo, hi = sorted(getattr(ax, f'get_{axis}lim')())
    return [t for t in getattr(ax, f'get_{axis}ticks')() if lo - 1e-9 <= t <= hi + 1e-9]


def titles(fig):
    return [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]


def test_every_plot_draws_a_titled_figure(figures):
    for name, fig in figures.items():
        assert any(t.strip() for t in titles(fig)), name


def test_epoch_axes_tick_whole_epochs_only(figures):
    checked = 0
    for name, fig in figures.items():
        for ax in fig.axes:
            if ax.get_xlabel() == 'epoch' and ax.axison:
                ticks = visible_ticks(ax)
                assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
                checked += 1
    assert checked >= 8  # curves, α, and every diagnostic over epochs


def test_legends_lie_outside_the_data(figures):
    checked = 0
    for name, fig in figures.items():
        data_axes = [ax for ax in fig.axes if ax.axison and (ax.lines or ax.collections or ax.patches)]
        for legend in [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends:
            box = legend.get_window_extent()
            for ax in data_axes:
                assert not box.shrunk(0.98, 0.98).overlaps(ax.get_window_extent()), (name, ax.get_title())
            checked += 1
    assert checked >= 10


def test_axis_labels_are_words_not_code_names(figures):
    for name, fig in figures.items():
        for ax in fig.axes:
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert '_' not in label.replace('$', ''), (name, label)  # mathtext subscripts aside


def test_no_offset_on_a_variance_at_one(figures):
    ax = figures['node_variance'].axes[0]
    assert ax.yaxis.get_offset_text().get_text() == ''  # never 1e-6+9.9999e-1
    assert ax.get_ylim()[1] - ax.get_ylim()[0] >= 0.1  # 1 − 10⁻⁶ is drawn as flat at 1


def test_alpha_trajectories_have_one_panel_per_edge_and_the_run_in_the_title(figures):
    fig = figures['alpha_normal']
    assert len([ax for ax in fig.axes if ax.lines]) == 14
    assert fig.get_suptitle() == ('softmax(α) per edge of the normal cell\n'
                                  'darts search on digits: 3 cells × 4 channels, 3 epochs, seed 0 [run]')
    line = next(l for l in fig.axes[0].lines if l.get_label() == 'max_pool_3x3')
    assert line.get_ydata()[-1] > line.get_ydata()[0]  # α of op 1 on edge 0 grows


def test_colours_separate_every_op_and_28_pairs():
    styles = op_styles(DARTS.normal[0])
    assert len({(s['color'], s['ls']) for s in styles.values()}) == 8
    assert len({(s['color'], s['ls']) for s in series_styles(28)}) == 28


def test_labels_and_titles_in_words():
    assert run_label(dict(CONFIG, method='vsdarts')) == 'vsdarts search on digits: 3 cells × 4 channels, 3 epochs, seed 0'
    assert metric_label('top1_error') == 'top-1 error' and metric_label('test_acc') == 'test accuracy'
    fig = plot_cell('DARTS_V2', 'reduce', subtitle='a run')
    assert fig.axes[0].get_title() == 'DARTS_V2: reduction cell\na run'
    plt.close(fig)


def test_run_figures_writes_curves_and_alpha_for_a_search_and_nothing_for_one_epoch(tmp_path, search_dir):
    search = SimpleNamespace(run_dir=search_dir, model=SimpleNamespace(alphas=lambda: []))
    RunFigures().on_end(search, {})
    assert sorted(p.name for p in (search_dir.path / 'figures').iterdir()) == ['alpha_normal.png', 'alpha_reduce.png',
                                                                              'curves.png']
    one = RunDir(tmp_path / 'one'); one.write_config(CONFIG); one.log(search_records([1])[0])
    RunFigures().on_end(SimpleNamespace(run_dir=one, model=None), {})
    assert not (one.path / 'figures').exists()  # a curve of one point says nothing
    train = RunDir(tmp_path / 'train'); train.write_config(dict(kind='train', dataset='digits'))
    for e in EPOCHS: train.log(dict(epoch=e, train_loss=1., train_acc=0.5, test_loss=1., test_acc=0.5))
    RunFigures().on_end(SimpleNamespace(run_dir=train, model=object()), {})
    assert [p.name for p in (train.path / 'figures').iterdir()] == ['curves.png']


def test_a_figure_that_fails_warns_and_leaves_the_run_alone(tmp_path):
    rd = RunDir(tmp_path / 'run'); rd.write_config(CONFIG)
    for e in EPOCHS: rd.log(dict(epoch=e, train_loss=1., train_acc=0.5, alpha_normal=[[[0.]]]))  # α of no known cell
    with pytest.warns(UserWarning) as caught:
        RunFigures().on_end(SimpleNamespace(run_dir=rd, model=SimpleNamespace(alphas=lambda: [])), {})
    assert [str(w.message).split(' of ')[0] for w in caught] == ['stacvs: figure alpha_normal.png',
                                                                 'stacvs: figure alpha_reduce.png']
    assert 'does not fit the space' in str(caught[0].message)
    assert (rd.path / 'figures' / 'curves.png').exists()


def test_diagnostic_plots_name_the_run(tmp_path, search_dir):
    inst = NodeVariance()
    inst.history, inst.cell_types, inst.every = diagnostics_histories()['node_variance']['history'], ['normal'] * 3, 1
    (search_dir.path / 'diagnostics').mkdir()
    shown = {}
    real = plt.Figure.savefig
    def keep(fig, *args, **kwargs): shown['title'] = fig.get_suptitle(); return real(fig, *args, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, 'savefig', keep)
        DiagnosticPlots([inst]).on_end(SimpleNamespace(run_dir=search_dir), {})
    assert (search_dir.path / 'diagnostics' / 'node_variance.png').exists()
    assert shown['title'].endswith('darts search on digits: 3 cells × 4 channels, 3 epochs, seed 0 [run]')
