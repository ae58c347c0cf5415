"Protocol cards (issue 14 item 6, issue 15 item 8): every StacNAS and VS-DARTS item's `paper` profile against the paper."
import json
import nbformat
import pytest
from stacvs.repro import ReproRun, repro_items, read_item
from stacvs.protocol import resolve_protocol_card, check_protocol, notebook_defaults, same_setting

PAPER_ITEMS = [item for item, info in repro_items().items() if info.startswith(('StacNAS ', 'VS-DARTS '))]


def test_every_stacnas_and_vsdarts_item_has_a_protocol():
    assert len(PAPER_ITEMS) == 19
    assert [item for item in PAPER_ITEMS if not read_item(item).get('protocol')] == []


@pytest.mark.parametrize('item', PAPER_ITEMS)
def test_the_paper_profile_is_the_papers_protocol_or_says_why(item):
    "Fails listing item, setting, paper value and profile value for each difference without a written reason."
    card = check_protocol(item)
    assert card and all(r['source'] for r in card)


@pytest.mark.parametrize('item', PAPER_ITEMS)
def test_a_card_renders_for_smoke(item):
    card = resolve_protocol_card(item, 'smoke')
    text = card.markdown()
    assert text.startswith(f'**Protocol card: {item}, smoke profile') and text.count('\n|') == len(card) + 2
    assert str(card).splitlines()[0].startswith(f'Protocol card: {item}, smoke profile')


def test_table2_records_the_imagenet_search_it_does_not_run():
    "Issue 14 item 5: 11 + 14 cells at batch 1,024 on 8 GPUs is not run, and the card says why; the trainings are the paper's."
    card = {r['setting']: r for r in check_protocol('stacnas_table2')}
    not_run = {s: r['paper'] for s, r in card.items() if r['resolved'] == 'not run'}
    assert not_run == {'IMAGENET rows: search directly on ImageNet, stage-1 cells': 11, 'IMAGENET rows: stage-2 cells': 14,
                       'IMAGENET rows: search batch size': 1024, 'IMAGENET rows: GPUs (8 V100; torchrun here)': 8,
                       'IMAGENET rows: search weight lr for batch 1,024': 'not stated',
                       'IMAGENET rows: search cost (GPU days)': 20, 'AA rows: AutoAugment (ImageNet policy)': True}
    assert "the library searches ImageNet" in card['IMAGENET rows: stage-2 cells']['reason']
    assert all(r['same'] for r in card.values() if r['resolved'] != 'not run')
    assert (card['base rows: training epochs']['value'], card['AA rows: training epochs']['value'],
            card['training lr (SGD)']['value']) == (250, 800, 0.1)


def test_paper_profiles_search_darts_as_darts_beside_stacnas():
    "StacNAS items that search both methods give DARTS its own depth, epochs, width and batch (not StacNAS's, not 96)."
    for item in ('stacnas_fig2', 'stacnas_fig5', 'stacnas_space_variants'):
        card = {r['setting']: r['value'] for r in check_protocol(item)}
        assert [card[f'DARTS search {s}'] for s in ('cells', 'epochs', 'channels', 'batch size')] == [8, 50, 16, 64], item
    assert {r['setting']: r['value'] for r in check_protocol('stacnas_table3')}[
        'DARTS second-order α gradient (unrolled)'] is True


TOY = """paper: Toy
description: 'Table 1: a toy search'
profiles:
  smoke: {layers: 3, seeds: [0]}
  paper: {layers: 8, seeds: [0, 1, 2]}
values:
  - {key: error, printed: '2.5', unit: '%', source: 'Toy Table 1'}
protocol:
  - {setting: search cells, paper: 14, source: 'Toy §3', parameter: layers}
  - {setting: weight lr, paper: 0.025, source: 'DARTS §3', library: "search('darts').w_lr"}
  - {setting: batch size, paper: 64, source: 'Toy §3', parameter: batch_size, library: "search('darts').batch_size"}
  - {setting: runs, paper: 4, source: 'Toy §3', parameter: len(seeds), reason: 'three seeds suffice for a toy'}
"""


def toy_item(directory, protocol=TOY):
    (directory / 'toy_table1.yaml').write_text(protocol)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "profile = 'smoke'\nseeds = [0]\nlayers = 3\nbatch_size = None\nout_dir = 'toy'")])
    nb.cells[0].metadata['tags'] = ['parameters']
    nbformat.write(nb, directory / 'toy_table1.ipynb')


def test_an_undocumented_difference_fails_with_a_clear_message(tmp_path):
    toy_item(tmp_path)
    with pytest.raises(ValueError) as e: check_protocol('toy_table1', notebooks=tmp_path)
    assert str(e.value) == ("toy_table1: the paper profile differs from the paper's protocol without a reason: search cells: "
                            "paper 14, paper profile 8 (parameter `layers`) — make the profile match, or give the entry a "
                            "`reason:` in toy_table1.yaml")
    card = resolve_protocol_card('toy_table1', 'paper', notebooks=tmp_path)  # the rest resolves as documented
    assert [(r['value'], r['same'], r['resolved']) for r in card] == [
        (8, False, 'parameter `layers`'), (0.025, True, "library `search('darts').w_lr`"),
        (64, True, "library `search('darts').batch_size`"), (3, False, 'parameter `len(seeds)`')]
    toy_item(tmp_path, TOY.replace('paper: 14,', 'paper: 8,'))
    assert check_protocol('toy_table1', notebooks=tmp_path).undocumented == []


def test_a_bad_entry_names_the_item_and_the_problem(tmp_path):
    toy_item(tmp_path, TOY.replace("source: 'Toy §3', parameter: layers", "parameter: layers, sources: x"))
    with pytest.raises(ValueError, match=r"toy_table1.yaml: protocol entry 'search cells': unknown field\(s\) \['sources'\]; "
                                         r"missing \['source'\]"):
        resolve_protocol_card('toy_table1', notebooks=tmp_path)


def test_a_run_writes_its_card_beside_its_results(tmp_path):
    toy_item(tmp_path)
    run = ReproRun('toy_table1', tmp_path / 'out', notebooks=tmp_path, profile='smoke', seeds=[0], layers=3)
    run.finish({'error': 2.7})
    saved = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert [r['value'] for r in saved['protocol_card']] == [3, 0.025, 64, 1]  # batch_size: the notebook's None → preset
    card = (tmp_path / 'out' / 'protocol_card.md').read_text()
    assert card.startswith('**Protocol card: toy_table1, smoke profile — 2 of 4 settings as the paper')
    assert '| search cells | 14 | 3 | ≠ | parameter `layers` | Toy §3 |  |' in card


def test_notebook_defaults_and_setting_equality():
    assert notebook_defaults('stacnas_table6')['seeds'] == [0]  # the paper profile sets no seeds: the notebook's
    assert same_setting(3e-4, 0.0003) and same_setting([0.5, 0.999], (0.5, 0.999)) and not same_setting(True, 1)
