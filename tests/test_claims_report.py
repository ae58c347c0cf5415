"Claims as checks, the cpu profile on Fashion-MNIST, and the per-item report (issue 16, items 1–3)."
import gzip, json, struct
from pathlib import Path
import numpy as np
import nbformat
import pytest
from stacvs.cli import main
from stacvs.data import load_arrays, require_dataset, DatasetNotFoundError
from stacvs.paper_values import read_items, item_values
from stacvs.claims import check_claim, evaluate_claim, evaluate_claims, claim_value, lookup
from stacvs.report import item_page

CPU_ITEMS = {'stacnas_table1', 'stacnas_table6', 'stacnas_fig5', 'stacnas_skips_vs_depth', 'stacnas_fig2', 'vsdarts_fig2',
             'vsdarts_fig3', 'vsdarts_fig4', 'vsdarts_fig5', 'vsdarts_fig6', 'vsdarts_table4', 'methods_side_by_side'}


# --- the rules, on hand-made values ------------------------------------------------------------------------------

VALUES = {'zeta.3': 0.3, 'zeta.5': 0.8, 'zeta.8': 2.6, 'sigma': [0.98, 1.0, 1.03],
          'per_run': [dict(method='darts', acc=0.80), dict(method='darts', acc=0.84), dict(method='vsdarts', acc=0.90)],
          'ratio': {'darts': [0.4, 0.3, 0.2]}, 'groups': [['max', 'avg'], ['sep3', 'sep5'], ['skip']],
          'paper_groups': [['avg', 'max'], ['sep5', 'sep3'], ['skip'], ['none']], 'missing': None}


def verdict(values=VALUES, **claim):
    return evaluate_claim(check_claim('toy', dict(claim='a claim', **claim)), values)


@pytest.mark.parametrize('claim, expected', [
    (dict(kind='increasing', keys=['zeta.3', 'zeta.5', 'zeta.8']), ('holds', '0.3 < 0.8 < 2.6')),
    (dict(kind='increasing', keys=['zeta.3', 'zeta.8', 'zeta.5']), ('does not hold', '0.3 < 2.6 > 0.8')),
    (dict(kind='decreasing', keys=['ratio.darts.0', 'ratio.darts.1', 'ratio.darts.-1']), ('holds', '0.4 > 0.3 > 0.2')),
    (dict(kind='less_than', keys=['ratio.darts.-1', 'ratio.darts.0']), ('holds', '0.2 < 0.4')),
    (dict(kind='greater_than', keys=['per_run[method=darts].acc'], than=0.85), ('does not hold', '0.82 < 0.85')),
    (dict(kind='at_least', keys=['zeta.3'], than=0.3), ('holds', '0.3 = 0.3')),
    (dict(kind='at_most', keys=['zeta.8', 'zeta.5']), ('does not hold', '2.6 > 0.8')),
    (dict(kind='within', keys=['sigma.*'], range=[0.9, 1.1]), ('holds', '1 inside [0.9, 1.1]')),
    (dict(kind='within', keys=['zeta.3', 'zeta.5'], range=[0.5, 1]), ('does not hold', '0.3, 0.8 not all inside [0.5, 1]')),
    (dict(kind='closer', keys=['zeta.3', 'zeta.8', 'zeta.5']), ('holds', '|0.3 − 0.8| < |2.6 − 0.8|')),
    (dict(kind='same_partition', keys=['groups', 'paper_groups']), ('holds', '3 groups = 3 groups on 5 ops')),
    (dict(kind='greater_than', keys=[{'ratio': ['zeta.8', 'zeta.5']}], than=3), ('holds', '3.25 > 3')),
    (dict(kind='greater_than', keys=[{'min': ['zeta.5', 'zeta.8']}, {'max': ['zeta.3', 'ratio.darts.*']}]),
     ('holds', '0.8 > 0.4')),
    (dict(kind='less_than', keys=['zeta.3', 'nowhere']), ('not comparable', 'no value for nowhere')),
    (dict(kind='less_than', keys=['missing'], than=1), ('not comparable', 'no value for missing')),
    (dict(kind='same_partition', keys=['groups', 'zeta.3']), ('not comparable', 'no value for zeta.3')),
])
def test_each_rule_holds_fails_or_is_not_comparable(claim, expected):
    result = verdict(**claim)
    assert (result['verdict'], result['detail']) == expected


