"""The native CUDA backend (kernels/): it builds, its kernels are right, its schedule fits, and its loader behaves.

On CPU CI:
* test_extension_builds compiles the real extension with nvcc (`pip wheel ./kernels`, the default archs
  sm_80 + sm_90 + PTX) so a broken build fails CI, and imports the result (catches unresolved symbols).
  VSSM_CUDA_TEST_ARCHS="8.0" builds one arch instead.
* The emulated tests run the very kernel bodies of kernels/csrc/scan_kernels.h on the CPU (every GPU thread
  a fiber with a real block barrier, kernels/csrc/emulator.h) through the same binding code, against the
  float64 reference: forward values and every gradient (the low-rank factors' included), every plan kind and
  merge, odd H and W, batch 1, low precision, forced configurations that run every pass and boundary.
* The schedule test evaluates the binding's own configuration code and cost model (`schedule`) over the shapes
  the models meet (issue 11's table) for a 132-SM GPU.
On a GPU (marked `gpu`, skipped here): the built extension through plan_selective_scan(backend='cuda').
"""
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from scan_cases import PLANS, SCAN_NAMES as NAMES, ScanCase, make_scan_case
from scan_cases import check_against_reference as check_scan
from vssm.ops import plan_scan_fast, plan_scan_reference, plan_selective_scan

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / 'kernels'
# mamba_ssm's selective-scan test tolerances (rtol, atol) for the output, by input dtype
MAMBA_TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def _nvcc():
    for cand in (os.environ.get('CUDA_HOME'), '/usr/local/cuda'):
        if cand and (Path(cand) / 'bin' / 'nvcc').exists():
            return Path(cand)
    return None


def _nvcc_release(cuda_home):
    out = subprocess.run([str(cuda_home / 'bin' / 'nvcc'), '--version'], capture_output=True, text=True).stdout
    m = re.search(r'release (\d+)\.(\d+)', out)
    return (int(m.group(1)), int(m.group(2))) if m else None


# ------------------------------------------------------------------------------------------------ inputs

def make_inputs(plan, Bt=2, Dm=3, N=3, H=7, W=5, dtype=torch.float64, seq_u=False, device='cpu', scale=0.5,
                with_optional=True, rank=0, merge='sum'):
    """Random inputs of one call (channel-first, seeded) as (inputs, index, length); rank > 0: Δ in low-rank
    form; merge 'group': u and z are grouped maps (Bt, K*Dm, L)."""
    case = make_scan_case(plan, H, W, batch=Bt, channels=Dm, d_state=N, rank=rank, merge=merge, seq_u=seq_u,
                          with_z=with_optional, with_D=with_optional, with_delta_bias=with_optional, dtype=dtype,
                          device=device, delta_scale=scale, generator=torch.Generator().manual_seed(1234))
    if rank and dtype != torch.float64:  # the weight is float32 like a parameter under autocast
        case = case.with_inputs(delta_weight=case['delta_weight'].float())
    return case.inputs, case.index, case.length


def as_float32(t):
    return {n: (v.float() if v is not None else None) for n, v in t.items()}


def grad_tolerances(dtype):
    """mamba_ssm's multipliers (du x2, ddelta x5/x10, weights at least the output's when z is used)."""
    if dtype == torch.float32:
        base = dict(default=(1e-3, 1e-3))
    else:
        rtol, atol = MAMBA_TOL[dtype]
        base = dict(default=(rtol, atol), u=(rtol * 2, atol * 2), delta=(rtol * 5, atol * 10), A=(rtol, atol * 5),
                    delta_weight=(rtol * 5, atol * 10))
    return lambda n: base.get(n, base['default'])


def check_against_reference(forward, backward, t, idx, L, merge, dtype, delta_softplus=True,
                            oracle=plan_scan_reference):
    """forward(t) -> out and backward(grad_out, t) -> grads dict, on inputs `t` of `dtype`: the shared check
    (tests/scan_cases.py) with mamba_ssm's tolerances, gradient tolerances scaled to the gradient's size."""
    case = ScanCase(dict(t), idx, L, merge, delta_softplus)
    return check_scan(lambda c: forward(c.inputs), case, backward=lambda g, c: backward(g, c.inputs),
                      tol=(1e-4, 1e-4) if dtype == torch.float32 else MAMBA_TOL[dtype],
                      grad_tol=grad_tolerances(dtype), grad_scale=True, oracle=oracle)


