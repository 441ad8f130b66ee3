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


# ------------------------------------------------------------------------ packaging (issue 18)

def _setup_kwargs():
    from pathlib import Path
    from unittest import mock

    import setuptools
    root = Path(__file__).resolve().parents[1]
    with mock.patch.object(setuptools, 'setup') as setup:
        exec(compile((root / 'setup.py').read_text(), 'setup.py', 'exec'),
             {'__name__': '__main__', '__file__': str(root / 'setup.py')})
    return root, setup.call_args.kwargs


def test_package_data_covers_every_runtime_source():
    """Every non-Python file in vssm/ (the C++ the CPU kernel compiles on first use) is in setup.py's
    package_data, so wheels carry it (scripts/check_wheel.sh builds one and checks)."""
    import fnmatch
    root, kw = _setup_kwargs()
    data = kw['package_data']
    files = [p for p in (root / 'vssm').rglob('*') if p.is_file() and '__pycache__' not in p.parts
             and p.suffix not in ('.py', '.pyc', '.so')]
    assert any(p.suffix == '.cpp' for p in files)
    for path in files:
        rel = path.relative_to(root)
        package = '.'.join(rel.parent.parts)
        matched = False
        while package:  # a pattern of the package or of one above it, relative to that package's folder
            inner = path.relative_to(root / package.replace('.', '/')).as_posix()
            if any(fnmatch.fnmatch(inner, pat) for pat in data.get(package, ())):
                matched = True
                break
            package = package.rpartition('.')[0]
        assert matched, f'{rel} is not in setup.py package_data {data}'


def test_floors_agree_across_setup_smoke_script_and_readme():
    """The floors setup.py states are the versions scripts/smoke_old_torch.sh tests (its defaults), and the
    README states no other floor for torch or timm."""
    import re
    from packaging.requirements import Requirement
    from packaging.version import Version
    root, kw = _setup_kwargs()
    floors = {}
    for r in map(Requirement, kw['install_requires']):
        lows = [Version(s.version) for s in r.specifier if s.operator == '>=']
        if r.name in ('torch', 'timm'):
            assert len(lows) == 1, f'{r}: expected one >= floor'
            floors[r.name] = lows[0]
    smoke = (root / 'scripts' / 'smoke_old_torch.sh').read_text()
    tested = {name: Version(re.search(rf'^{var}=\$\{{SMOKE_{var.split("_")[0]}:-([\d.]+)\}}$', smoke,
                                      re.M).group(1))
              for name, var in (('torch', 'TORCH_VERSION'), ('timm', 'TIMM_VERSION'))}
    assert tested == floors, f'smoke_old_torch.sh tests {tested}, setup.py states {floors}'
    readme = (root / 'README.md').read_text()
    for name, floor in floors.items():
        stated = {Version(v) for v in re.findall(rf'`?{name}\s*(?:>=|≥)\s*([\d.]*\d)', readme)}
        assert stated == {floor}, f'README states {name} floors {stated}, setup.py {floor}'
        ranges = re.findall(rf'{name} ([\d.]*\d) to ', readme)
        assert not ranges, f'README states a {name} range from {ranges}; the floor is {floor}'


def test_cpu_kernel_builds_into_a_user_cache_keyed_by_its_inputs(tmp_path, monkeypatch):
    """The build folder is under TORCH_EXTENSIONS_DIR, else torch's per-user cache ($XDG_CACHE_HOME), never in
    the package; it changes with the source's contents and the flags, not with the source's file time."""
    import os
    import shutil
    from pathlib import Path

    from vssm.ops import cpu_kernel
    monkeypatch.delenv('TORCH_EXTENSIONS_DIR', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    folder = cpu_kernel.build_directory()
    assert folder.parent == (tmp_path / 'xdg' / 'torch_extensions').resolve()
    assert folder.name.startswith(cpu_kernel.extension_name() + '_')
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'ext'))
    folder = cpu_kernel.build_directory()
    assert folder.parent == tmp_path / 'ext'
    assert Path(vssm.__file__).parent not in folder.parents

    source = tmp_path / 'plan_scan_cpu.cpp'
    shutil.copy(cpu_kernel._SOURCE, source)
    monkeypatch.setattr(cpu_kernel, '_SOURCE', source)
    assert cpu_kernel.build_directory() == folder  # same contents, another path
    os.utime(source, (1e10, 1e10))  # a reinstall writes the same source anew
    assert cpu_kernel.build_directory() == folder
    source.write_text(source.read_text() + '\n// changed\n')
    assert cpu_kernel.build_directory() != folder
    monkeypatch.setenv(cpu_kernel.NATIVE_ENV, '0')
    assert cpu_kernel.build_directory().name.startswith('vssm_plan_scan_cpu_generic_')


def test_cpu_kernel_built_once_loads_without_a_rebuild(tmp_path, monkeypatch, capfd):
    """A kernel built before is imported as it is, even when its source file is newer (a reinstalled wheel)."""
    import os
    import shutil

    import pytest
    from vssm.ops import cpu_kernel
    if cpu_kernel.load_extension() is None:
        pytest.skip('no C++ compiler: the fused CPU scan is not built here')
    built = cpu_kernel.load_extension().__file__
    source = tmp_path / 'plan_scan_cpu.cpp'
    shutil.copy(cpu_kernel._SOURCE, source)
    os.utime(source, (1e10, 1e10))
    monkeypatch.setattr(cpu_kernel, '_SOURCE', source)
    monkeypatch.setattr(cpu_kernel, '_EXT', None)
    capfd.readouterr()
    ext = cpu_kernel.load_extension()
    assert ext is not None and ext.__file__ == built
    assert 'building' not in capfd.readouterr().err
    assert ext.plan_scan_split(2, 4, 96, 0) == cpu_kernel.load_extension().plan_scan_split(2, 4, 96, 0)
