"VS-DARTS Fig. 2 at convergence: the edge fixed one-hot, the supernet fine-tuned with the search's own optimizer, the budget from the parameters."
import torch
import pytest
from stacvs.search import Search, SearchConfig
from stacvs.larc import LARC
from stacvs.diagnostics import evaluation_batches, supernet_accuracy
from stacvs.discretization import (converged_discretization_accuracy, discretization_tuner, tune_to_convergence,
                                   discretization_accuracy, discretization_accuracy_proxy, edited_mixing_weights, only_op)
from stacvs.repro import profile_parameters
from stacvs.protocol import notebook_defaults

TINY = dict(dataset='digits', layers=2, channels=4, epochs=1, max_steps_per_epoch=2, batch_size=16, fraction=0.3,
            space='darts_small', progress=False, quiet=True, device='cpu')


@pytest.fixture(scope='module')
def searches():
    "A trained DARTS search (SGD) and a VS-DARTS one (LARC, node normalization, √β), two steps each."
    torch.set_num_threads(1)
    darts = Search(SearchConfig(**TINY)); darts.run()
    vs = Search(SearchConfig(**TINY, node_norm=True, larc=True, relaxation='sqrt', w_weight_decay=5e-3)); vs.run()
    return dict(darts=darts, vs=vs)


def spy_steps(monkeypatch, edge, cell_type='normal'):
    "Record, at every search step, the tuned supernet and the edge's mixing weights."
    seen, step = [], Search.step
    def spying(self, *args):
        seen.append((self, self.model.mixing_weights(cell_type)[:, edge].detach().clone()))
        return step(self, *args)
    monkeypatch.setattr(Search, 'step', spying)
    return seen


def test_converged_accuracy_fine_tunes_with_the_edge_held_one_hot(searches, monkeypatch):
    search = searches['darts']
    weights_before = [w.detach().clone() for w in search.model.weights()]
    alphas_before = [a.detach().clone() for a in search.model.alphas()]
    seen = spy_steps(monkeypatch, edge=3)
    r = converged_discretization_accuracy(search, edge=3, op='sep_conv_3x3', epochs=2, patience=None, max_batches=1)
    op = search.model.space.edges('normal')[3].index('sep_conv_3x3')
    assert len(seen) == 2 * 2 and r['epochs'] == 2 and not r['converged']  # 2 epochs of max_steps_per_epoch=2 steps
    onehot = torch.zeros_like(seen[0][1]); onehot[:, op] = 1
    assert all(torch.equal(w, onehot) for _, w in seen)  # held one-hot at every step
    tuner = seen[0][0]
    assert tuner is not search and all(t is tuner for t, _ in seen)
    assert any(not torch.equal(a, b) for a, b in zip(tuner.model.weights(), weights_before))  # the weights were tuned
    assert any(not torch.equal(a, b) for a, b in zip(tuner.model.alphas(), alphas_before))  # and α (DARTS-PT's loop)
    # the accuracy is the tuned supernet's, with the edge fixed, on the validation batches
    batches = evaluation_batches(search.valid_loader, 1, search.device)
    with edited_mixing_weights(tuner.model, {('normal', 3): only_op(op)}):
        assert r['accuracy'] == supernet_accuracy(tuner.model, batches, search.config.seed)
    # the search itself is untouched
    assert all(torch.equal(a, b) for a, b in zip(search.model.weights(), weights_before))
    assert all(torch.equal(a, b) for a, b in zip(search.model.alphas(), alphas_before))


def test_the_search_optimizer_setup_is_used_larc_when_the_search_used_it(searches, monkeypatch):
    larc_steps, larc_step = [], LARC.step
    monkeypatch.setattr(LARC, 'step', lambda self, *a, **k: (larc_steps.append(1), larc_step(self, *a, **k))[1])
    vs, darts = searches['vs'], searches['darts']
    r = converged_discretization_accuracy(vs, edge=1, op='max_pool_3x3', epochs=1, patience=None, max_batches=1)
    assert (r['optimizer'], len(larc_steps)) == ('LARC', 2)  # one LARC step per tuning step
    tuner = discretization_tuner(vs, epochs=4, lr_factor=0.1)
    assert isinstance(tuner.w_optimizer, LARC) and tuner.w_optimizer.trust_coefficient == vs.config.larc_trust
    group = tuner.w_optimizer.param_groups[0]
    assert group['lr'] == pytest.approx(0.1 * vs.config.w_lr) and group['weight_decay'] == 5e-3
    assert tuner.scheduler.T_max == 4 and tuner.scheduler.eta_min == vs.config.w_lr_min
    assert (tuner.config.node_norm, tuner.config.relaxation, tuner.config.optimization) == (True, 'sqrt', 'bilevel')
    plain = discretization_tuner(darts, epochs=1)
    assert type(plain.w_optimizer) is torch.optim.SGD and not isinstance(plain.w_optimizer, LARC)
    larc_steps.clear()
    assert converged_discretization_accuracy(darts, 1, 'max_pool_3x3', epochs=1, patience=None,
                                             max_batches=1)['optimizer'] == 'SGD' and not larc_steps


def test_the_budget_comes_from_the_parameters(searches, monkeypatch):
    search = searches['darts']
    seen = spy_steps(monkeypatch, edge=0)
    r = converged_discretization_accuracy(search, 0, 'sep_conv_5x5', epochs=3, patience=None, max_steps_per_epoch=1,
                                          max_batches=1, lr_factor=0.5)
    assert (r['epochs'], len(seen), r['converged']) == (3, 3, False)
    assert r['budget'] == dict(epochs=3, patience=None, tol=1e-3, lr_factor=0.5, max_steps_per_epoch=1, eval_batches=1)
    assert r['lr'] == pytest.approx(0.5 * search.config.w_lr) and [h['epoch'] for h in r['history']] == [1, 2, 3]
    # convergence ends the tuning before the cap: no gain can exceed tol=1, so it stops one epoch after the first
    seen.clear()
    stopped = converged_discretization_accuracy(search, 0, 'sep_conv_5x5', epochs=5, patience=1, tol=1.0,
                                                max_steps_per_epoch=1, max_batches=1)
    assert (stopped['epochs'], stopped['converged'], len(seen)) == (2, True, 2)
    # the same op measured twice gives the same number: each measurement starts from the same state
    again = converged_discretization_accuracy(search, 0, 'sep_conv_5x5', epochs=3, patience=None, max_steps_per_epoch=1,
                                              max_batches=1, lr_factor=0.5)
    assert again['accuracy'] == r['accuracy']
    with pytest.raises(ValueError, match='epochs'): converged_discretization_accuracy(search, 0, 1, epochs=0)


def test_the_fig2_notebook_measures_at_convergence_and_keeps_the_proxy_by_name():
    assert discretization_accuracy is discretization_accuracy_proxy  # the old name: the proxy
    defaults = notebook_defaults('vsdarts_fig2')
    paper = {**defaults, **profile_parameters('vsdarts_fig2', 'paper')}
    assert paper['accuracy_protocol'] == 'converged' and paper['eval_batches'] is None
    assert (paper['tune_epochs'], paper['tune_patience'], paper['tune_lr_factor']) == (140, 5, 0.1)
    for profile in ('smoke', 'quick', 'paper'):
        given = profile_parameters('vsdarts_fig2', profile)
        assert set(given) <= set(defaults), (profile, set(given) - set(defaults))  # no stale parameter
        assert given['accuracy_protocol'] == 'converged'
