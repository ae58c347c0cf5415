"VS-DARTS Table 3 as RobustDARTS ran it: the paper profile's resolved searches, and what the table reports."
import pytest
from stacvs.methods import METHOD_PRESETS
from stacvs.paper_values import VSDARTS_TABLE3_METHODS
from stacvs.repro import profile_parameters
from stacvs.protocol import notebook_defaults
from stacvs.vsdarts_table3 import (table3_searches_for, table3_summary, best_over_grid, ROBUSTDARTS_L2_GRID,
                                   ROBUSTDARTS_COLUMNS, TABLE3_METHODS)

ITEM = 'vsdarts_table3'


def parameters(profile):
    "A run's parameters as papermill gives them: the notebook's parameters cell, then the profile's values."
    return {**notebook_defaults(ITEM), **profile_parameters(ITEM, profile)}


def test_the_paper_profile_runs_robustdarts_protocol():
    p = parameters('paper')
    assert p['seeds'] == [0, 1, 2, 3] and p['spaces'] == ['s1', 's2', 's3', 's4']  # best of 4 seeds on S1–S4
    assert p['methods'] == [k for k, _ in VSDARTS_TABLE3_METHODS]  # every column, in the table's order
    plan = table3_searches_for(p)
    for dataset in p['datasets']:
        for space in p['spaces']:
            configs = [(s, s.config(dataset=dataset, space=space)) for s in plan]
            for s, c in configs:
                assert c.second_order == (s.column in ROBUSTDARTS_COLUMNS), (s.name, dataset, space)
                assert (c.dataset, c.space, c.fraction, c.max_steps_per_epoch) == (dataset, space, 1.0, None)
            assert sorted(c.w_weight_decay for s, c in configs if s.column == 'r_darts_l2') == list(ROBUSTDARTS_L2_GRID)
    by_column = {}
    for s in plan: by_column.setdefault(s.column, []).append(s)
    assert len(by_column['r_darts_l2']) == 5 and len({s.name for s in plan}) == len(plan)  # one run folder each
    darts = by_column['darts'][0].config(dataset='cifar10', space='s1')
    assert (darts.layers, darts.channels, darts.epochs, darts.batch_size, darts.w_weight_decay) == (8, 16, 50, 64, 3e-4)
    assert [s.method for s in by_column['darts_es'] + by_column['darts_ada']] == ['darts_es', 'darts_ada']
    pr = by_column['pr_darts'][0].config(dataset='cifar10', space='s1')  # VS-DARTS †: PR-DARTS's own settings
    assert (pr.layers, pr.channels, pr.epochs, pr.batch_size, pr.derive) == (6, 16, 200, 250, 'pr_darts')
    pt = by_column['darts_pt'][0]
    assert (pt.method, pt.genotype_key, pt.oneshot_pt) == ('darts_pt', 'genotype', False)  # progressive, as published
    vs = by_column['vs_darts'][0].config(dataset='cifar10', space='s1')
    assert (vs.larc, vs.batch_size, vs.epochs, vs.layers) == (True, 96, 50, 8)


def test_every_column_maps_to_a_registered_method():
    assert list(TABLE3_METHODS) == [k for k, _ in VSDARTS_TABLE3_METHODS]
    registered = set(METHOD_PRESETS.names())
    for profile in ('smoke', 'quick', 'paper'):
        p = parameters(profile)
        plan = table3_searches_for(p)
        assert {s.column for s in plan} == set(p['methods']) == set(TABLE3_METHODS), profile  # no column left out
        assert all(s.method in registered for s in plan), profile
        assert set(profile_parameters(ITEM, profile)) <= set(notebook_defaults(ITEM)), profile  # no stale parameter


def test_short_profiles_run_one_value_of_the_grid_and_stay_second_order():
    for profile in ('smoke', 'quick'):
        p = parameters(profile)
        assert len(p['l2_grid']) == 1 and p['l2_grid'][0] in ROBUSTDARTS_L2_GRID and p['second_order'] is True
        plan = table3_searches_for(p)
        assert [s.settings['w_weight_decay'] for s in plan if s.column == 'r_darts_l2'] == p['l2_grid']


def test_what_the_table_reports():
    s = table3_summary([3.2, 2.7, 3.0, 2.9], 's3')  # S1–S4: the best of the seeds
    assert (s['reported'], s['value'], s['n']) == ('best', 2.7, 4) and s['mean'] == pytest.approx(2.95)
    d = table3_summary([2.6, 2.4, 2.5], 'darts')  # the DARTS space: mean ± std, and the best
    assert d['reported'] == 'mean' and d['value'] == pytest.approx(2.5) and d['std'] == pytest.approx(0.1)
    assert d['best'] == 2.4
    g = best_over_grid({3e-4: [3.9, 3.4], 8.1e-3: [3.1, 3.3], 2.43e-2: [3.2]}, 's1')  # R-DARTS(L2): the best value
    assert (g['chosen'], g['value']) == (8.1e-3, 3.1) and set(g['grid']) == {3e-4, 8.1e-3, 2.43e-2}
