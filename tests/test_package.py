"""Package-level promises: what `import vssm` pulls in, and that every family registers with timm."""
import subprocess
import sys

import timm

import vssm  # noqa: F401


def test_import_is_light():
    """`import vssm` registers models but loads neither OpenMMLab nor vssm's Triton / CUDA kernel modules."""
    code = (
        'import sys, vssm, timm\n'
        'bad = [m for m in sys.modules if m.split(".")[0] in ("mmdet", "mmseg", "mmcv", "mmengine")'
        ' or m in ("vssm.ops.triton_scan", "vssm.ops.cuda_ext", "vssm.mm")]\n'
        'assert not bad, bad\n'
        'assert timm.is_model("vmamba_tiny_s1l8")\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


def test_models_are_vssm_modules():
    names = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('vssm.')]
    assert len(names) >= 9
    # module names stay distinct from timm's own (mambaout, efficientvim)
    mods = {timm.models.model_entrypoint(n).__module__.split('.')[-1] for n in names}
    assert not mods & {'mambaout', 'efficientvim', 'vision_transformer'}


def test_library_path_needs_no_plot_or_data_extras():
    """import vssm + timm.create_model + a forward import neither matplotlib nor scikit-learn (extras)."""
    code = (
        'import sys, torch, timm, vssm\n'
        'm = timm.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16).eval()\n'
        'm(torch.randn(1, 3, 32, 32))\n'
        'bad = [k for k in sys.modules if k.split(".")[0] in ("matplotlib", "sklearn", "yacs")]\n'
        'assert not bad, bad\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


def test_missing_extras_are_clear_errors():
    """Without scikit-learn / matplotlib (blocked here) the tools say which extra to install."""
    code = (
        'import sys\n'
        'sys.modules["sklearn"] = sys.modules["matplotlib"] = None  # import fails as if not installed\n'
        'from vssm.data import DigitsDataset\n'
        'try:\n'
        '    DigitsDataset("train")\n'
        'except ImportError as e:\n'
        '    assert "vssm[data]" in str(e) and "scikit-learn" in str(e), e\n'
        'else:\n'
        '    raise AssertionError("no error")\n'
        'from vssm.tools_common.plots import plot_xy_series\n'
        'try:\n'
        '    plot_xy_series({"a": ([0, 1], [0, 1])}, "/tmp/x.png", "x", "y")\n'
        'except ImportError as e:\n'
        '    assert "vssm[plot]" in str(e), e\n'
        'else:\n'
        '    raise AssertionError("no error")\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


def test_install_requires_are_ranges_and_extras_are_installed():
    """setup.py states ranges (no exact pins of torch / timm / torchvision); every extra's requirements are
    met in the dev environment; constraints.txt pins what setup.sh installs."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path
    from unittest import mock

    import setuptools
    from packaging.requirements import Requirement
    root = Path(__file__).resolve().parents[1]
    with mock.patch.object(setuptools, 'setup') as setup:
        exec(compile((root / 'setup.py').read_text(), 'setup.py', 'exec'),
             {'__name__': '__main__', '__file__': str(root / 'setup.py')})
    kw = setup.call_args.kwargs
    reqs = {Requirement(r).name: Requirement(r) for r in kw['install_requires']}
    assert {'torch', 'timm', 'torchvision'} <= set(reqs)
    assert not any(s.operator == '==' for r in reqs.values() for s in r.specifier), kw['install_requires']
    assert not {'matplotlib', 'scikit-learn'} & set(reqs)
    extras = kw['extras_require']
    assert {'plot', 'data', 'tools', 'dev'} <= set(extras)
    pins = dict(line.split('==') for line in (root / 'constraints.txt').read_text().splitlines()
                if line and not line.startswith('#'))
    for extra in ('plot', 'data', 'tools', 'dev'):
        for r in map(Requirement, extras[extra]):
            try:
                installed = version(r.name)
            except PackageNotFoundError:
                raise AssertionError(f'extra [{extra}] needs {r}, not installed') from None
            assert r.specifier.contains(installed, prereleases=True), (extra, str(r), installed)
            assert r.name.lower() in {p.lower() for p in pins}, f'{r.name} missing from constraints.txt'
    for name, r in reqs.items():
        assert r.specifier.contains(version(name), prereleases=True), (str(r), version(name))