def test_a_key_with_several_numbers_gives_mean_and_spread_and_a_scale():
    darts = claim_value('per_run[method=darts].acc', VALUES, scale=100)
    assert (darts['mean'], round(darts['std'], 4), darts['n']) == (82.0, 2.8284, 2)
    assert lookup({'a.b': {'c.d': [1, 2]}}, 'a.b.c.d.1') == 2 and lookup(VALUES, 'per_run[method=vsdarts].acc') == [0.9]
    row = verdict(kind='greater_than', keys=['per_run[method=vsdarts].acc', 'per_run[method=darts].acc'])
    assert [v['shown'] for v in row['values']] == ['0.9', '0.82 ± 0.0283 (n=2)']


@pytest.mark.parametrize('claim, message', [
    (dict(claim='x', kind='bigger', keys=['a']), "unknown kind 'bigger'"),
    (dict(claim='x', kind='less_than', keys=['a']), 'got 1 key(s)'),
    (dict(claim='x', kind='within', keys=['a']), 'got 1 key(s)'),
    (dict(claim='x', kind='increasing', keys=['a', 'b'], paper_keys=['a']), 'got 2 key(s)'),
    (dict(claim='x', kind='increasing', keys=['a', 'b'], sources='y'), "unknown field(s) ['sources']"),
    (dict(kind='increasing', keys=['a', 'b']), 'needs `claim` (the sentence), `kind` and `keys`'),
])
def test_a_malformed_claim_is_refused_by_name(claim, message):
    with pytest.raises(ValueError, match=None) as e: check_claim('toy', claim)
    assert message in str(e.value) and str(e.value).startswith('toy.yaml: ')


def test_every_item_states_claims_that_hold_on_the_papers_own_values():
    "A sentence that fails on the paper's numbers does not state the paper's claim (or a value is mistyped)."
    for item, data in read_items().items():
        assert data.get('claims'), f"{item} states no claim"
        paper = {v.key: v.value for v in item_values(item, data)}
        for row in evaluate_claims(item, data['claims'], {}, {}, paper):
            assert row['paper'] is None or row['paper']['verdict'] == 'holds', (item, row['claim'], row['paper'])


def test_cpu_profile_runs_fashion_mnist_on_cpu_or_says_why_not():
    items = read_items()
    assert {i for i, d in items.items() if 'cpu' in d['profiles']} == CPU_ITEMS
    for item, data in items.items():
        cpu = data['profiles'].get('cpu')
        if cpu is None: assert len(data['not_run']['cpu']) > 40, item; continue
        assert (cpu['dataset'], cpu['data_root'], cpu['device']) == (
            'fashion_mnist', '/usr/share/datasets/fashion-mnist', 'cpu'), item
        spread = any(v.std is not None for v in item_values(item, data)) or item in (
            'stacnas_fig2', 'vsdarts_table4', 'methods_side_by_side')
        assert not spread or len(cpu['seeds']) >= 3, item


# --- a missing Fashion-MNIST, and Debian's layout -----------------------------------------------------------------

def _write_gz_idx(path, array):
    with gzip.open(path, 'wb') as f:
        f.write(bytes([0, 0, 8, array.ndim]) + b''.join(struct.pack('>I', s) for s in array.shape) + array.tobytes())


