"""The Python half of scripts/check_wheel.sh (the package as a user installs it). Three steps:

    check_wheel.py contents DIST              # the sdist and the wheel in DIST carry every file of vssm/ in git
    check_wheel.py output OUT.pt              # the editable install: a small model's output and input gradient
    check_wheel.py output OUT.pt --against REF.pt --installed-in VENV
                                              # the wheel's install: the same, equal to REF bit for bit, on the
                                              # 'cpu' backend, imported from VENV, its kernel built outside it
"""
import argparse
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one small model per scan path the wheel's kernel runs: low-rank Δ four-direction plan (VMamba), grouped plan
# (GroupMamba); shrunk as in tests/smoke
MODELS = {
    'vmamba_tiny_s1l8': dict(depths=(1, 1, 1, 1), dims=16),
    'groupmamba_tiny': dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), stem_hidden_dim=8),
}


def package_files() -> list:
    """Every file of the package as the repository has it (sources, C++ included)."""
    out = subprocess.run(['git', 'ls-files', 'vssm'], cwd=ROOT, capture_output=True, text=True, check=True)
    files = sorted(out.stdout.split())
    if not any(f.endswith('.cpp') for f in files):
        sys.exit(f'check_wheel: git ls-files found no C++ source under {ROOT}/vssm')
    return files


def contents(dist: Path) -> None:
    wanted = package_files()
    (sdist,), (wheel,) = sorted(dist.glob('vssm-*.tar.gz')), sorted(dist.glob('vssm-*.whl'))
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = set(whl.namelist())
    for archive, names in ((sdist, in_sdist), (wheel, in_wheel)):
        missing = [f for f in wanted if f not in names]
        if missing:
            sys.exit(f'check_wheel: {archive.name} lacks {len(missing)} file(s) of vssm/: {missing[:10]}')
    print(f'check_wheel: {sdist.name} and {wheel.name} carry all {len(wanted)} files of vssm/ '
          f'({sum(not f.endswith(".py") for f in wanted)} compiled at run time)')


def output(out: Path, against: Path = None, venv: Path = None) -> None:
    import timm
    import torch

    import vssm
    from vssm.ops import default_backend
    from vssm.ops.cpu_kernel import build_directory, load_extension

    torch.set_num_threads(1)
    where = Path(vssm.__file__).resolve().parent
    if venv is None and where != ROOT / 'vssm':
        sys.exit(f'check_wheel: vssm imported from {where}, not from this checkout ({ROOT})')
    if venv is not None and venv.resolve() not in where.parents:
        sys.exit(f'check_wheel: vssm imported from {where}, not from the wheel installed in {venv}')
    backend = default_backend('cpu')
    if backend != 'cpu':
        sys.exit(f"check_wheel: the CPU resolves to the {backend!r} scan backend, expected 'cpu' (the fused C++ "
                 f'kernel, built from {where}/ops/csrc)')
    library = Path(load_extension().__file__).resolve()
    if where.parent in library.parents or library.parent != build_directory().resolve():
        sys.exit(f'check_wheel: the kernel was loaded from {library}, expected {build_directory()}')
    results = {}
    for name, kwargs in MODELS.items():
        torch.manual_seed(0)
        model = timm.create_model(name, **kwargs).eval()
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = model(x)
        y.square().sum().backward()
        results[name] = dict(output=y.detach(), input_grad=x.grad)
    torch.save(results, out)
    print(f"check_wheel: vssm {vssm.__version__} from {where}, "
          f"backend 'cpu', kernel {library}")
    if against is None:
        return
    ref = torch.load(against)
    for name, tensors in results.items():
        for key, value in tensors.items():
            if not torch.equal(value, ref[name][key]):
                diff = (value - ref[name][key]).abs().max().item()
                sys.exit(f'check_wheel: {name} {key} of the wheel differs from the editable install '
                         f'(max abs diff {diff:.3g})')
    print(f'check_wheel: {", ".join(results)} outputs and input gradients equal the editable install\'s, '
          f'bit for bit')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='step', required=True)
    sub.add_parser('contents').add_argument('dist', type=Path)
    run = sub.add_parser('output')
    run.add_argument('out', type=Path)
    run.add_argument('--against', type=Path)
    run.add_argument('--installed-in', type=Path)
    args = parser.parse_args()
    if args.step == 'contents':
        contents(args.dist)
    else:
        output(args.out, args.against, args.installed_in)


if __name__ == '__main__':
    main()
