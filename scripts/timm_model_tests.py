#!/usr/bin/env python3
"""Run timm's own tests/test_models.py (from the installed timm version's sdist) over vssm's models.

    python scripts/timm_model_tests.py                 # the CI selection (see SELECTION below)
    python scripts/timm_model_tests.py --all-models    # every vssm model in every test (slow on a CPU)
    python scripts/timm_model_tests.py -- -k forward   # extra pytest arguments after --

What it does, without editing timm:
1. fetches ``timm==<installed>`` as an sdist once (``pip download --no-binary timm --no-deps``), cached under
   ``$VSSM_CACHE`` (default ~/.cache/vssm);
2. writes a copy of its tests/test_models.py with marked insertions: ``import vssm`` (the models are
   registered before the file's ``list_models(...)`` parametrisations run), ``list_models`` / ``list_pretrained``
   restricted to vssm's models, vssm's token-sequence models (Vim, LocalVim) appended to ``NON_STD_FILTERS``
   as timm lists its ViTs there, vssm's modules to ``FEAT_INTER_FILTERS`` (every model has
   forward_intermediates), and vssm's models to ``EXCLUDE_JIT_FILTERS`` (TorchScript is deprecated in torch 2.x
   and not supported; vssm targets torch.compile, covered by its tests/test_compile.py, and torch.export);
3. adds a conftest that deselects the file's tests of named timm models (resnet18, naflexvit, ...), registers
   timm's markers, and runs single-threaded;
4. runs pytest on the copy and exits with its status.

SELECTION (the CI default keeps the run within a few minutes on 2 CPU cores): every test runs on the smallest
model of each family and architecture variant (``CI_MODELS``); ``--all-models`` runs the full list. The
selection covers every model class, every timm test function and both the standard and the non-standard
(token-output) path; the larger sizes of one class differ only in widths and depths.
"""
import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# vssm models with token (NLC) outputs, treated by timm's tests as its ViTs are
VSSM_NON_STD = ['vim_*', 'local_vim_*']
# smallest model of every family / architecture variant (every model class and code path)
CI_MODELS = ['vmamba_tiny_s1l8', 'vmamba_tiny_v0', 'vim_tiny', 'vim_tiny_stride8', 'local_vim_tiny',
             'local_vim_tiny_midcls', 'local_vmamba_tiny', 'efficient_vmamba_tiny', 'groupmamba_tiny',
             'mambavision_tiny', 'vmamba_tiny_m2', 'mobilemamba_t2', 'spatial_mamba_tiny']

_IMPORT_ANCHOR = 'from timm.models import get_notrace_modules, get_notrace_functions\n'
_NON_STD_ANCHOR = 'NUM_NON_STD = len(NON_STD_FILTERS)\n'
_JIT_ANCHOR = 'TARGET_FWD_SIZE = MAX_FWD_SIZE = 384\n'

_PATCH_IMPORT = '''
# --- vssm: register vssm's models and restrict the model lists to them (scripts/timm_model_tests.py) ---
import vssm  # noqa: E402,F401
from vssm_timm_selection import restrict as _vssm_restrict  # noqa: E402
list_models, list_pretrained = _vssm_restrict(list_models), _vssm_restrict(list_pretrained)
# --- end vssm ---
'''
_PATCH_NON_STD = '''# --- vssm: token-sequence models are non-standard, as timm's ViTs; every vssm model has
# forward_intermediates and features_only via FeatureGetterNet (scripts/timm_model_tests.py) ---
NON_STD_FILTERS += {non_std!r}
from vssm_timm_selection import vssm_modules as _vssm_modules  # noqa: E402
FEAT_INTER_FILTERS += _vssm_modules()
# --- end vssm ---
'''

_PATCH_JIT = '''# --- vssm: no TorchScript (deprecated in torch 2.x; vssm targets torch.compile and torch.export),
# excluded as timm excludes its own unscriptable models (scripts/timm_model_tests.py) ---
from vssm_timm_selection import vssm_models as _vssm_models  # noqa: E402
EXCLUDE_JIT_FILTERS += sorted(_vssm_models())
# --- end vssm ---
'''