def test_debian_layout_is_read_as_installed(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for prefix in ('train', 't10k'):
        _write_gz_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', images)
        _write_gz_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', np.array([1, 2, 3], dtype=np.uint8))
    x, y = load_arrays('fashion_mnist', tmp_path, 'train')
    assert np.array_equal(x[:, 0].numpy(), images) and y.tolist() == [1, 2, 3]
    require_dataset('fashion_mnist', tmp_path)


def test_missing_fashion_mnist_is_one_line_naming_the_package_and_the_path(tmp_path, capsys):
    with pytest.raises(DatasetNotFoundError) as e: load_arrays('fashion_mnist', tmp_path)
    assert '\n' not in str(e.value) and 'dataset-fashion-mnist' in str(e.value)
    assert str(tmp_path / 'FashionMNIST' / 'raw') in str(e.value)
    with pytest.raises(SystemExit) as e:  # a batch refuses before its first item, and writes nothing
        main(['repro', 'run', 'vsdarts_fig4', '--profile', 'cpu', '--data-root', str(tmp_path / 'none'),
              '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / 'out').exists()
    assert err.startswith("stacvs repro: error: dataset 'fashion_mnist' not found: ") and 'dataset-fashion-mnist' in err
    assert f"{tmp_path / 'none' / 'FashionMNIST' / 'raw'} or {tmp_path / 'none'} itself" in err


# --- the report from a tiny batch ---------------------------------------------------------------------------------

TOY = {'toy_table1': """paper: Toy
description: 'Table 1: the answer'
profiles:
  smoke: {answer: 41.5}
  cpu: {answer: 41.8, seeds: [0, 1, 2]}
values:
  - {key: answer, printed: '42', unit: 'the answer', source: 'Toy Table 1'}
claims:
  - {claim: 'The answer exceeds 41.', source: 'Toy §2', kind: greater_than, keys: [answer], than: 41}
  - {claim: 'The answer over seeds lies in 41–41.85.', source: 'Toy §2', kind: within, keys: ['per_seed.*'], range: [41, 41.85]}
  - {claim: 'The answer grows with depth.', source: 'Toy §3', kind: increasing, keys: [depth.3, depth.5]}
""", 'toy_table2': """paper: Toy
description: 'Table 2: ImageNet only'
profiles:
  smoke: {answer: 1.0}
values:
  - {key: answer, printed: '1', source: 'Toy Table 2'}
claims:
  - {claim: 'The answer is positive.', source: 'Toy §4', kind: greater_than, keys: [answer], than: 0}
not_run:
  cpu: 'the claim needs ImageNet'
"""}
CELLS = ["profile = 'smoke'\nseeds = [0]\ndevice = 'cpu'\nanswer = 40.0\nout_dir = 'toy-run'",
         "from stacvs.repro import ReproRun\nrun = ReproRun.from_parameters(ITEM, globals())",
         "run.finish({'answer': answer}, extra=dict(per_seed=[answer + 0.1 * s for s in seeds]))"]


def _toy_items(d: Path):
    for item, data in TOY.items():
        (d / f'{item}.yaml').write_text(data)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s.replace('ITEM', repr(item))) for s in CELLS],
                                      metadata=dict(kernelspec=dict(name='python3', language='python', display_name='Python 3')))
        nb.cells[0].metadata['tags'] = ['parameters']
        nbformat.write(nb, d / f'{item}.ipynb')


def test_report_renders_a_page_per_item_and_an_overview_from_a_batch(tmp_path, capsys):
    _toy_items(tmp_path)
    out = tmp_path / 'batch'
    summary = main(['repro', 'run', 'all', '--profile', 'cpu', '--notebooks', str(tmp_path), '--out', str(out), '--quiet'])
    assert [(s['item'], s['status']) for s in summary] == [('toy_table1', 'complete'), ('toy_table2', 'not run')]
    results = json.loads((out / 'toy_table1' / 'results.json').read_text())
    assert [c['verdict'] for c in results['claims']] == ['holds', 'does not hold', 'not comparable']
    assert results['claims'][1]['values'][0]['shown'] == '41.9 ± 0.1 (n=3)' and results['machine']['cpus'] >= 1
    assert '1 item(s) complete or skipped, 0 failed, 1 not run (no cpu profile)' in capsys.readouterr().out
    assert 'The answer exceeds 41.' in (out / 'toy_table1' / 'notebook.ipynb').read_text()  # printed in the notebook
    (out / 'report.md').unlink()
    assert main(['repro', 'report', str(out)]) == out / 'report.md'
    report = (out / 'report.md').read_text()
    assert '| [toy_table1](pages/toy_table1.md) | The answer exceeds 41. | holds |' in report
    assert '|  | The answer over seeds lies in 41–41.85. | does not hold |  |' in report
    assert '| toy_table2 | — | not run on cpu: the claim needs ImageNet | |' in report
    page = (out / 'pages' / 'toy_table1.md').read_text()
    assert '| The answer exceeds 41. <br>*Toy §2* | 42 > 41 (holds) | 41.8 > 41 | **holds** |' in page
    assert '| The answer grows with depth. <br>*Toy §3* | not comparable | no value for depth.3, depth.5 | **not comparable** |' in page
    assert '| 2 | `per_seed.*` | 41.9 ± 0.1 (n=3) |' in page and '- machine: platform ' in page and 'versions: python' in page
    assert page == item_page(results)
