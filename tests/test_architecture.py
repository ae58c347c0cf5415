"The import graph: the model layer is plain PyTorch and never imports the accelerator or anything above it."
import ast
from pathlib import Path
import pytest
import stacvs

PACKAGE = Path(stacvs.__file__).parent
MODEL_LAYER = ('registry', 'ops', 'spaces', 'relaxations', 'cells', 'networks', 'genotypes')


def stacvs_imports(module: str) -> set[str]:
    "The stacvs modules `module` imports (absolute or relative), as dotted names without the package prefix."
    path = PACKAGE / (module.replace('.', '/') + '.py')
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix('stacvs.') for a in node.names if a.name.startswith('stacvs.')}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from .ops import …`, `from ..cells import …`: relative to the module's package
                package = module.split('.')[:-1]
                found.add('.'.join(package[:len(package) - node.level + 1] + [node.module or '']))
            elif node.module and node.module.startswith('stacvs.'): found.add(node.module.removeprefix('stacvs.'))
            elif node.module == 'stacvs': found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize('module', MODEL_LAYER)
def test_the_model_layer_imports_only_the_model_layer(module):
    outside = {m for m in stacvs_imports(module) if m not in MODEL_LAYER}
    assert not outside, f"stacvs.{module} imports {sorted(outside)}: the model layer must stay plain (see stacvs.accel)"


def test_the_accelerator_sits_on_the_model_layer_only():
    for path in sorted((PACKAGE / 'accel').glob('*.py')):
        imports = stacvs_imports(f'accel.{path.stem}') if path.stem != '__init__' else set()
        outside = {m for m in imports if m not in MODEL_LAYER and not m.startswith('accel')}
        assert not outside, f"stacvs.accel.{path.stem} imports {sorted(outside)}"


def test_the_check_sees_an_import():
    assert 'ops' in stacvs_imports('cells') and 'accel.core' in stacvs_imports('search')