# ------------------------------------------------------------------------------------- the real build

@pytest.mark.skipif(_nvcc() is None, reason='no CUDA toolkit (nvcc) on this machine')
def test_torch_is_a_cuda_build_matching_nvcc():
    """The extension compiles against torch's CUDA headers: torch's CUDA major version must be nvcc's."""
    assert torch.version.cuda is not None, 'torch is a CPU-only build: the CUDA extension cannot be built against it'
    torch_cuda = tuple(int(x) for x in torch.version.cuda.split('.')[:2])
    nvcc = _nvcc_release(_nvcc())
    assert nvcc is not None and nvcc[0] == torch_cuda[0], f'nvcc {nvcc} vs torch built with CUDA {torch_cuda}'


@pytest.mark.skipif(_nvcc() is None or torch.version.cuda is None, reason='needs nvcc and a CUDA build of torch')
def test_extension_builds(tmp_path):
    """`pip wheel ./kernels` compiles every kernel with nvcc; the module imports without a GPU and rejects
    CPU tensors with a clear error."""
    src = tmp_path / 'kernels'
    shutil.copytree(KERNELS, src, ignore=shutil.ignore_patterns('build', '*.egg-info', '__pycache__', '*.so'))
    env = dict(os.environ, CUDA_HOME=str(_nvcc()), MAX_JOBS=os.environ.get('MAX_JOBS', '2'))
    env.pop('TORCH_CUDA_ARCH_LIST', None)  # setup.py's default: what `pip install ./kernels` builds
    if os.environ.get('VSSM_CUDA_TEST_ARCHS'):
        env['TORCH_CUDA_ARCH_LIST'] = os.environ['VSSM_CUDA_TEST_ARCHS']
    res = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-build-isolation', '--no-deps', '--no-index',
                          '-q', '-w', str(tmp_path / 'wheel'), str(src)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, f'CUDA extension build failed:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}'
    wheels = list((tmp_path / 'wheel').glob('vssm_cuda_scan-*.whl'))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        libs = [n for n in zf.namelist() if n.startswith('vssm_cuda_scan') and n.endswith('.so')]
        assert libs, zf.namelist()
        zf.extractall(tmp_path / 'site')
    probe = ('import torch, vssm_cuda_scan as m\n'
             'x = torch.zeros(1, 1, 1)\n'
             'try:\n'
             '    m.forward(x, torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1),'
             ' None, None, None, None, torch.zeros(1, 1, dtype=torch.long), 1, 0, True)\n'
             'except ValueError as e:\n'
             '    print("ERR", e)\n'
             'print(m.schedule(True, 2, 4, 96, 1, 6, 66800, 66800)["nchunks"])\n')
    res = subprocess.run([sys.executable, '-c', probe], env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site')),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    assert 'must be a CUDA tensor' in res.stdout


# ------------------------------------------------------------------------------- the kernels, emulated

@pytest.fixture(scope='module')
def emulator():
    from torch.utils.cpp_extension import load
    if not (os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++') or shutil.which('clang++')):
        pytest.skip('no C++ compiler: the CPU emulator of the CUDA kernels cannot be built')
    # with a compiler, a build error is a failure (a broken kernel source must not pass as a skip)
    return load('vssm_scan_emulator', [str(KERNELS / 'csrc' / 'binding_emulator.cpp')],
                extra_include_paths=[str(KERNELS / 'csrc')], extra_cflags=['-O0'], verbose=False)


def _emulated(ext, chunk=0, tile=0, sub=0, slots=0, chunk_slots=0, num_sms=0):
    from vssm.ops.cuda_ext import scan_backward_with, scan_forward_with

    def fwd(t, idx, L, merge, softplus=True):
        return scan_forward_with(ext, *[t[n] for n in NAMES[:8]], index=idx, length=L, merge=merge,
                                 delta_softplus=softplus, delta_weight=t['delta_weight'], chunk=chunk, tile=tile,
                                 num_sms=num_sms)

    def bwd(g, t, idx, L, merge, softplus=True):
        grads = scan_backward_with(ext, g, *[t[n] for n in NAMES[:8]], index=idx, length=L, merge=merge,
                                   delta_softplus=softplus, delta_weight=t['delta_weight'], chunk=chunk, tile=tile,
                                   sub=sub, slots=slots, chunk_slots=chunk_slots, num_sms=num_sms)
        return dict(zip(NAMES, grads))
    return fwd, bwd


def _check_emulated(ext, config, t, idx, L, merge, dtype=torch.float32, softplus=True):
    fwd, bwd = _emulated(ext, **config)
    return check_against_reference(lambda t: fwd(t, idx, L, merge, softplus), lambda g, t: bwd(g, t, idx, L, merge,
                                   softplus), t, idx, L, merge, dtype, delta_softplus=softplus)


# 'auto': configuration chosen from the shape (one chunk on these sizes, batch 1); 'split': several chunks,
# channel tiles with an idle thread, sub-chunks of uneven length, and batches and chunks walked by one block
# (batch 3 over 2 slots, 9 chunks over 4 slots), so every pass and boundary of the kernels runs
CONFIGS = {'auto': (dict(), 1), 'split': (dict(chunk=4, tile=2, sub=3, slots=2, chunk_slots=4), 3)}


@pytest.mark.parametrize('config', list(CONFIGS))
@pytest.mark.parametrize('plan', list(PLANS))
@pytest.mark.parametrize('merge', ['sum', 'mean', 'none', 'group'])
def test_emulated_low_rank_matches_reference(emulator, config, plan, merge):
    """Low-rank Δ (what SS2D and the 1D mixer pass): values and the gradients of u, dts, delta_weight, A, B, C,
    D, z and delta_bias; Vim's plan with sequence-form u, the others with a map (grouped for 'group')."""
    if plan == 'vim' and merge == 'group':
        pytest.skip("merge 'group' reads a map u")
    cfg, Bt = CONFIGS[config]
    t, idx, L = make_inputs(PLANS[plan], Bt=Bt, H=7, W=5, seq_u=plan == 'vim', rank=2, merge=merge)
    _check_emulated(emulator, cfg, as_float32(t), idx, L, merge)


@pytest.mark.parametrize('plan', list(PLANS))
@pytest.mark.parametrize('merge', ['sum', 'none', 'group'])
def test_emulated_full_delta_matches_reference(emulator, plan, merge):
    """Full Δ (B, K, D, Lk) still works, on the split configuration."""
    if plan == 'vim' and merge == 'group':
        pytest.skip("merge 'group' reads a map u")
    t, idx, L = make_inputs(PLANS[plan], Bt=3, H=5, W=7, seq_u=plan == 'vim', merge=merge)
    _check_emulated(emulator, CONFIGS['split'][0], as_float32(t), idx, L, merge)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('rank', [0, 3])
def test_emulated_low_precision(emulator, dtype, rank):
    """float16/bfloat16 in and out, float32 inside: mamba_ssm's tolerances against the float64 reference."""
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=2, Dm=6, N=4, H=9, W=7, dtype=dtype, rank=rank)
    _check_emulated(emulator, dict(chunk=8, tile=4, sub=4), t, idx, L, 'sum', dtype)


@pytest.mark.parametrize('N', [1, 2, 16])
def test_emulated_state_sizes_and_long_chunks(emulator, N):
    """d_state buckets 1, 2 and 16 over a 16x16 map (Lk 256): chunk carries over many chunks."""
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=1, Dm=2, N=N, H=16, W=16, scale=1.0, rank=2)
    _check_emulated(emulator, dict(chunk=24, sub=5), as_float32(t), idx, L, 'sum')


