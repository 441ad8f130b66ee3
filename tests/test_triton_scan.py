"""The fused Triton plan scan against the reference: forward values and every gradient, and its schedule.

On CPU the real kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before Triton is
imported): float32 kernels against the float64 reference at small shapes, every plan kind and merge, the
low-rank Δ (SS2D's layout: Δ's factor, B and C are strided slices of one projection) and full Δ, forward
segments, backward state passes, channel splits and parameter work groups forced small so every code path
runs. The schedule and its cost model are checked on the CPU at the real shapes the models meet. GPU
tests (marked ``gpu``) repeat the checks at real layer shapes in float32 / float16 / bfloat16.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

os.environ['TRITON_INTERPRET'] = '1'  # takes effect only if Triton is not imported yet in this process
triton = pytest.importorskip('triton', reason='Triton is an optional dependency (torch ships it on Linux CUDA builds)')

from scan_cases import (  # noqa: E402
    ATROUS, VIM, VMAMBA, WINDOWS, backend_runner, check_against_reference, make_scan_case,
    reference_with_grads, run_with_grads,
)
from vssm.ops import _triton_schedule, build_index, plan_scan_reference, plan_selective_scan  # noqa: E402
from vssm.ops import scan_cost, triton_scan  # noqa: E402

# Triton decides at import whether its @jit functions (tl.zeros, tl.sum, ...) are interpreted. When an
# earlier test module imported it first (timm imports Triton), the CPU kernel tests cannot run in this
# process: test_interpreted_tests_in_subprocess runs them in a fresh one instead.
INTERPRETED = type(triton.language.zeros).__name__ == 'InterpretedFunction'
interpreted = pytest.mark.skipif(not INTERPRETED, reason='Triton was imported before TRITON_INTERPRET=1 was set; '
                                                         'run by test_interpreted_tests_in_subprocess')

# mamba_ssm's tests/ops/test_selective_scan.py: (rtol, atol) for outputs; gradients get the same
# multipliers it uses (u x2, delta x5 / x10, weights rtolw / atolw x5)
TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def make_case(plan, Bt, Dm, N, H, W, *, rank=2, merge='sum', seq_u=False, with_z=True, channel_last=True,
              dtype=torch.float32, device='cpu', mamba_init=False, index=None):
    """This file's defaults: the models' layouts (u / z channel-last views, Δ's factor, B and C strided slices of
    one (B, K, Lk, R + 2N) projection), float32 parameters; ``rank`` 0 gives full Δ."""
    return make_scan_case(plan, H, W, batch=Bt, channels=Dm, d_state=N, rank=rank, merge=merge, seq_u=seq_u,
                          with_z=with_z, channel_last=channel_last, projection=True, dtype=dtype,
                          param_dtype=torch.float32, device=device, mamba_init=mamba_init, index=index)


def reference_and_grads(case):
    """float64 reference output, a fixed output gradient and the reference input gradients."""
    return reference_with_grads(case, grad_seed=1)


def triton_and_grads(case, grad_out):
    """Through the public entry point (custom op + autograd), forced onto the triton backend."""
    return run_with_grads(backend_runner('triton'), case, grad_out)


def check_triton(case, rtol=2e-5, atol=2e-5):
    """Output and every gradient against the reference, in the inputs' layouts; the workspace the kernels
    allocated is the cost model's."""
    check_against_reference('triton', case, tol=(rtol, atol), layouts=True)
    _check_workspace_matches_cost_model()


def _check_workspace_matches_cost_model():
    for which, i in (('forward', 0), ('backward', 1)):
        predicted = sum(_triton_schedule.workspace(triton_scan.last_plan[which])[i].values())
        assert triton_scan.last_workspace_bytes[which] == predicted, which


def _partial_index():
    """VMamba's index on 3x5 with the last direction skipping five positions: its run does not cover the
    map, so the float32 scratch accumulator (finished by torch) is used."""
    idx = build_index(VMAMBA, 3, 5).clone()
    idx[3, 4:9] = -1
    return idx


