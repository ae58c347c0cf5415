"Published values: spot checks against the papers, registry invariants, look-up errors, compare arithmetic."
import json
import math
import re
from pathlib import Path
import pytest
import yaml
import stacvs.confusion as confusion
import stacvs.grouping as grouping
from stacvs.paper_values import (default_notebook_dir, ITEMS, PAPER_VALUES, PAPER_TABLE1, PAPER_TABLE6, PaperValue, check_paper_values,
                                 compare, paper_table, paper_value, paper_values, parse_printed, table_values)

PAPERS = Path('/work/shared/papers')

# (item, key, value, std) typed again from the papers' text, independently of the notebook
SPOT_CHECKS = [
    ('stacnas_table1', 'stage1.14_cells', 0.56, None), ('stacnas_table1', 'stage1.20_cells', 1.02, None),
    ('stacnas_table1', 'final.20_cells', 0.57, None),
    ('stacnas_table2', 'stacnas_imagenet_aa.top1', 23.22, None), ('stacnas_table2', 'stacnas_c10_aa.top1', 23.48, None),
    ('stacnas_table2', 'stacnas_c100_base.params', 4.9, None), ('stacnas_table2', 'darts.top5', 8.7, None),
    ('stacnas_table3', 'stacnas_base.average', 2.48, 0.08), ('stacnas_table3', 'stacnas_aa.average', 2.02, 0.06),
    ('stacnas_table3', 'stacnas_base.best', 2.33, None), ('stacnas_table3', 'darts_base.average', 2.76, 0.09),
    ('stacnas_table3', 'stacnas_base.params', 3.9, None),
    ('stacnas_table4', 'stacnas_base.average', 16.11, 0.2), ('stacnas_table4', 'stacnas_aa.best', 13.6, None),
    ('stacnas_table4', 'darts_base.average', 17.54, 0.27),
    ('stacnas_table5', 'baseline.two_level', 2.97, 0.32), ('stacnas_table5', 'gb.one_level', 2.68, 0.10),
    ('stacnas_table5', 'gb_cm.two_level', 2.73, 0.23),
    ('stacnas_table6', 'avg_pool_3x3|max_pool_3x3', 0.52, None),
    ('stacnas_table6', 'dil_conv_3x3|dil_conv_5x5', 0.27, None),
    ('stacnas_table6', 'sep_conv_3x3|dil_conv_3x3', 0.15, None),
    ('stacnas_fig2', 'darts.search_gpu_days', 4, None),
    ('stacnas_space_variants', 'sep7.darts', 2.98, 0.15), ('stacnas_space_variants', 'sep7.stacnas', 2.55, 0.08),
    ('stacnas_space_variants', 'stacking.14+17', 2.58, 0.07), ('stacnas_space_variants', 'stacking.17+20', 2.53, 0.05),
    ('stacnas_space_variants', 'random_representatives', 2.53, 0.08),
    ('stacnas_skips_vs_depth', 'search_5_cells.skips', 0, None),
    ('stacnas_skips_vs_depth', 'search_20_cells.skips', 4, None),
    ('stacnas_fig5', 'stacnas.correlation', 0.91, None), ('stacnas_fig5', 'darts.correlation', 0.2, None),
    ('vsdarts_table1', 'vs_darts_avg.error', 2.50, 0.05), ('vsdarts_table1', 'vs_darts_best.error', 2.43, None),
    ('vsdarts_table1', 'vs_darts_best.params', 3.38, None), ('vsdarts_table1', 'darts_1st.error', 3.00, None),
    ('vsdarts_table2', 'vs_darts.top1', 24.8, None), ('vsdarts_table2', 'vs_darts_proxy.top1', 24.7, None),
    ('vsdarts_table2', 'darts_pt.top5', 8.0, None), ('vsdarts_table2', 'vs_darts.flops', 589, None),
    ('vsdarts_table3', 'c10.s4.darts', 7.20, None), ('vsdarts_table3', 'c10.s2.vs_darts', 2.57, None),
    ('vsdarts_table3', 'c100.s1.pr_darts', 32.74, None), ('vsdarts_table3', 'svhn.s2.r_darts_l2', 2.51, None),
    ('vsdarts_table3', 'c100.s4.vs_darts', 20.69, None), ('vsdarts_table3', 'svhn.s4.vs_darts', 2.32, None),
    ('vsdarts_table4', 'darts.accuracy', 97.09, None), ('vsdarts_table4', 'node_norm.accuracy', 97.29, None),
    ('vsdarts_table4', 'node_norm_larc.accuracy', 97.40, None),
    ('vsdarts_table4', 'node_norm_larc_sqrt_beta.accuracy', 97.57, None),
    ('vsdarts_fig3', 'unnormalized_sigma.high', 1.6, None), ('vsdarts_fig6', 'darts.variance_ratio_start', 0.4, None),
]