def test_emulated_without_optional_inputs_or_softplus(emulator):
    t, idx, L = make_inputs(PLANS['windows'], Bt=1, H=5, W=7, with_optional=False)
    t['delta'] = t['delta'].abs() + 0.05  # without softplus delta must stay positive
    _check_emulated(emulator, dict(chunk=5, tile=2, sub=2), as_float32(t), idx, L, 'sum', softplus=False)


def test_emulated_channel_last_strided_and_mixed_dtypes(emulator):
    """u and z as channel-last views (SS2D's layout), dts/B/C as slices of one projection (x_dbl), grad_out
    channel-first; then delta in float32 beside bfloat16 activations (read as float32 copies)."""
    Bt, Dm, N, R, H, W = 2, 4, 2, 3, 5, 3
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=Bt, Dm=Dm, N=N, H=H, W=W, rank=R)
    t = as_float32(t)
    x_dbl = torch.cat([t['delta'], t['B'], t['C']], dim=2).transpose(-1, -2).contiguous()  # (B, K, Lk, R+2N)
    dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=-1)
    channel_last = {n: t[n].transpose(1, 2).contiguous().transpose(1, 2) for n in ('u', 'z')}
    t.update(**channel_last, delta=dts.transpose(-1, -2), B=Bs.transpose(-1, -2), C=Cs.transpose(-1, -2))
    assert t['u'].stride(1) == 1 and t['delta'].stride(2) == 1
    fwd, bwd = _emulated(emulator, chunk=6, tile=2, sub=4)
    out, grads = check_against_reference(lambda t: fwd(t, idx, L, 'mean'), lambda g, t: bwd(g, t, idx, L, 'mean'),
                                         t, idx, L, 'mean', torch.float32)
    # output channel-last, gradients in their inputs' layouts (what torch.empty_like gives): no copy in the op
    assert out.transpose(1, 2).is_contiguous()
    for n in ('u', 'delta', 'B', 'C', 'z'):
        assert grads[n].stride() == torch.empty_like(t[n]).stride(), n
    mixed = dict(t, u=t['u'].to(torch.bfloat16), z=t['z'].to(torch.bfloat16), B=t['B'].to(torch.bfloat16),
                 C=t['C'].to(torch.bfloat16))
    # mixed dtypes are read as float32: only the bfloat16 output rounding differs from the reference
    check_against_reference(lambda t: fwd(t, idx, L, 'mean'), lambda g, t: bwd(g, t, idx, L, 'mean'), mixed, idx, L,
                            'mean', torch.bfloat16)