# (name, plan, H, W, batch, channels, d_state, rank, options, merge, config)
CPU_CASES = [
    # VMamba's four directions, odd non-square map, batch 2: forward segments (state + carry passes), backward
    # chunk states, parameter work groups; float32 in-place accumulation over four runs
    ('vmamba-segments', VMAMBA, 5, 7, 2, 3, 2, 2, dict(with_z=False), 'sum', dict(segments=2, param_groups=3)),
    # two channel blocks, channel splits (float32 partials of dB / dC / d(dts)), z gate, mean, channel-first maps
    ('vmamba-mean-splits', VMAMBA, 3, 7, 1, 18, 1, 3, dict(channel_last=False), 'mean',
     dict(segments=2, channel_splits=2, param_groups=2)),
    # Vim: per-direction sequences, z, mean, odd length (cls token)
    ('vim-seq-mean', VIM, 1, 37, 1, 4, 3, 2, dict(seq_u=True), 'mean', dict(segments=2)),
    # LocalMamba windows padded on an odd map, full Δ (delta_weight None)
    ('windows-full-delta', WINDOWS, 5, 7, 1, 3, 2, 0, dict(), 'sum', dict(segments=2)),
    # EfficientVMamba atrous sub-grids (disjoint: one run writes the output directly), batch 2
    ('atrous-sum', ATROUS, 5, 7, 2, 3, 2, 2, dict(with_z=False), 'sum', dict()),
    # per-direction outputs of sub-grids: positions a direction skips are zero
    ('atrous-none', ATROUS, 3, 5, 1, 2, 2, 2, dict(), 'none', dict()),
    ('vmamba-none-full-delta', VMAMBA, 7, 5, 1, 3, 1, 0, dict(with_z=False), 'none', dict(segments=2)),
    # GroupMamba: direction k reads and writes channel group k
    ('grouped', VMAMBA, 5, 7, 1, 3, 2, 2, dict(), 'group', dict(segments=2)),
    # d_state 16 (vanilla VMamba, EfficientVMamba, Vim)
    ('dstate16', VMAMBA, 2, 3, 1, 2, 16, 2, dict(), 'sum', dict()),
    # one direction (a single run: the output is written directly), rank above d_state
    ('single-direction', ('v_flip',), 3, 4, 1, 3, 1, 5, dict(), 'sum', dict()),
]


