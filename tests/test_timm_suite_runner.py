"""scripts/timm_model_tests.py (CI's run of timm's own tests/test_models.py): the patch it applies to the
sdist's test file, and its selection, checked without running the suite."""
import importlib.util
import io
import tarfile
from pathlib import Path

import pytest
import timm

import vssm  # noqa: F401

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'timm_model_tests.py'


def _runner():
    spec = importlib.util.spec_from_file_location('timm_model_tests', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_sdist(tmp_path, text, version='9.9.9'):
    path = tmp_path / f'timm-{version}.tar.gz'
    data = text.encode()
    with tarfile.open(path, 'w:gz') as tar:
        info = tarfile.TarInfo(f'timm-{version}/tests/test_models.py')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_patch_inserts_vssm_lists_and_fails_loudly_on_a_changed_file(tmp_path):
    r = _runner()
    text = ('import timm\n' + r._IMPORT_ANCHOR + 'NON_STD_FILTERS = []\nFEAT_INTER_FILTERS = []\n' + r._NON_STD_ANCHOR
            + 'EXCLUDE_JIT_FILTERS = []\n' + r._JIT_ANCHOR)
    patched = r.patched_test_file(_fake_sdist(tmp_path, text), '9.9.9')
    assert patched.index('import vssm') < patched.index(r._NON_STD_ANCHOR)
    assert "NON_STD_FILTERS += ['vim_*', 'local_vim_*']" in patched
    assert 'FEAT_INTER_FILTERS += _vssm_modules()' in patched and 'EXCLUDE_JIT_FILTERS += ' in patched
    compile(patched, 'test_models.py', 'exec')
    with pytest.raises(RuntimeError, match='anchor'):
        r.patched_test_file(_fake_sdist(tmp_path, 'import timm\n'), '9.9.9')


def test_selection_covers_every_model_class_and_token_models_are_non_std():
    r = _runner()
    ours = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('vssm.')]
    assert set(r.CI_MODELS) <= set(ours)
    classes = {type(timm.create_model(n, device='meta')).__name__ for n in ours}
    assert classes == {type(timm.create_model(n, device='meta')).__name__ for n in r.CI_MODELS}
    import fnmatch
    for n in ours:
        token_model = getattr(timm.create_model(n, device='meta'), 'output_fmt', 'NCHW') == 'NLC'
        assert token_model == any(fnmatch.fnmatch(n, p) for p in r.VSSM_NON_STD), n
