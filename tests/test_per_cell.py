"StacNAS's enlarged space (all cells different) for the two-stage methods: one stage-2 space per cell."
import json
import pytest
from stacvs.methods import run_method
from stacvs.spaces import get_space, CellSpaces

TINY = dict(dataset='digits', channels=4, epochs=1, batch_size=32, max_steps_per_epoch=2, fraction=0.3, progress=False)


@pytest.mark.parametrize('method', ['stacnas', 'stacvs'])
def test_alpha_per_cell_derives_a_cell_of_its_own_for_every_stage2_cell(tmp_path, method):
    r = run_method(method, alpha_per_cell=True, layers=3, stage2_layers=5, out=str(tmp_path), **TINY)
    assert isinstance(r['genotype'], list) and len(r['genotype']) == 5
    kinds = ['normal', 'reduce', 'normal', 'reduce', 'normal']  # the 5-cell network's cell types
    halves = [tuple(map(tuple, g[kind])) for g, kind in zip(r['genotype'], kinds)]
    assert len(set(halves)) >= 3, halves  # cells differ
    space2 = get_space(r['stage2_space'])
    assert isinstance(space2, CellSpaces) and len(space2.spaces) == 5
    for cell, (g, kind) in enumerate(zip(r['genotype'], kinds)):  # each cell's ops come from its own stage-2 lists
        edges = space2.spaces[cell].edges(kind)
        inputs = [(n, i) for n in range(4) for i in range(n + 2)]
        for node, (op, inp) in enumerate(g[kind]):
            assert op in edges[inputs.index((node // 2, inp))]
    saved = json.loads((tmp_path / 'stage2' / 'config.json').read_text())
    assert get_space(saved['space']) == space2  # the stage's config.json alone rebuilds its per-cell space
    again = run_method(method, alpha_per_cell=True, layers=3, stage2_layers=5, out=str(tmp_path), resume=True, **TINY)
    assert again['genotype'] == r['genotype']


def test_stage3_with_alpha_per_cell_is_refused_before_any_file(tmp_path):
    with pytest.raises(ValueError, match='--stage3 with --alpha-per-cell'):
        run_method('stacnas', alpha_per_cell=True, stage3=True, layers=3, out=str(tmp_path / 'run'), **TINY)
    assert not (tmp_path / 'run').exists()