@interpreted
@pytest.mark.parametrize('case', CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_matches_reference_interpreted(case):
    _, plan, H, W, Bt, Dm, N, R, opts, merge, cfg = case
    case = make_case(plan, Bt, Dm, N, H, W, rank=R, merge=merge, **opts)
    with triton_scan.config(block_t=16, **cfg):
        check_triton(case)


@interpreted
def test_index_map_with_uncovered_positions_interpreted():
    """A direction run that skips map positions: float32 scratch accumulator, finished outside the kernels."""
    idx = _partial_index()
    case = make_case(VMAMBA, 1, 3, 2, 3, 5, index=idx)
    with triton_scan.config(block_t=16):
        check_triton(case)
    assert triton_scan.last_plan['forward'].out_acc == _triton_schedule.ACC_SCRATCH


@interpreted
def test_default_config_interpreted():
    """A 15x17 map (255 positions) with the default block sizes and schedule."""
    check_triton(make_case(VMAMBA, 1, 3, 1, 15, 17, rank=2, with_z=False))


def _rounded_like_kernel(x: torch.Tensor, dtype) -> torch.Tensor:
    """float32 -> dtype as the kernel's final store rounds: Triton's interpreter truncates to bfloat16 (its cast
    ignores the rounding mode); compiled kernels and float16 round to nearest even, like torch."""
    if dtype == torch.bfloat16 and INTERPRETED and x.dtype == torch.float32:
        return (x.view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return x.to(dtype)


@interpreted
@pytest.mark.parametrize('dtype,merge', [(torch.bfloat16, 'sum'), (torch.float16, 'mean')], ids=str)
def test_low_precision_is_float32_rounded_interpreted(dtype, merge):
    """16-bit inputs: the output and every gradient equal, bit for bit, the float32 kernels' results on the same
    (rounded) values, rounded to the dtype: the 16-bit accumulators (the two halves of float32 bits) add exactly
    in float32. And within mamba_ssm's tolerances of the float64 reference."""
    case = make_case(VMAMBA, 1, 3, 2, 3, 7, merge=merge, dtype=dtype)
    t = case.inputs
    ref, grad_out, ref_g = reference_and_grads(case)
    grad_out = grad_out.to(dtype).double()  # the gradient the 16-bit run sees
    with triton_scan.config(block_t=16, segments=2):
        out, g = triton_and_grads(case, grad_out)
        _check_workspace_matches_cost_model()
        out32, g32 = triton_and_grads(case.cast(torch.float32), grad_out)
    assert out.dtype == dtype and torch.equal(out, _rounded_like_kernel(out32, dtype))
    for n in g:
        assert g[n].dtype == t[n].dtype, n
        assert torch.equal(g[n], _rounded_like_kernel(g32[n], g[n].dtype)), f'd{n} is not the float32 result rounded'
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    for n in ref_g:
        scale = ref_g[n].abs().max().item()
        torch.testing.assert_close(g[n].double(), ref_g[n], rtol=rtol, atol=atol * scale, msg=lambda m: f'd{n}: {m}')


@interpreted
def test_deterministic_run_to_run_interpreted():
    """Bitwise-equal forward and every gradient across repeated calls (several runs, segments, work groups)."""
    case = make_case(VMAMBA, 1, 3, 2, 3, 7, rank=2)
    grad_out = torch.randn(1, 3, case.length, dtype=torch.float64)
    with triton_scan.config(block_t=16, segments=2, param_groups=2):
        first = triton_and_grads(case, grad_out)
        second = triton_and_grads(case, grad_out)
    assert torch.equal(first[0], second[0])
    for n in first[1]:
        assert torch.equal(first[1][n], second[1][n]), n


def test_float64_is_not_a_triton_capability():
    """The kernels compute in float32: float64 calls go to the PyTorch paths, and naming 'triton' says why not."""
    from vssm.ops import UnsupportedScanError, plan_selective_scan
    case = make_case(VIM, 1, 2, 2, 1, 5, rank=2, merge='mean', dtype=torch.float64).cast(torch.float64)
    with pytest.raises(UnsupportedScanError, match="'triton' cannot run this call: it lacks dtype torch.float64"):
        case.call(plan_selective_scan, backend='triton')
    out = case.call(plan_selective_scan)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, case.call(plan_scan_reference))


def test_supports_only_cuda_or_interpreter(monkeypatch):
    assert triton_scan.supports_device('cpu')
    monkeypatch.delenv('TRITON_INTERPRET')
    assert not triton_scan.supports_device('cpu')
    assert triton_scan.supports_device('cuda')
    assert not triton_scan.supports_device('meta')


# ------------------------------------------------------------------------------------------- schedule

@pytest.mark.parametrize('plan,H,W', [(VMAMBA, 7, 9), (WINDOWS, 5, 7), (ATROUS, 5, 7), (VIM, 1, 197),
                                      (('w7', 'w7_flip', 'v'), 14, 14)])
def test_plan_groups_cut_directions_into_disjoint_runs(plan, H, W):
    idx = build_index(plan, H, W)
    g = _triton_schedule.build_plan_groups(idx, H * W)
    assert g.runs[0][0] == 0 and g.runs[-1][1] == g.K
    assert all(a[1] == b[0] for a, b in zip(g.runs, g.runs[1:])), 'runs are consecutive, in direction order'
    for (k0, k1), covers in zip(g.runs, g.run_covers):
        seen = torch.zeros(H * W, dtype=torch.long)
        for k in range(k0, k1):
            pos = idx[k][idx[k] >= 0]
            seen[pos] += 1
        assert seen.max() <= 1, 'one launch writes each position at most once'
        assert covers == bool((seen == 1).all())
    for (_, k1), (k0, _) in zip(g.runs, g.runs[1:]):  # a run ends only where the next direction overlaps it
        assert k0 == k1
    assert g.real_steps == tuple(int((r >= 0).sum()) for r in idx)
    if plan == ATROUS:
        assert g.runs == ((0, 4),) and g.covers_all


def test_schedule_rejects_index_maps_the_kernels_cannot_write():
    idx = build_index(VMAMBA, 3, 4)
    with pytest.raises(ValueError, match='must lie in'):
        _triton_schedule.build_plan_groups(idx, 11)
    dup = idx.clone()
    dup[1, 3] = dup[1, 2]
    with pytest.raises(ValueError, match='visits a position twice'):
        _triton_schedule.build_plan_groups(dup, 12)


def test_schedule_cache_is_lru_bounded():
    cache = _triton_schedule._GROUPS
    cache.clear()
    keep = build_index(VMAMBA, 3, 3)
    _triton_schedule.plan_groups(keep, 9)
    for w in range(4, 4 + _triton_schedule._GROUPS_SIZE + 5):
        _triton_schedule.plan_groups(build_index(VIM, 1, w), w)
        _triton_schedule.plan_groups(keep, 9)  # recently used: survives
    assert len(cache) == _triton_schedule._GROUPS_SIZE
    assert any(v[0] is keep for v in cache.values())


def test_config_rejects_bad_block_sizes():
    with pytest.raises(ValueError, match='power of two'):
        _triton_schedule.ScanConfig(block_t=24)


def _schedule_shapes():
    path = os.path.join(os.path.dirname(__file__), '..', 'tools', 'benchmark_scan.py')
    import importlib.util
    spec = importlib.util.spec_from_file_location('vssm_tools_benchmark_scan', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.schedule_shapes()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32], ids=str)
