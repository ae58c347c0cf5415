"""A non-editable install runs the reproduction items: the notebooks and their data files ship inside the package.

The sources (pyproject.toml, README.md, stacvs/, nbs/repro/) are copied to a temporary directory, built into an sdist
with setuptools' PEP 517 hook, the sdist into a wheel with pip (the path `pip install stacvs` takes from an sdist),
the wheel installed with `pip install --no-deps --target`, and one smoke item run from it in a directory away from
the checkout.
"""
import json, os, shutil, subprocess, sys, tarfile, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, **kwargs):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    pytest.importorskip('setuptools', reason='building without isolation needs setuptools in this environment')
    tmp = tmp_path_factory.mktemp('package')
    src = tmp / 'src'
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.ipynb_checkpoints')
    shutil.copytree(ROOT / 'stacvs', src / 'stacvs', ignore=ignore)
    shutil.copytree(ROOT / 'nbs' / 'repro', src / 'nbs' / 'repro', ignore=ignore)
    for name in ('pyproject.toml', 'README.md'): shutil.copy(ROOT / name, src / name)
    run(sys.executable, '-c', f"from setuptools import build_meta; build_meta.build_sdist({str(tmp / 'sdist')!r})", cwd=src)
    [sdist] = (tmp / 'sdist').glob('stacvs-*.tar.gz')
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / 'unpacked', **(dict(filter='data') if hasattr(tarfile, 'data_filter') else {}))
    [unpacked] = (tmp / 'unpacked').iterdir()
    run(sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', tmp / 'dist', unpacked)
    [whl] = (tmp / 'dist').glob('stacvs-*.whl')
    return tmp, whl


def test_the_wheel_ships_every_notebook_and_data_file(wheel):
    _, whl = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    expected = {f'stacvs/repro_notebooks/{p.relative_to(ROOT / "nbs" / "repro")}'
                for p in (ROOT / 'nbs' / 'repro').rglob('*') if p.suffix in ('.ipynb', '.yaml')}
    assert len(expected) >= 40 and expected <= names, sorted(expected - names)[:5]  # 20 items: notebook + data file


def test_an_installed_wheel_runs_a_smoke_item_away_from_the_checkout(wheel):
    tmp, whl = wheel
    site, cwd, out = tmp / 'site', tmp / 'elsewhere', tmp / 'out'
    run(sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', site, whl)
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'STACVS_REPRO_NOTEBOOKS'}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    where = run(sys.executable, '-c', "import stacvs; from stacvs.repro import default_notebook_dir; "
                "print(stacvs.__file__); print(default_notebook_dir())", cwd=cwd, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(site) and Path(where[1]) == site / 'stacvs' / 'repro_notebooks', where
    run(sys.executable, '-m', 'stacvs.cli', 'repro', 'run', 'stacnas_table6', '--profile', 'smoke', '--out', out,
        '--param', 'epochs=1', 'max_steps_per_epoch=2', 'samples=64', cwd=cwd, env=env)
    results = json.loads((out / 'stacnas_table6' / 'results.json').read_text())
    assert results['status'] == 'complete' and results['parameters']['epochs'] == 1 and (out / 'report.md').exists()
    assert not (cwd / 'repro-runs').exists()