def test_emulated_results_do_not_depend_on_configuration(emulator):
    """Chunking, tiling and batch slots change only float rounding; a run repeats bit for bit (no atomics)."""
    t, idx, L = make_inputs(PLANS['atrous'], Bt=3, Dm=5, N=4, H=9, W=8, rank=2)
    t = as_float32(t)
    g = torch.randn(3, 5, L)
    runs = []
    for cfg in (dict(), dict(chunk=3, tile=3, sub=2, slots=2, chunk_slots=5), dict(chunk=7, tile=2, slots=1), dict()):
        fwd, bwd = _emulated(emulator, **cfg)
        runs.append((fwd(t, idx, L, 'sum'), bwd(g, t, idx, L, 'sum')))
    for out, grads in runs[1:3]:
        torch.testing.assert_close(out, runs[0][0], rtol=1e-5, atol=1e-5)
        for n, v in grads.items():
            if v is not None:
                torch.testing.assert_close(v, runs[0][1][n], rtol=1e-4, atol=1e-4, msg=n)
    assert torch.equal(runs[0][0], runs[3][0])
    for n, v in runs[0][1].items():
        assert v is None or torch.equal(v, runs[3][1][n]), n


def test_emulated_backend_through_the_custom_op(emulator):
    """Registered like the 'cuda' backend (low rank, grouped, native backward), the emulated kernels serve
    plan_selective_scan and autograd through vssm::plan_scan / vssm::plan_scan_bwd, absent inputs included."""
    from functools import partial

    from dataclasses import replace

    from vssm.ops import ScanBackend, register_backend, unregister_backend
    from vssm.ops.cuda_ext import CAPABILITIES, scan_backward_with, scan_forward_with
    register_backend(ScanBackend(
        name='cuda_emulated', forward=partial(scan_forward_with, emulator, chunk=4, tile=2),
        backward=partial(scan_backward_with, emulator, chunk=4, tile=2, sub=3), priority=-1,
        capabilities=replace(CAPABILITIES, devices=frozenset({'cpu'}))))
    try:
        fwd, bwd = _via_op_backend('cuda_emulated')
        for with_optional, rank, merge in ((True, 2, 'sum'), (False, 0, 'sum'), (True, 2, 'group')):
            t, idx, L = make_inputs(PLANS['vmamba'], Bt=2, H=5, W=3, with_optional=with_optional, rank=rank,
                                    merge=merge)
            check_against_reference(lambda t: fwd(t, idx, L, merge), lambda g, t: bwd(g, t, idx, L, merge),
                                    as_float32(t), idx, L, merge, torch.float32)
    finally:
        unregister_backend('cuda_emulated')