def test_schedule_at_the_shapes_the_models_meet(dtype):
    """The issue's table (VMamba-T stages at 224^2 and batch 1 / 8 / 128, the Mask R-CNN 800x1333 stage maps at
    batch 2, UperNet 512^2 at batch 2 / 16, 1024^2 at batch 1, vim_tiny at 1248^2), planned for a 132-SM GPU:
    inside CUDA's grid limits, chunks of >= 16 steps, host build < 50 ms, workspace <= 2x the op's inputs."""
    for shape in _schedule_shapes():
        idx = build_index(shape.directions, shape.H, shape.W)
        problem = _triton_schedule.ScanProblem(
            batch=shape.batch, channels=shape.channels, d_state=shape.d_state, rank=shape.rank, merge=shape.merge,
            seq_u=shape.seq_u, has_z=shape.with_z, u_bytes=dtype.itemsize, delta_bytes=dtype.itemsize,
            bc_bytes=dtype.itemsize, z_bytes=dtype.itemsize, grad_bytes=dtype.itemsize)
        builds = []
        for _ in range(3):  # the host work of a cold cache: read the index map, plan the launches
            t0 = time.perf_counter()
            groups = _triton_schedule.build_plan_groups(idx, shape.H * shape.W)
            plan = _triton_schedule.plan_launch.__wrapped__(groups, problem, _triton_schedule.ScanConfig(), 264)
            builds.append(time.perf_counter() - t0)
        cost = scan_cost.scan_cost(plan)
        name = shape.label
        assert cost.fits_grid and cost.max_grid <= 2 ** 31 - 1, name  # 1D grids: y = z = 1
        assert cost.steps_per_chunk >= 16, name
        assert min(builds) < 0.05, (name, builds)
        assert cost.workspace_ratio <= 2.0, (name, cost.fwd_workspace, cost.bwd_workspace, cost.input_bytes)
        assert min(cost.programs.values()) >= 1


# ------------------------------------------------------------------------------ compiles for the GPU