@pytest.mark.parametrize('item,key,value,std', SPOT_CHECKS)
def test_spot_checks_against_the_papers(item, key, value, std):
    v = paper_value(item, key)
    assert v.value == pytest.approx(value, abs=1e-12)
    assert (v.std is None) if std is None else v.std == pytest.approx(std, abs=1e-12)


def test_at_least_two_spot_checks_per_table():
    tables = [item for item in ITEMS if '_table' in item]
    counts = {item: sum(1 for c in SPOT_CHECKS if c[0] == item) for item in tables}
    assert all(n >= 2 for n in counts.values()), counts


def test_units_say_error_or_accuracy_as_printed():
    assert 'error' in paper_value('stacnas_table3', 'stacnas_base.average').unit
    assert 'accuracy' in paper_value('vsdarts_table4', 'darts.accuracy').unit
    assert 'accuracy' in paper_value('stacnas_space_variants', 'sep7.darts_accuracy').unit
    assert paper_value('stacnas_space_variants', 'sep7.darts_accuracy').value == pytest.approx(
        100 - paper_value('stacnas_space_variants', 'sep7.darts').value)


def test_missing_marks_are_none_with_a_note():
    for item, key, printed in [('stacnas_table3', 'darts_base.best', '-'), ('stacnas_table4', 'darts_base.best', 'N/A'),
                               ('vsdarts_table1', 'r_darts.params', '-'), ('vsdarts_table2', 'darts_pt.flops', '-')]:
        v = paper_value(item, key)
        assert (v.value, v.std, v.printed) == (None, None, printed) and v.note


def test_registry_is_complete_and_ordered():
    assert list(PAPER_VALUES) == list(ITEMS)
    data = {p.stem: yaml.safe_load(p.read_text()) for p in default_notebook_dir().glob('*.yaml')}
    expected = {item for item, d in data.items() if d.get('values') or d.get('values_from')}  # items with paper values
    assert len(expected) == 19 and set(ITEMS) == expected
    for item, info in ITEMS.items():
        assert info.paper == ('StacNAS' if item.startswith('stacnas') else 'VS-DARTS') and info.description


def test_every_item_has_a_value_or_an_explicit_note():
    for item, values in PAPER_VALUES.items():
        assert values, item
        assert any(v.value is not None for v in values) or all(v.note for v in values), item
        assert all(v.note for v in values if v.value is None), item


def test_every_value_has_a_source_naming_its_paper_and_unique_keys():
    for item, values in PAPER_VALUES.items():
        keys = [v.key for v in values]
        assert len(keys) == len(set(keys)), item
        for v in values:
            assert v.item == item and v.source.startswith(ITEMS[item].paper), (item, v.key, v.source)
            assert v.unit and v.printed, (item, v.key)
            assert (v.value, v.std) == parse_printed(v.printed) or item in ('stacnas_table1', 'stacnas_table6')


def test_table_sizes():
    assert len(paper_values('vsdarts_table3')) == 3 * 4 * 7
    assert len(paper_values('stacnas_table6')) == 15
    assert len(paper_values('stacnas_table5')) == 6
    assert len(paper_values('stacnas_table2')) == 6 * 4


def test_tables_from_other_modules_are_reexposed_not_copied():
    assert PAPER_TABLE1 is confusion.PAPER_TABLE1 and PAPER_TABLE6 is grouping.PAPER_TABLE6
    matrix, ops = grouping.PAPER_TABLE6
    for i in range(len(ops)):
        for j in range(i + 1, len(ops)):
            assert paper_value('stacnas_table6', f'{ops[i]}|{ops[j]}').value == pytest.approx(float(matrix[i][j]))
    published = [row['gradient_confusion'] for row in confusion.PAPER_TABLE1]
    assert [v.value for v in paper_values('stacnas_table1')] == published


def _number_pattern(printed: str) -> str:
    value, _, std = printed.partition('±')
    number = lambda s: re.escape(s.strip())
    if not std: return rf'(?<![\d.]){number(value)}(?![\d])'
    return rf'{number(value)}\s*(?:±|\\pm|\{{\\pm\}})\s*{number(std)}'