# ------------------------------------------------------------------------- direct calls: clean failures

def _direct_args(t, idx, L, merge=0):
    return [t['u'], t['delta'], t['A'], t['B'], t['C'], t['D'], t['z'], t['delta_bias'], t['delta_weight'], idx, L,
            merge, True]


def test_direct_call_rejects_bad_index_values(emulator):
    """The extension checks the index itself (cached per tensor): out of range, below -1 or repeated in a
    direction is a ValueError before any kernel runs, also without vssm's Python checks."""
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=1, H=3, W=3, rank=2)
    t = as_float32(t)
    emulator.forward(*_direct_args(t, idx, L))
    bad_cases = {
        'is outside': [torch.where(idx == 0, L, idx), torch.where(idx == 0, -2, idx)],
        'twice': [torch.where(idx == 1, 0, idx)],
    }
    for match, cases in bad_cases.items():
        for bad in cases:
            with pytest.raises(ValueError, match=match):
                emulator.forward(*_direct_args(t, bad, L))
            g = torch.zeros(1, 3, L)
            with pytest.raises(ValueError, match=match):
                emulator.backward(g, *_direct_args(t, bad, L))
    # an index checked once and then changed in place is checked again (its version moved)
    mutable = idx.clone()
    emulator.forward(*_direct_args(t, mutable, L))
    mutable[0, 0] = L
    with pytest.raises(ValueError, match='is outside'):
        emulator.forward(*_direct_args(t, mutable, L))
    # a shorter length makes valid positions out of range
    with pytest.raises(ValueError):
        emulator.forward(*_direct_args(dict(t, u=t['u'][..., :L - 1].contiguous(), z=t['z'][..., :L - 1]), idx, L - 1))


def test_direct_call_rejects_bad_shapes_dtypes_and_layouts(emulator):
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=2, H=3, W=4, rank=2)
    t = as_float32(t)
    bad = {
        'u \\(map\\) must have shape': dict(u=t['u'][:, :2]),
        'delta \\(low-rank factor\\) must have shape': dict(delta=t['delta'][..., :-1]),
        'delta_weight must be': dict(delta_weight=t['delta_weight'][:, :, :1]),
        'A must be': dict(A=t['A'][:3]),
        'B must have shape': dict(B=t['B'][:, :, :2]),
        'z must have shape': dict(z=t['z'][:1]),
        'D must have shape': dict(D=t['D'][:5]),
        'must be contiguous': dict(A=t['A'].t().contiguous().t()),
    }
    for match, change in bad.items():
        with pytest.raises(ValueError, match=match):
            emulator.forward(*_direct_args(dict(t, **change), idx, L))
    with pytest.raises(TypeError, match="must have u's dtype"):
        emulator.forward(*_direct_args(dict(t, B=t['B'].half()), idx, L))
    with pytest.raises(TypeError, match='float32, float16 or bfloat16'):
        emulator.forward(*_direct_args({n: (v.double() if v is not None else None) for n, v in t.items()}, idx, L))
    with pytest.raises(ValueError, match='index must be a contiguous'):
        emulator.forward(*_direct_args(t, idx.int(), L))
    with pytest.raises(ValueError, match='merge code'):
        emulator.forward(*_direct_args(t, idx, L, merge=7))
    with pytest.raises(ValueError, match='grad_out must have shape'):
        emulator.backward(torch.zeros(2, 3, L - 1), *_direct_args(t, idx, L))
    with pytest.raises(ValueError, match='d_state N must be in 1..16|N\\) with N in 1..16'):
        emulator.forward(*_direct_args(dict(t, A=torch.zeros(t['A'].shape[0], 17)), idx, L))


# ----------------------------------------------------------------------------------- schedule and costs

# issue 11's shape table: (name, batch, K, channels, d_state, dt rank, map H, W, plan kind)
VMAMBA_T = [(96, 6), (192, 12), (384, 24), (768, 48)]  # per stage: d_inner (ssm_ratio 1), dt_rank ceil(dim/16)