_AOT_SCRIPT = textwrap.dedent('''
    import os, re, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from vssm.ops import _triton_kernels as K
    from vssm.ops._triton_schedule import ScanConfig

    I16 = ('hi_ptr', 'du_hi_ptr', 'dz_hi_ptr', 'acc_ptr', 'du_acc_ptr', 'w_acc_ptr')
    LOW = ('u_ptr', 'delta_ptr', 'B_ptr', 'C_ptr', 'z_ptr', 'out_ptr', 'du_ptr', 'ddelta_ptr', 'dz_ptr', 'g_ptr',
           'dB_ptr', 'dC_ptr')
    CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')

    def source(kernel, **constexprs):
        sig = {}
        for p in kernel.params:
            if p.is_constexpr:
                sig[p.name] = 'constexpr'
            elif p.name.endswith('_ptr'):
                sig[p.name] = ('*i32' if p.name == 'index_ptr' else '*i16' if p.name in I16 else
                               '*bf16' if p.name in LOW else '*fp32')
            else:
                sig[p.name] = 'fp32' if p.name == 'scale' else 'i32'
        return ASTSource(fn=kernel, signature=sig, constexprs=constexprs)

    cfg = ScanConfig()
    n = 0
    # VMamba-T stage 1 (d_state 1, rank 6) and the heaviest variants (d_state 16, rank 48), every option on,
    # 16-bit split accumulators, at the default block sizes and warps
    for N, RP in ((1, 8), (16, 64)):
        base = dict(N=N, NP=max(2, N), RP=RP, BD=cfg.block_d, BT=cfg.block_t, LOW_RANK=True, HAS_BIAS=True,
                    SOFTPLUS=True)
        jobs = [
            (K.segment_state_kernel, dict(base, SEQ_U=False), cfg.state_num_warps),
            (K.carry_kernel, dict(N=N, BD=cfg.block_d, CB=cfg.carry_block, REVERSE=True), cfg.num_warps),
            (K.forward_kernel, dict(base, SEQ_U=False, HAS_D=True, HAS_Z=True, MODE=3, ACC=2, STATES=True),
             cfg.num_warps),
            (K.adjoint_state_kernel, dict(base, HAS_Z=True), cfg.state_num_warps),
            (K.sequence_grad_kernel, dict(base, SEQ_U=False, HAS_D=True, HAS_Z=True, DU_MODE=2, DU_ACC=2, W_MODE=3,
                                          W_ACC=2, STATES=True, SPLIT=True), cfg.seq_grad_num_warps),
            (K.param_grad_kernel, dict(base, SEQ_U=True, HAS_Z=True, STATES=True), cfg.param_grad_num_warps),
        ]
        for kernel, constexprs, warps in jobs:
            compiled = compile(source(kernel, **constexprs), target=GPUTarget('cuda', 90, 32),
                               options=dict(num_warps=warps))
            assert compiled.asm['cubin'], kernel
            with tempfile.NamedTemporaryFile(suffix='.cubin') as f:  # registers and stack (spills) of the cubin
                f.write(compiled.asm['cubin'])
                f.flush()
                usage = subprocess.run([CUOBJDUMP, '--dump-resource-usage', f.name], capture_output=True,
                                       text=True).stdout
            m = re.search(r'REG:(\\d+) STACK:(\\d+) SHARED:(\\d+) LOCAL:(\\d+)', usage)
            print(f'N={N} R<={RP} {kernel.__name__} warps {warps} registers {m.group(1)} stack {m.group(2)} '
                  f'local {m.group(4)}')
            n += 1
    print('compiled', n)
''')


