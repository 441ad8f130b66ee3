"""The fused Triton plan scan against the reference: forward values and every gradient.

On CPU the real kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before Triton is
imported): float32 kernels against the float64 reference at small shapes, every plan kind, both
schedules (one tile with the state carried in registers; several tiles with the chunk-state and
carry passes). The interpreter is slow, so shapes are tiny and block_t is small to get several
chunks per direction. GPU tests (marked ``gpu``) repeat the checks at real layer shapes in
float32 / float16 / bfloat16 with mamba_ssm's selective-scan tolerances.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

os.environ['TRITON_INTERPRET'] = '1'  # takes effect only if Triton is not imported yet in this process
triton = pytest.importorskip('triton')

from vssm.ops import _triton_schedule, build_index, plan_scan_reference, plan_selective_scan  # noqa: E402
from vssm.ops import triton_scan  # noqa: E402

# Triton decides at import whether its @jit functions (tl.zeros, tl.sum, ...) are interpreted. When an
# earlier test module imported it first (timm imports Triton), the CPU kernel tests cannot run in this
# process: test_interpreted_tests_in_subprocess runs them in a fresh one instead.
INTERPRETED = type(triton.language.zeros).__name__ == 'InterpretedFunction'
interpreted = pytest.mark.skipif(not INTERPRETED, reason='Triton was imported before TRITON_INTERPRET=1 was set; '
                                                         'run by test_interpreted_tests_in_subprocess')

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
VMAMBA = ('h', 'v', 'h_flip', 'v_flip')
VIM = ('h', 'h_flip')
WINDOWS = ('w2', 'w2_flip', 'w3', 'w3_flip')
ATROUS = ('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v')
# mamba_ssm's tests/ops/test_selective_scan.py: (rtol, atol) for outputs; gradients get the same
# multipliers it uses (u x2, delta x5 / x10, weights rtolw / atolw x5)
TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def make_inputs(plan, Bt, Dm, N, H, W, *, seq_u=False, with_z=True, channel_last=False, dtype=torch.float32,
                device='cpu', mamba_init=False):
    """Random inputs in the plan scan's shapes; channel_last gives u / z as (B, L, D) transposed views and
    B / C as slices of a wider tensor (the layouts SS2D produces)."""
    idx = build_index(plan, H, W, device)
    K, Lk = idx.shape
    L = H * W
    kw = dict(device=device, dtype=dtype)
    if seq_u:
        u = torch.randn(Bt, K, Dm, Lk, **kw)
    elif channel_last:
        u = torch.randn(Bt, L, Dm, **kw).transpose(1, 2)
    else:
        u = torch.randn(Bt, Dm, L, **kw)
    if channel_last:
        BC = torch.randn(Bt, K, 2 + 2 * N, Lk, **kw)
        B, C = BC[:, :, 2:2 + N], BC[:, :, 2 + N:]
        z = torch.randn(Bt, L, Dm, **kw).transpose(1, 2) if with_z else None
    else:
        B, C = torch.randn(Bt, K, N, Lk, **kw), torch.randn(Bt, K, N, Lk, **kw)
        z = torch.randn(Bt, Dm, L, **kw) if with_z else None
    f32 = dict(device=device, dtype=torch.float32)  # parameters stay float32, as in the models
    if mamba_init:  # mamba_ssm's test distribution
        delta = 0.5 * torch.rand(Bt, K, Dm, Lk, **kw)
        A = -0.5 * torch.rand(K * Dm, N, **f32)
        bias = 0.5 * torch.rand(K * Dm, **f32)
    else:
        delta = 0.5 * torch.randn(Bt, K, Dm, Lk, **kw)
        A = -torch.rand(K * Dm, N, **f32) - 0.2
        bias = 0.1 * torch.randn(K * Dm, **f32)
    t = dict(u=u, delta=delta, A=A, B=B, C=C, D=torch.randn(K * Dm, **f32), z=z, delta_bias=bias)
    return t, idx, L


def _leaves(t, dtype=None):
    out = {}
    for n, v in t.items():
        if v is None:
            out[n] = None
            continue
        v = v.detach()
        out[n] = (v.to(dtype) if dtype is not None else v.clone()).requires_grad_(True)
    return out


def reference_and_grads(t, idx, L, merge, grad_seed=1):
    """float64 reference output, a fixed output gradient and the reference input gradients."""
    leaves = _leaves(t, torch.float64)
    out = plan_scan_reference(*[leaves[n] for n in NAMES], index=idx, length=L, merge=merge)
    g = torch.Generator(device='cpu').manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    out.backward(grad_out)
    return out.detach(), grad_out, {n: v.grad for n, v in leaves.items() if v is not None}


def triton_and_grads(t, idx, L, merge, grad_out):
    """Through the public entry point (custom op + autograd), forced onto the triton backend."""
    leaves = _leaves(t)
    out = plan_selective_scan(*[leaves[n] for n in NAMES], index=idx, length=L, merge=merge, backend='triton')
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {n: v.grad for n, v in leaves.items() if v is not None}


def check_against_reference(t, idx, L, merge, rtol=2e-5, atol=2e-5):
    ref, grad_out, ref_g = reference_and_grads(t, idx, L, merge)
    out, g = triton_and_grads(t, idx, L, merge, grad_out)
    assert out.dtype == t['u'].dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    assert set(g) == set(ref_g), 'every input that is given gets a gradient'
    for n in ref_g:
        assert g[n].shape == t[n].shape and g[n].dtype == t[n].dtype, n
        torch.testing.assert_close(g[n].double(), ref_g[n], rtol=rtol, atol=atol, msg=lambda m: f'd{n}: {m}')


# (name, plan, H, W, batch, channels, d_state, options, merge, tiles, block_t)
CPU_CASES = [
    # VMamba's four directions, one tile: the output program walks each direction, state carried across chunks
    ('vmamba-one-tile', VMAMBA, 5, 7, 1, 5, 3, dict(), 'sum', 1, 8),
    # several tiles: chunk states + carry pass; per-direction outputs; no z; odd non-square map
    ('vmamba-tiles-none', VMAMBA, 7, 5, 1, 3, 1, dict(with_z=False), 'none', 3, 8),
    # Vim: per-direction sequences (its two directions have their own conv), merge mean, cls-length odd
    ('vim-seq-mean', VIM, 1, 33, 1, 4, 4, dict(seq_u=True), 'mean', 2, 8),
    # LocalMamba windows with padding on an odd map, channel-last u / z and strided B / C
    ('windows-padded', WINDOWS, 5, 7, 1, 3, 2, dict(channel_last=True), 'sum', 2, 8),
    # EfficientVMamba atrous sub-grids: unequal direction lengths (trailing padding), a scatter merge
    ('atrous-odd', ATROUS, 5, 7, 2, 3, 2, dict(with_z=False), 'sum', 2, 8),
    ('atrous-none', ATROUS, 3, 5, 1, 2, 2, dict(), 'none', 1, 4),
    # d_state 16 (vanilla VMamba, EfficientVMamba, Vim)
    ('vmamba-dstate16', VMAMBA, 2, 3, 1, 2, 16, dict(), 'sum', 2, 4),
]


@interpreted
@pytest.mark.parametrize('case', CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_matches_reference_interpreted(case):
    _, plan, H, W, Bt, Dm, N, opts, merge, tiles, block_t = case
    t, idx, L = make_inputs(plan, Bt, Dm, N, H, W, **opts)
    with triton_scan.config(tiles=tiles, block_t=block_t):
        check_against_reference(t, idx, L, merge)


@interpreted
def test_sequence_length_256_default_blocks():
    """A 15x17 map (255 positions) with the default block sizes and schedule."""
    t, idx, L = make_inputs(VMAMBA, 1, 3, 2, 15, 17)
    check_against_reference(t, idx, L, 'sum')


@interpreted
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_inputs_interpreted(dtype):
    """float16 / bfloat16 u, delta, B, C, z (float32 parameters): float32 accumulation, outputs and
    gradients in the inputs' dtypes, within mamba_ssm's tolerances of the float64 reference."""
    t, idx, L = make_inputs(VMAMBA, 1, 3, 2, 3, 4, dtype=dtype)
    ref, grad_out, ref_g = reference_and_grads(t, idx, L, 'sum')
    with triton_scan.config(tiles=2, block_t=8):
        out, g = triton_and_grads(t, idx, L, 'sum', grad_out)
    rtol, atol = TOL[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    for n in ref_g:
        assert g[n].dtype == t[n].dtype, n
        scale = ref_g[n].abs().max().item()
        torch.testing.assert_close(g[n].double(), ref_g[n], rtol=rtol, atol=atol * scale, msg=lambda m: f'd{n}: {m}')


@interpreted
def test_deterministic_and_matches_between_schedules():
    """Bitwise-equal repeats; one tile and several tiles agree to rounding."""
    t, idx, L = make_inputs(VMAMBA, 1, 3, 2, 5, 6)
    args = [t[n] for n in NAMES]
    with triton_scan.config(tiles=1, block_t=8):
        a = triton_scan.triton_plan_scan(*args, index=idx, length=L)
        b = triton_scan.triton_plan_scan(*args, index=idx, length=L)
    with triton_scan.config(tiles=3, block_t=8):
        c = triton_scan.triton_plan_scan(*args, index=idx, length=L)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_float64_falls_back_to_reference():
    t, idx, L = make_inputs(VIM, 1, 2, 2, 1, 5, dtype=torch.float64)
    t = {n: (v.double() if v is not None else None) for n, v in t.items()}
    args = [t[n] for n in NAMES]
    out = triton_scan.triton_plan_scan(*args, index=idx, length=L, merge='mean')
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, plan_scan_reference(*args, index=idx, length=L, merge='mean'))


def test_supports_only_cuda_or_interpreter(monkeypatch):
    assert triton_scan.supports_device('cpu')
    monkeypatch.delenv('TRITON_INTERPRET')
    assert not triton_scan.supports_device('cpu')
    assert triton_scan.supports_device('cuda')
    assert not triton_scan.supports_device('meta')


# ------------------------------------------------------------------------------------------- schedule

@pytest.mark.parametrize('plan,H,W', [(VMAMBA, 7, 9), (WINDOWS, 5, 7), (ATROUS, 5, 7), (VIM, 1, 197),
                                      (('w7', 'w7_flip', 'v'), 14, 14)])
@pytest.mark.parametrize('min_tiles', [1, 4])
def test_schedule_covers_every_step_once(plan, H, W, min_tiles):
    idx = build_index(plan, H, W)
    K, Lk = idx.shape
    block_t = 8
    s = _triton_schedule.build_schedule(idx, H * W, block_t, min_tiles)
    assert (s.n_tiles == 1) == (min_tiles == 1)
    starts = s.tile_start.tolist()
    assert starts[0] == 0 and starts[-1] == H * W and all(a < b for a, b in zip(starts, starts[1:]))
    seen = torch.zeros(K, Lk, dtype=torch.long)
    for c in range(s.n_chunks):
        k, a, e = int(s.chunk_k[c]), int(s.chunk_start[c]), int(s.chunk_end[c])
        assert 0 < e - a <= block_t
        seen[k, a:e] += 1
        pos = idx[k, a:e]
        pos = pos[pos >= 0]
        if pos.numel():  # a chunk's real positions lie in one tile
            tiles = torch.bucketize(pos, s.tile_start[1:].long(), right=True)
            assert tiles.unique().numel() == 1
    assert (seen == 1).all()
    # chunks are numbered direction-major in step order; every tile lists each chunk once
    for k in range(K):
        lo, hi = int(s.dir_chunk_ptr[k]), int(s.dir_chunk_ptr[k + 1])
        assert (s.chunk_k[lo:hi] == k).all() and (s.chunk_start[lo:hi].diff() > 0).all()
    assert sorted(s.tile_chunks.tolist()) == list(range(s.n_chunks))
    assert sorted(s.tile_chunks_rev.tolist()) == list(range(s.n_chunks))


def test_schedule_rejects_index_maps_the_kernels_cannot_write():
    idx = build_index(VMAMBA, 3, 4)
    with pytest.raises(ValueError, match='must lie in'):
        _triton_schedule.build_schedule(idx, 11, 8)
    dup = idx.clone()
    dup[1, 3] = dup[1, 2]
    with pytest.raises(ValueError, match='visits a position twice'):
        _triton_schedule.build_schedule(dup, 12, 8)


# ------------------------------------------------------------------------------ compiles for the GPU

_AOT_SCRIPT = textwrap.dedent('''
    import sys
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from vssm.ops import _triton_kernels as K

    def source(kernel, **constexprs):
        ints = ('index_ptr',)
        low = ('u_ptr', 'delta_ptr', 'B_ptr', 'C_ptr', 'z_ptr', 'out_ptr', 'du_ptr', 'ddelta_ptr', 'dz_ptr', 'gout_ptr')
        sig = {}
        for p in kernel.params:
            if p.is_constexpr:
                sig[p.name] = 'constexpr'
            elif p.name.endswith('_ptr'):
                int_ptr = p.name in ints or p.name.startswith(('chunk_', 'tile_', 'dir_'))
                sig[p.name] = '*i32' if int_ptr else ('*bf16' if p.name in low else '*fp32')
            else:
                sig[p.name] = 'fp32' if p.name == 'scale' else 'i32'
        return ASTSource(fn=kernel, signature=sig, constexprs=constexprs)

    opts = dict(N=16, NP=16, BT=32, HAS_BIAS=True, SOFTPLUS=True)
    jobs = [
        (K.chunk_state_kernel, dict(opts, BD=8, SEQ_U=False), 4),
        (K.carry_kernel, dict(N=16, NP=16, BD=8, REVERSE=True), 4),
        (K.forward_kernel, dict(opts, BD=16, BP=64, SEQ_U=False, HAS_D=True, HAS_Z=True, PER_DIR=False,
                                LOAD_STATES=True), 8),
        (K.adjoint_state_kernel, dict(opts, BD=8, HAS_Z=True, PER_DIR=True), 4),
        (K.backward_kernel, dict(opts, BD=8, BP=64, SEQ_U=True, HAS_D=True, HAS_Z=True, PER_DIR=False,
                                 LOAD_ADJOINT=True), 4),
    ]
    for kernel, constexprs, warps in jobs:
        compiled = compile(source(kernel, **constexprs), target=GPUTarget('cuda', 90, 32),
                           options=dict(num_warps=warps))
        assert compiled.asm['cubin'], kernel
    print('compiled', len(jobs))
''')


def test_kernels_compile_for_sm90():
    """Ahead-of-time compilation down to a cubin (Triton's bundled ptxas), no GPU needed: catches what
    the interpreter lets through (types of loop-carried values, layouts, unsupported ops)."""
    pytest.importorskip('triton.backends.nvidia.compiler')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run([sys.executable, '-c', _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if 'ptxas' in proc.stderr and 'not found' in proc.stderr:
        pytest.skip('Triton has no ptxas here')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'compiled 5' in proc.stdout


# ------------------------------------------------------------------------------------------------ GPU

GPU_SHAPES = [
    # (name, plan, H, W, batch, channels, d_state, options, merge): real layer shapes at 224x224
    ('vmamba_t_stage1', VMAMBA, 56, 56, 2, 96, 1, dict(with_z=False, channel_last=True), 'sum'),
    ('vmamba_t_stage3', VMAMBA, 14, 14, 2, 384, 1, dict(with_z=False), 'sum'),
    ('vanilla_vmamba_stage4', VMAMBA, 7, 7, 2, 1536, 16, dict(), 'sum'),
    ('vim_s', VIM, 1, 197, 2, 768, 16, dict(seq_u=True), 'mean'),
    ('localvmamba_windows', ('h', 'w7', 'v_flip', 'w2_flip'), 28, 28, 2, 192, 1, dict(with_z=False), 'none'),
    ('efficientvmamba_atrous', ATROUS, 28, 28, 2, 96, 16, dict(with_z=False), 'sum'),
]


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('shape', GPU_SHAPES, ids=[s[0] for s in GPU_SHAPES])
def test_gpu_matches_reference(shape, dtype):
    _, plan, H, W, Bt, Dm, N, opts, merge = shape
    torch.manual_seed(0)
    t, idx, L = make_inputs(plan, Bt, Dm, N, H, W, dtype=dtype, device='cuda', mamba_init=True, **opts)
    ref, grad_out, ref_g = reference_and_grads(t, idx, L, merge)
    out, g = triton_and_grads(t, idx, L, merge, grad_out)
    rtol, atol = TOL[dtype]
    rtolw, atolw = max(1e-3, rtol), max(1e-3, atol)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    tol = {'u': (rtol * 2, atol * 2), 'delta': (rtol * 5, atol * 10), 'A': (rtolw, atolw * 5),
           'B': (rtol, atol), 'C': (rtol, atol), 'D': (rtolw, atolw), 'z': (rtolw, atolw),
           'delta_bias': (rtolw, atolw)}
    for n in ref_g:
        # parameter gradients sum over the batch and the sequence: compare relative to their size
        scale = ref_g[n].abs().max().item() if n in ('A', 'D', 'delta_bias') else 1.0
        r, a = tol[n]
        torch.testing.assert_close(g[n].double(), ref_g[n], rtol=r, atol=a * max(1.0, scale),
                                   msg=lambda m: f'd{n}: {m}')


@pytest.mark.gpu
def test_gpu_deterministic_and_default_dispatch():
    t, idx, L = make_inputs(VMAMBA, 4, 192, 1, 56, 56, device='cuda', dtype=torch.float16, mamba_init=True)
    args = [t[n] for n in NAMES]
    a = plan_selective_scan(*args, index=idx, length=L)  # CUDA tensors pick the triton backend
    b = plan_selective_scan(*args, index=idx, length=L)
    assert torch.equal(a, b)
    leaves = _leaves(t)
    grads = []
    for _ in range(2):
        out = plan_selective_scan(*[leaves[n] for n in NAMES], index=idx, length=L)
        grads.append(torch.autograd.grad(out, [leaves['u'], leaves['A'], leaves['B']], torch.ones_like(out)))
    for x, y in zip(*grads):
        assert torch.equal(x, y)


@pytest.mark.gpu
def test_gpu_vmamba_model_trains_with_triton():
    import timm
    import vssm  # noqa: F401
    model = timm.create_model('vmamba_tiny_s1l8', num_classes=10).cuda()
    x = torch.randn(2, 3, 224, 224, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------------------- benchmark

@interpreted
def test_benchmark_scan_smoke(tmp_path):
    """tools/benchmark_scan.py end to end on CPU: tiny shapes of every model, fused (interpreted) and unfused."""
    import csv
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'tools' / 'benchmark_scan.py'
    spec = importlib.util.spec_from_file_location('vssm_tools_benchmark_scan', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / 'scan.csv'
    rows = bench.main(['--device', 'cpu', '--smoke', '--batch', '1', '--impls', 'fused', 'unfused', '--csv', str(out)])
    assert {(r.model, r.impl) for r in rows} == {(m, i) for m in bench.DEPTHS for i in ('fused', 'unfused')}
    for r in rows:
        assert r.fwd_ms > 0 and r.fwd_bwd_ms > 0 and r.fwd_bwd_min_bytes > r.fwd_min_bytes > 0
        assert r.fwd_frac_copy_bw > 0
    with open(out) as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) and written[0]['device'] == 'cpu'
    # the roofline formula of DESIGN section 2 on the real VMamba-T s1 shape: u + 4 delta + 2*4*1 B/C + y, fp16
    s1 = bench.LAYERS[0]
    assert bench.fused_min_bytes(s1, 1, torch.float16, False) == 2 * (96 * 3136 * 6 + 2 * 4 * 3136)


@pytest.mark.skipif(INTERPRETED, reason='the interpreted tests ran in this process')
def test_interpreted_tests_in_subprocess():
    """The @interpreted tests above, in a fresh process where TRITON_INTERPRET=1 precedes Triton's import."""
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, '-m', 'pytest', __file__, '-q', '-p', 'no:cacheprovider', '-m', 'not gpu',
                           '-k', 'not in_subprocess and not compile_for_sm90 and not schedule'],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert ' passed' in proc.stdout and 'skipped' not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