def _vmamba_stages(tag, Bt, H, W):
    return [(f'{tag} s{i + 1}', Bt, 4, d, 1, r, H >> i, W >> i, 'map') for i, (d, r) in enumerate(VMAMBA_T)]


SHAPES = (
    [s for b in (1, 8, 128) for s in _vmamba_stages(f'VMamba-T 224 b{b}', b, 56, 56)]
    + [(f'Mask R-CNN 800x1333 s{i + 1} b2', 2, 4, d, 1, r, h, w, 'map')
       for i, ((d, r), (h, w)) in enumerate(zip(VMAMBA_T, [(200, 334), (100, 167), (50, 84), (25, 42)]))]
    + [s for b in (2, 16) for s in _vmamba_stages(f'UperNet 512 b{b}', b, 128, 128)]
    + _vmamba_stages('1024 b1', 1, 256, 256)
    + [('vim_tiny 1248 b1', 1, 2, 384, 16, 12, 1, 78 * 78 + 1, 'seq')]
)


def schedule_table(ext, num_sms=132, dtype=torch.bfloat16):
    """Rows of the cost model over SHAPES: forward and backward of each shape (the table in docs)."""
    from vssm.ops.cuda_ext import schedule
    rows = []
    for name, Bt, K, Dm, N, R, H, W, kind in SHAPES:
        L = H * W
        seq = kind == 'seq'
        for backward in (False, True):
            times = []
            for _ in range(3):  # the fastest of three: the machine is shared
                t0 = time.perf_counter()
                s = schedule(ext, backward=backward, Bt=Bt, K=K, Dm=Dm, N=N, R=R, Lk=L, L=L,
                             merge='mean' if seq else 'sum', seq_u=seq, has_z=seq, dtype=dtype, num_sms=num_sms)
                times.append(time.perf_counter() - t0)
            s['host_ms'] = min(times) * 1e3
            rows.append((name, s))
    return rows


def test_schedule_at_the_shapes_models_meet(emulator):
    """Issue 11's table on a 132-SM GPU: chunks >= 16 steps on average (none collapses at batch 1 or on
    detection maps), every grid inside CUDA's limits, workspace <= 2x the op's input bytes, host build < 50 ms."""
    for name, s in schedule_table(emulator):
        what = f"{name} {'backward' if s['backward'] else 'forward'}: {s}"
        assert s['mean_steps'] >= 16, what
        assert s['workspace_bytes'] <= 2 * s['input_bytes'], what
        assert s['host_ms'] < 50, what
        assert s['bytes'] >= s['min_bytes'] > 0, what
        for launch in s['launches']:
            gx, gy, gz = launch['grid']
            assert 1 <= gx < 2 ** 31 and 1 <= gy <= 65535 and 1 <= gz <= 65535, (what, launch)
            assert launch['blocks'] * launch['block'][0] == launch['threads'], (what, launch)
            assert launch['block'][0] <= 1024 and launch['smem'] <= 96 * 1024, (what, launch)


def test_schedule_is_what_the_kernels_run(emulator):
    """The cost model walks the driver's own launch sequence: the forced 'split' configuration the emulated
    tests run has the passes, grids and slots it reports; an automatic schedule with batch slots runs right."""
    from vssm.ops.cuda_ext import schedule
    s = schedule(emulator, backward=True, Bt=3, K=4, Dm=3, N=3, R=2, Lk=35, L=35, dtype=torch.float32, num_sms=1,
                 **CONFIGS['split'][0])
    assert (s['nchunks'], s['slots'], s['chunk_slots'], s['tile']) == (9, 2, 4, 2)
    assert s['launches'][-1]['grid'] == (4, 2, 1)
    assert [launch['name'] for launch in s['launches']] == (
        ['chunk_state', 'chunk_combine', 'chunk_carry', 'carry_combine'] + ['backward_main'] * 4)
    auto = schedule(emulator, backward=False, Bt=1, K=4, Dm=96, N=1, R=6, Lk=3136, L=3136)
    assert auto['nchunks'] > 1 and auto['chunk'] >= 32  # batch 1: sequence parallelism, chunks still long
    # the automatic 132-SM schedule of a small-map, high-rank shape: the workspace bound leaves 3 batch slots
    # for 4 batches (one block walks two), on a tile with idle threads; the emulated kernels run it
    s = schedule(emulator, backward=True, Bt=4, K=4, Dm=40, N=2, R=40, Lk=6, L=6, has_z=True, dtype=torch.float32)
    assert (s['slots'], s['tile']) == (3, 64) and s['workspace_bytes'] <= 2 * s['input_bytes']
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=4, Dm=40, N=2, H=3, W=2, rank=40)
    _check_emulated(emulator, dict(num_sms=132), as_float32(t), idx, L, 'sum')