def test_kernels_compile_for_sm90():
    """Ahead-of-time compilation down to a cubin (Triton's bundled ptxas), no GPU needed: catches what the
    interpreter lets through (types of loop-carried values, layouts, unsupported ops); no register spills."""
    pytest.importorskip('triton.backends.nvidia.compiler', reason="this Triton has no NVIDIA backend to compile for")
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run([sys.executable, '-c', _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if 'ptxas' in proc.stderr and 'not found' in proc.stderr:
        pytest.skip('Triton has no ptxas here')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'compiled 12' in proc.stdout
    for line in proc.stdout.splitlines()[:-1]:
        assert line.endswith('stack 0 local 0'), line


# ------------------------------------------------------------------------------------------------ GPU

GPU_SHAPES = [
    # (name, plan, H, W, batch, channels, d_state, rank, options, merge, dtypes): real layer shapes at 224x224
    ('vmamba_t_stage1', VMAMBA, 56, 56, 2, 96, 1, 6, dict(with_z=False), 'sum',
     (torch.float32, torch.bfloat16, torch.float16)),
    ('vmamba_t_stage3_full_delta', VMAMBA, 14, 14, 2, 384, 1, 0, dict(with_z=False, channel_last=False), 'sum',
     (torch.bfloat16,)),
    ('vanilla_vmamba_stage4_z', VMAMBA, 7, 7, 2, 1536, 16, 48, dict(), 'sum', (torch.float32,)),
    ('vim_s', VIM, 1, 197, 2, 768, 16, 24, dict(seq_u=True), 'mean', (torch.bfloat16,)),
    ('localvmamba_windows', ('h', 'w7', 'v_flip', 'w2_flip'), 28, 28, 2, 192, 16, 6, dict(with_z=False), 'none',
     (torch.bfloat16,)),
    ('efficientvmamba_atrous', ATROUS, 28, 28, 2, 96, 16, 3, dict(with_z=False), 'sum', (torch.float16,)),
    ('groupmamba_grouped', VMAMBA, 28, 28, 2, 48, 1, 6, dict(with_z=False), 'group', (torch.bfloat16,)),
]
GPU_CASES = [(s, dt) for s in GPU_SHAPES for dt in s[-1]]


@pytest.mark.gpu
@pytest.mark.parametrize('shape,dtype', GPU_CASES, ids=[f'{s[0]}-{str(d)[6:]}' for s, d in GPU_CASES])
def test_gpu_matches_reference(shape, dtype):
    _, plan, H, W, Bt, Dm, N, R, opts, merge, _ = shape
    torch.manual_seed(0)
    case = make_case(plan, Bt, Dm, N, H, W, rank=R, merge=merge, dtype=dtype, device='cuda', mamba_init=True, **opts)
    t = case.inputs
    ref, grad_out, ref_g = reference_and_grads(case)
    out, g = triton_and_grads(case, grad_out)
    rtol, atol = TOL[dtype]
    rtolw, atolw = max(1e-3, rtol), max(1e-3, atol)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    tol = {'u': (rtol * 2, atol * 2), 'delta': (rtol * 5, atol * 10), 'A': (rtolw, atolw * 5),
           'B': (rtol, atol), 'C': (rtol, atol), 'D': (rtolw, atolw), 'z': (rtolw, atolw),
           'delta_bias': (rtolw, atolw), 'delta_weight': (rtolw, atolw * 5)}
    for n in ref_g:
        assert g[n].dtype == t[n].dtype and g[n].stride() == torch.empty_like(t[n]).stride(), n
        # parameter gradients sum over the batch and the sequence: compare relative to their size
        scale = ref_g[n].abs().max().item() if n in ('A', 'D', 'delta_bias', 'delta_weight', 'delta') else 1.0
        r, a = tol[n]
        torch.testing.assert_close(g[n].double(), ref_g[n], rtol=r, atol=a * max(1.0, scale),
                                   msg=lambda m: f'd{n}: {m}')


@pytest.mark.gpu
def test_gpu_deterministic_and_default_dispatch():
    case = make_case(VMAMBA, 4, 192, 1, 28, 28, rank=12, with_z=False, device='cuda', dtype=torch.bfloat16,
                     mamba_init=True)
    leaves = {n: (v.detach().requires_grad_(True) if v is not None else None) for n, v in case.inputs.items()}
    runs = []
    for _ in range(2):
        out = case.call(plan_selective_scan, leaves)  # CUDA tensors pick the triton backend
        wanted = [v for v in leaves.values() if v is not None]
        runs.append((out.detach(), torch.autograd.grad(out, wanted, torch.ones_like(out))))
    assert torch.equal(runs[0][0], runs[1][0])
    for x, y in zip(runs[0][1], runs[1][1]):
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
    """tools/benchmark_scan.py end to end on CPU: tiny shapes of every model, fused (interpreted) and unfused,
    both forms of Δ; and its schedule table (the cost model at real shapes)."""
    import csv
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'tools' / 'benchmark_scan.py'
    spec = importlib.util.spec_from_file_location('vssm_tools_benchmark_scan', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / 'scan.csv'
    rows = bench.main(['--device', 'cpu', '--smoke', '--batch', '1', '--impls', 'fused', 'unfused', '--csv', str(out)])
    assert {(r.model, r.impl) for r in rows} == {(m, i) for m in bench.MODELS for i in ('fused', 'unfused')}
    for r in rows:
        assert r.fwd_ms > 0 and r.fwd_bwd_ms > 0 and r.fwd_bwd_min_bytes > r.fwd_min_bytes > 0
        assert r.fwd_frac_copy_bw > 0 and r.model_fwd_bytes > 0
    with open(out) as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) and written[0]['device'] == 'cpu'
    # the low-rank roofline on the real VMamba-T s1 shape: u + dts (K*R) + B, C (2*K*N) + y, fp16
    s1 = bench.layers_at(224, 224)[0]
    assert bench.fused_min_bytes(s1, 1, torch.float16, False) == 2 * 3136 * (96 + 4 * 6 + 2 * 4 * 1 + 96)
    table = bench.main(['--schedule'])
    assert len(table) == len(bench.schedule_shapes())


@pytest.mark.skipif(INTERPRETED, reason='the interpreted tests ran in this process')
def test_interpreted_tests_in_subprocess():
    """The @interpreted tests above, in a fresh process where TRITON_INTERPRET=1 precedes Triton's import."""
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, '-m', 'pytest', __file__, '-q', '-p', 'no:cacheprovider', '-m', 'not gpu',
                           '-k', '(interpreted or smoke) and not in_subprocess'],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert ' passed' in proc.stdout and 'skipped' not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