@pytest.mark.skipif(not PAPERS.exists(), reason='paper texts not available here')
def test_printed_numbers_occur_in_the_paper_texts():
    texts = {paper: next(PAPERS.glob(f'{stem}*.txt')).read_text()
             for paper, stem in (('StacNAS', 'stacnas'), ('VS-DARTS', 'vsdarts'))}
    missing = [(item, v.key, v.printed) for item, values in PAPER_VALUES.items() for v in values
               if v.value is not None and not re.search(_number_pattern(v.printed), texts[ITEMS[item].paper])]
    assert not missing, missing


def test_unknown_item_and_key_errors_are_clear():
    with pytest.raises(ValueError, match=r"unknown paper item 'stacnas_table7'; known items: stacnas_table1, "):
        paper_values('stacnas_table7')
    with pytest.raises(ValueError, match=r"no key 'vs_darts.error'; its keys are: darts_1st.params"):
        paper_value('vsdarts_table1', 'vs_darts.error')
    with pytest.raises(ValueError, match='unknown paper item'):
        compare('nope', {})
    with pytest.raises(ValueError, match=r"has no keys \['average'\]"):
        compare('stacnas_table3', {'average': 2.5})


def test_paper_table_rows_are_json_ready():
    rows = paper_table('stacnas_table3')
    assert json.loads(json.dumps(rows)) == rows
    assert rows[5] == dict(paper='StacNAS', item='stacnas_table3', key='stacnas_base.average', value=2.48, std=0.08,
                           unit=rows[5]['unit'], source="StacNAS Table 3, row 'StacNAS(base)', column "
                           "'Test Error (%) Average'", note=rows[5]['note'], printed='2.48±0.08')


def test_compare_arithmetic():
    measured = {'c10.s1.vs_darts': 2.70, 'c10.s1.darts': 3.00}
    rows = compare('vsdarts_table3', measured)
    assert [r['key'] for r in rows] == ['c10.s1.darts', 'c10.s1.vs_darts']  # paper order, not dict order
    assert rows[0]['difference'] == pytest.approx(3.00 - 3.84) and rows[1]['difference'] == pytest.approx(2.70 - 2.58)
    assert rows[0]['rough_check_within_2std'] is None  # no std printed
    # StacNAS(base) 2.48 ± 0.08: the band is [2.32, 2.64]
    check = lambda m: compare('stacnas_table3', {'stacnas_base.average': m})[0]['rough_check_within_2std']
    assert check(2.64) is True and check(2.32) is True and check(2.48) is True
    assert check(2.65) is False and check(2.31) is False
    row = compare('stacnas_table3', {'stacnas_base.average': 2.60})[0]
    assert (row['paper'], row['paper_std'], row['measured']) == (2.48, 0.08, 2.60)
    assert row['difference'] == pytest.approx(0.12)


def test_compare_missing_values():
    rows = compare('stacnas_table3', {'darts_base.best': 2.9, 'stacnas_base.average': float('nan')})
    assert rows[0]['paper'] is None and rows[0]['difference'] is None and rows[0]['rough_check_within_2std'] is None
    assert rows[1]['measured'] is None and rows[1]['difference'] is None
    everything = compare('stacnas_table3', {'stacnas_aa.best': 1.9}, include_unmeasured=True)
    assert len(everything) == 12 and sum(r['measured'] is not None for r in everything) == 1
    assert all(math.isfinite(r['paper']) for r in everything if r['paper'] is not None)


def test_parse_printed_and_builders_reject_bad_input():
    assert parse_printed('14.3±0.18') == (14.3, 0.18) and parse_printed(' N/A ') == (None, None)
    with pytest.raises(ValueError, match=r"cannot read the printed value '3\.3±'"):
        parse_printed('3.3±')
    with pytest.raises(ValueError, match='has 1 cells but 2 columns'):
        table_values('x', 'T', [('a', 'A', '%'), ('b', 'B', '%')], {'r': ('R', ['1'])})
    with pytest.raises(ValueError, match='no source'):
        check_paper_values({'stacnas_fig5': [PaperValue('stacnas_fig5', 'k', 1.0)]})
    with pytest.raises(ValueError, match='is listed under'):
        check_paper_values({'stacnas_fig5': [PaperValue('stacnas_fig2', 'k', 1.0, source='s')]})