_SELECTION_MODULE = '''"""Which vssm models timm's tests run on (written by scripts/timm_model_tests.py)."""
import functools

import timm

MODELS = {models!r}


def vssm_models():
    return {{m for m in timm.list_models() if timm.models.model_entrypoint(m).__module__.startswith('vssm.')}}


def vssm_modules():
    """timm's module names of vssm's models (its list_models(module=...) key)."""
    from timm.models._registry import _model_to_module
    return sorted({{_model_to_module[m] for m in vssm_models()}})


def selected():
    every = vssm_models()
    return every if MODELS is None else set(MODELS) & every


def restrict(fn):
    """list_models / list_pretrained returning only the selected vssm models (tags kept)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        keep = selected()
        return [m for m in fn(*args, **kwargs) if m.split('.')[0] in keep]
    return wrapped
'''

_CONFTEST = '''"""Runs timm's test_models.py over vssm's models only (written by scripts/timm_model_tests.py)."""
import torch

torch.set_num_threads(1)

MARKERS = ('base', 'cfg', 'cfg_nonstd', 'forward', 'backward', 'torchscript', 'features', 'fxforward', 'fxbackward',
           'timeout(seconds): per-test limit (pytest-timeout)')


def pytest_configure(config):
    for m in MARKERS:
        config.addinivalue_line('markers', m)


# they download the release files: CI reaches no host but the package registries (timm's own CI skips them too)
NEEDS_NETWORK = ('test_model_load_pretrained', 'test_model_features_pretrained')


def pytest_collection_modifyitems(config, items):
    """Keep the tests parametrised by a selected vssm model; the file's tests of named timm models go."""
    from vssm_timm_selection import selected
    keep_models = selected()
    kept, dropped = [], []
    for item in items:
        name = getattr(item, 'callspec', None) and item.callspec.params.get('model_name')
        keep = isinstance(name, str) and name.split('.')[0] in keep_models and item.originalname not in NEEDS_NETWORK
        (kept if keep else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
'''


def cache_dir() -> Path:
    return Path(os.environ.get('VSSM_CACHE', Path.home() / '.cache' / 'vssm'))


def fetch_sdist(version: str) -> Path:
    """timm's sdist for `version`, downloaded once into the cache."""
    dest = cache_dir() / 'timm-sdist'
    path = dest / f'timm-{version}.tar.gz'
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'pip', 'download', f'timm=={version}', '--no-binary', 'timm',
                        '--no-deps', '-q', '-d', str(dest)], check=True)
    if not path.is_file():
        raise FileNotFoundError(f'pip download did not produce {path}')
    return path


def patched_test_file(sdist: Path, version: str) -> str:
    with tarfile.open(sdist) as tar:
        member = tar.getmember(f'timm-{version}/tests/test_models.py')
        text = tar.extractfile(member).read().decode()
    for anchor in (_IMPORT_ANCHOR, _NON_STD_ANCHOR, _JIT_ANCHOR):
        if text.count(anchor) != 1:
            raise RuntimeError(f'timm {version} tests/test_models.py changed: anchor {anchor.strip()!r} not found '
                               f'once; update scripts/timm_model_tests.py')
    text = text.replace(_IMPORT_ANCHOR, _IMPORT_ANCHOR + _PATCH_IMPORT)
    text = text.replace(_JIT_ANCHOR, _PATCH_JIT + _JIT_ANCHOR)
    return text.replace(_NON_STD_ANCHOR, _PATCH_NON_STD.format(non_std=VSSM_NON_STD) + _NON_STD_ANCHOR)


def prepare(models) -> Path:
    import timm
    version = timm.__version__
    work = cache_dir() / f'timm-{version}-tests'
    work.mkdir(parents=True, exist_ok=True)
    (work / 'test_models.py').write_text(patched_test_file(fetch_sdist(version), version))
    (work / 'vssm_timm_selection.py').write_text(_SELECTION_MODULE.format(models=models))
    (work / 'conftest.py').write_text(_CONFTEST)
    (work / 'pytest.ini').write_text('[pytest]\n')  # rootdir here: neither vssm's nor timm's pytest config
    return work


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--all-models', action='store_true', help='every vssm model, not the CI selection')
    p.add_argument('pytest_args', nargs='*', help='extra pytest arguments (after --)')
    args = p.parse_args(argv)
    work = prepare(None if args.all_models else CI_MODELS)
    path = [str(work), str(ROOT), os.environ.get('PYTHONPATH')]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--rootdir', str(work),
           '-c', str(work / 'pytest.ini'), str(work / 'test_models.py')] + args.pytest_args
    print('timm model tests:', ' '.join(cmd), flush=True)
    return subprocess.call(cmd, cwd=work, env=env)


if __name__ == '__main__':
    sys.exit(main())