# --------------------------------------------------------------------------------------------- loader

def test_loader_imports_without_the_extension():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from vssm.ops import cuda_ext
    from vssm.ops import available_backends, default_backend
    assert 'cuda' not in available_backends('cpu')
    if cuda_ext.extension() is None:
        assert 'pip install --no-build-isolation ./kernels' in cuda_ext.extension_error()
        with pytest.raises(ValueError, match="'cuda' .* is not available"):
            default_backend('cpu', backend='cuda')
    else:
        with pytest.raises(ValueError, match="lacks device 'cpu'"):
            default_backend('cpu', backend='cuda')


# -------------------------------------------------------------------------------------------- on a GPU

def _cuda_backend_or_skip():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from vssm.ops import cuda_ext
    if cuda_ext.extension() is None:
        pytest.skip(cuda_ext.extension_error())
    return cuda_ext


def _via_op_backend(backend):
    """forward/backward through plan_selective_scan (custom op + autograd) with a named backend."""
    def call(t, idx, L, merge):
        return plan_selective_scan(*[t[n] for n in NAMES[:8]], index=idx, length=L, merge=merge, backend=backend,
                                   delta_weight=t['delta_weight'])

    def bwd(g, t, idx, L, merge):
        leaves = {n: (v.detach().clone().requires_grad_(True) if v is not None else None) for n, v in t.items()}
        call(leaves, idx, L, merge).backward(g)
        return {n: (v.grad if v is not None else None) for n, v in leaves.items()}
    return call, bwd


def _via_op(idx, L, merge):
    fwd, bwd = _via_op_backend('cuda')
    return (lambda t: fwd(t, idx, L, merge)), (lambda g, t: bwd(g, t, idx, L, merge))


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('plan,merge', [('vmamba', 'sum'), ('vmamba', 'group'), ('vim', 'mean'), ('windows', 'none'),
                                        ('atrous', 'sum')])
def test_gpu_matches_reference(dtype, plan, merge):
    """Every plan kind and merge, low-rank Δ, d_state 16, odd map, batch 2: values and every gradient."""
    _cuda_backend_or_skip()
    t, idx, L = make_inputs(PLANS[plan], Bt=2, Dm=48, N=16, H=29, W=27, dtype=dtype, seq_u=plan == 'vim',
                            device='cuda', rank=3, merge=merge)
    fwd, bwd = _via_op(idx, L, merge)
    check_against_reference(fwd, bwd, t, idx, L, merge, dtype)


# real layer shapes: (batch, channels, d_state, dt rank, H, W, plan, merge, seq u)
GPU_SHAPES = {
    'vmamba_t_s1_b1': (1, 96, 1, 6, 56, 56, 'vmamba', 'sum', False),
    'vmamba_t_s1_b8': (8, 96, 1, 6, 56, 56, 'vmamba', 'sum', False),
    'vmamba_t_s4_b32': (32, 768, 1, 48, 7, 7, 'vmamba', 'sum', False),
    'maskrcnn_s1_b2': (2, 96, 1, 6, 200, 334, 'vmamba', 'sum', False),
    'vanilla_s1_b2_full_delta': (2, 192, 16, 0, 56, 56, 'vmamba', 'sum', False),
    'vim_tiny_224_b2': (2, 384, 16, 12, 1, 197, 'vim', 'mean', True),
    'groupmamba_s1_b2': (2, 24, 1, 6, 56, 56, 'vmamba', 'group', False),
}


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shape', list(GPU_SHAPES))
def test_gpu_real_shapes(shape, dtype):
    """Real layer shapes (the automatic schedule: chunked at batch 1 and on detection maps, batch slots at
    stage 4): values and every gradient against the float64 reference."""
    _cuda_backend_or_skip()
    Bt, Dm, N, R, H, W, plan, merge, seq = GPU_SHAPES[shape]
    t, idx, L = make_inputs(PLANS[plan], Bt=Bt, Dm=Dm, N=N, H=H, W=W, dtype=dtype, seq_u=seq, device='cuda',
                            rank=R, merge=merge)
    fwd, bwd = _via_op(idx, L, merge)
    check_against_reference(fwd, bwd, t, idx, L, merge, dtype, oracle=plan_scan_fast)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_gpu_deterministic_and_layouts(dtype):
    """No float atomics: two runs agree bit for bit (forward and every gradient); channel-last u/z give the
    same values as channel-first; the output is channel-last and gradients keep their inputs' layouts."""
    _cuda_backend_or_skip()
    t, idx, L = make_inputs(PLANS['windows'], Bt=2, Dm=64, N=16, H=29, W=31, dtype=dtype, device='cuda', rank=4)
    fwd, bwd = _via_op(idx, L, 'sum')
    g = torch.randn(2, 64, L, device='cuda', dtype=dtype)
    first, second = (fwd(t), bwd(g, t)), (fwd(t), bwd(g, t))
    assert torch.equal(first[0], second[0])
    for n in NAMES:
        assert torch.equal(first[1][n], second[1][n]), n
    cl = dict(t, u=t['u'].transpose(1, 2).contiguous().transpose(1, 2),
              z=t['z'].transpose(1, 2).contiguous().transpose(1, 2))
    assert torch.equal(fwd(cl), first[0])
    assert first[0].transpose(1, 2).is_contiguous()
    grads_cl = bwd(g, cl)
    assert grads_cl['u'].stride() == cl['u'].stride() and grads_cl['z'].stride() == cl['z'].stride()


@pytest.mark.gpu
def test_gpu_direct_call_rejects_bad_index():
    cuda_ext = _cuda_backend_or_skip()
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=1, H=4, W=4, dtype=torch.float32, device='cuda', rank=2)
    with pytest.raises(ValueError, match='is outside'):
        cuda_ext.extension().forward(*_direct_args(t, torch.where(idx == 3, L + 5, idx), L))


@pytest.mark.gpu
def test_gpu_env_var_selects_cuda(monkeypatch):
    _cuda_backend_or_skip()
    from vssm.ops import BACKEND_ENV, default_backend
    monkeypatch.setenv(BACKEND_ENV, 'cuda')
    assert default_backend('cuda') == 'cuda'


def test_schedule_maps_onto_the_engine_cost_record(emulator):
    """The extension's cost model in the engine's one record: the binding's bytes, minimum and workspace carried
    over one to one, the op's FLOPs, and a minimum within the parameters of the engine's own count."""
    import dataclasses

    from vssm.ops.cost import ScanCost, ScanShape, op_flops, op_min_bytes
    from vssm.ops.cuda_ext import schedule, schedule_cost
    shape = ScanShape(batch=8, directions=4, channels=96, d_state=1, steps=3136, length=3136, rank=6,
                      dtype=torch.bfloat16, plan=('h', 'v', 'h_flip', 'v_flip'), hw=(56, 56))
    fwd, bwd = schedule_cost(emulator, shape)
    for cost, backward in ((fwd, False), (bwd, True)):
        raw = schedule(emulator, backward=backward, Bt=8, K=4, Dm=96, N=1, R=6, Lk=3136, L=3136)
        assert isinstance(cost, ScanCost) and cost.backend == 'cuda'
        assert (cost.bytes_moved, cost.min_bytes, cost.workspace_bytes) == (raw['bytes'], raw['min_bytes'],
                                                                             raw['workspace_bytes'])
        assert cost.launches == len(raw['launches']) and cost.programs >= 1
        assert cost.flops == op_flops(shape, cost.phase)
        assert cost.traffic_ratio >= 1
    # the binding counts the same inputs and outputs as the engine, parameters aside
    params = 4 * 96 * (1 + 2 + 6) * 4
    assert abs(fwd.min_bytes - op_min_bytes(shape, 'forward')) <= params
    half = schedule_cost(emulator, dataclasses.replace(shape, batch=4))[0]
    assert half.min_bytes < fwd.min_bytes
