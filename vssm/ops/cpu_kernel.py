"""'cpu' backend: the fused plan scan compiled from csrc/plan_scan_cpu.cpp on first use.

torch's extension machinery builds it with the machine's C++ compiler, once per CPU kind: with
``-march=native`` (the default; ``VSSM_CPU_NATIVE=0`` builds for the generic target) the extension's name
carries a short hash of the CPU's ISA, so a cache directory shared by machines with different CPUs never
hands one machine another's binary. The build goes to a user cache (``build_directory()``), never beside the
source, so a read-only site-packages works. One line on stderr announces a build. If the build fails (no
compiler), the backend is simply not available and dispatch stays on 'fast'.

The kernel computes Δ in low-rank form itself (``delta_weight``), runs grouped plans (merge 'group'), reads
u, z and grad_out with their strides and writes the output channel-last and every gradient in its input's
layout; float64 inputs go to the PyTorch path. The cost model is at the top of the .cpp file and in
docs/scan_kernel.md ("CPU kernel").
"""
import hashlib
import importlib.util
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .backend import REDUCED_FLOAT_DTYPES, Capabilities, ScanBackend, register_backend
from .scan import CPU_KERNEL_ENV, plan_scan_fast

__all__ = ['load_extension', 'plan_scan_cpu', 'plan_scan_cpu_backward', 'extension_name', 'work_split', 'cost_model']

_SOURCE = Path(__file__).parent / 'csrc' / 'plan_scan_cpu.cpp'
NATIVE_ENV = 'VSSM_CPU_NATIVE'  # 0: build for the compiler's generic target instead of -march=native
# measured: 29 s wall, 31 s CPU on a 2-vCPU AMD EPYC (95-130 s while other jobs ran; docs/benchmarks.md);
# the compile is one process, so more cores do not shorten it
_BUILD_SECONDS = 30
_EXT = None
_FAILED = False
_MERGE_CODES = {'sum': 0, 'mean': 1, 'none': 2, 'group': 3}
_CPUINFO_KEYS = ('vendor_id', 'cpu family', 'model', 'model name', 'stepping', 'flags', 'Features',
                 'CPU implementer', 'CPU architecture', 'CPU variant', 'CPU part')


def _native() -> bool:
    return os.environ.get(NATIVE_ENV, '1') != '0'


def _isa_fingerprint() -> str:
    """What -march=native compiles for: the first CPU's model and feature flags (or the platform's name)."""
    lines = []
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if not line.strip():
                    if lines:
                        break  # the first processor is enough
                    continue
                key = line.split(':', 1)[0].strip()
                if key in _CPUINFO_KEYS:
                    lines.append(line.strip())
    except OSError:
        pass
    return '\n'.join([platform.machine(), platform.processor(), *lines])


def extension_name() -> str:
    """vssm_plan_scan_cpu_<isa hash> (native builds) or vssm_plan_scan_cpu_generic."""
    if not _native():
        return 'vssm_plan_scan_cpu_generic'
    return 'vssm_plan_scan_cpu_' + hashlib.sha1(_isa_fingerprint().encode()).hexdigest()[:10]


def _compile_flags() -> List[str]:
    flags = ['-O3', '-fno-math-errno', '-fno-trapping-math', '-fopenmp']  # no -ffast-math: exact IEEE order, NaN kept
    if _native():
        flags.append('-march=native')
    return flags


def build_directory(name: Optional[str] = None) -> Path:
    """Where the extension is built and cached: a user cache, never the package's own folder.

    The root is ``TORCH_EXTENSIONS_DIR`` if set, else torch's per-user cache
    (``torch.utils.cpp_extension.get_default_build_root()``: ``$XDG_CACHE_HOME/torch_extensions``, by default
    ``~/.cache/torch_extensions``), so an install into a read-only site-packages builds too. The folder is keyed
    by what the binary depends on: the source's contents, the flags, torch's and Python's versions. A changed
    source or another torch builds afresh; an unchanged one is found again whatever its file times (a
    reinstalled wheel writes the same source anew).
    """
    from torch.utils.cpp_extension import get_default_build_root
    name = name or extension_name()
    root = os.environ.get('TORCH_EXTENSIONS_DIR') or get_default_build_root()
    key = hashlib.sha1(_SOURCE.read_bytes())
    key.update(repr((_compile_flags(), torch.__version__, sys.implementation.cache_tag,
                     getattr(sys, 'abiflags', ''))).encode())
    return Path(root) / f'{name}_{key.hexdigest()[:12]}'


def _library_path(name: str, folder: Path) -> Path:
    return folder / (name + ('.pyd' if sys.platform == 'win32' else '.so'))


def _import_built(name: str, path: Path):
    """Import an extension module built earlier (what torch's loader does once ninja is done)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_extension(verbose: bool = False):
    """Build (first time on this CPU kind and stack) and import the extension; None when it cannot be built."""
    global _EXT, _FAILED
    if _EXT is not None or _FAILED:
        return _EXT
    name = extension_name()
    try:
        folder = build_directory(name)
        library = _library_path(name, folder)
        if library.exists():  # built before: import it as it is (no compiler, no ninja needed)
            try:
                _EXT = _import_built(name, library)
                return _EXT
            except ImportError:  # half written by a build running elsewhere: torch's loader waits for it
                pass
        from torch.utils.cpp_extension import load
        print(f'vssm: building the fused C++ CPU scan ({name}, {"-march=native" if _native() else "generic"}) '
              f'on first use into {folder}; about {_BUILD_SECONDS} s (longer on a busy machine), cached for this '
              f'CPU', file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        _EXT = load(name, [str(_SOURCE)], extra_cflags=_compile_flags(), extra_ldflags=['-fopenmp'],
                    build_directory=str(folder), verbose=verbose)
        print(f'vssm: fused C++ CPU scan built in {time.perf_counter() - t0:.0f} s', file=sys.stderr, flush=True)
    except Exception as e:  # no compiler, no headers, no writable cache: the PyTorch path still works
        _FAILED = True
        warnings.warn(f'vssm: the fused CPU scan could not be built ({type(e).__name__}: {e}); using the '
                      f'PyTorch path')
    return _EXT


# ------------------------------------------------------------------------------------------ cost model

def work_split(B: int, K: int, D: int, grouped: bool = False) -> Dict[str, int]:
    """The kernel's work split for these sizes (from the shapes only, never the thread count)."""
    ext = load_extension()
    if ext is None:
        raise RuntimeError('the fused CPU scan is not built here')
    vectors, blocks, per_block, bgroups, per_bgroup = ext.plan_scan_split(B, K, D, int(grouped))
    groups = K if grouped else 1
    return dict(vectors=vectors, blocks=blocks, vectors_per_block=per_block, batch_groups=bgroups,
                batch_per_group=per_bgroup, forward_tasks=B * groups * blocks,
                backward_tasks=bgroups * groups * blocks)


def cost_model(B: int, K: int, D: int, L: int, Lk: int, N: int, R: int, grouped: bool = False,
               train: bool = False) -> Dict[str, float]:
    """What one call of the fused CPU scan moves and computes (float32 inside the kernel), per the .cpp header.

    ``R`` = 0 for a full Δ (then read as B*K*D*Lk floats). ``min_bytes``: every input and output once
    (u, y, the [dts | B | C] rows, a full Δ); ``touched_bytes``: what the loops read and write, most of it
    from L2 (u and the y column once per direction, the rows once per 16-channel vector).
    """
    split = work_split(B, K, D, grouped)
    vectors = split['vectors']
    Cmap = K * D if grouped else D
    P = R + 2 * N
    rows, delta = B * K * Lk * P, (0 if R else B * K * D * Lk)
    out = dict(
        forward_tasks=split['forward_tasks'],
        forward_min_bytes=4 * (2 * B * Cmap * L + rows + delta),
        forward_touched_bytes=4 * (B * K * D * Lk * 3 + rows * vectors + delta + B * Cmap * L),
        forward_passes=dict(per_vector_direction=1, zero=1, gate=1),
        vector_ops_per_16_channel_steps=R + 45 + 12 * N + 4 * N,  # Δ, softplus, decays, recurrence
        delta_bytes_not_moved=4 * B * K * D * Lk if R else 0,
    )
    if train:
        chunk = (8 << 20) // ((4 + 2 * N) * 64)  # STEP_STORE_BYTES / bytes per step record
        red = B * K * split['blocks'] * Lk * P
        out.update(
            backward_tasks=split['backward_tasks'],
            backward_forward_passes=1 if Lk <= chunk else 2,
            backward_min_bytes=4 * (B * Cmap * L * 3 + rows * 2 + delta * 2),  # u, grad_out, du; rows, d rows
            backward_workspace_bytes=4 * (red + split['batch_groups'] * K * D * (N + 2 + R)),
            step_store_bytes_per_thread=min(Lk, chunk) * (4 + 2 * N) * 64,
        )
    return out


def cpu_cost(s):
    """``cost_model`` in the engine's record (vssm/ops/cost.py); computed in float32 inside the kernel."""
    from .cost import ScanCost, op_flops, op_min_bytes
    c = cost_model(s.batch, s.directions, s.channels, s.length, s.steps, s.d_state, s.rank,
                   grouped=s.merge == 'group', train=True)
    fwd = ScanCost('cpu', 'forward', bytes_moved=c['forward_touched_bytes'], min_bytes=op_min_bytes(s, 'forward'),
                   flops=op_flops(s, 'forward'), workspace_bytes=0, programs=c['forward_tasks'], launches=1,
                   details=dict(kernel_min_bytes=c['forward_min_bytes'],
                                vector_ops_per_16_channel_steps=c['vector_ops_per_16_channel_steps']))
    bwd = ScanCost('cpu', 'backward', bytes_moved=c['backward_min_bytes'] + c['backward_workspace_bytes'],
                   min_bytes=op_min_bytes(s, 'backward'), flops=op_flops(s, 'backward'),
                   workspace_bytes=c['backward_workspace_bytes'], programs=c['backward_tasks'], launches=1,
                   details=dict(forward_passes=c['backward_forward_passes'],
                                step_store_bytes_per_thread=c['step_store_bytes_per_thread']))
    return fwd, bwd


# ------------------------------------------------------------------------------------------ the backend

_EMPTY = torch.empty(0)


def _f32(t: Optional[torch.Tensor]) -> torch.Tensor:
    # float32 in the same strides: no copy for float32 inputs (other dtypes convert, keeping the layout)
    if t is None:
        return _EMPTY
    return t if t.dtype == torch.float32 else t.float()


def _small(t: Optional[torch.Tensor]) -> torch.Tensor:
    # parameters (A, D, bias, weight): small, made contiguous float32 (no copy for SS2D's)
    return _EMPTY if t is None else t.float().contiguous()


def _pack_rows(dts: Optional[torch.Tensor], B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """(Bt, K, Lk, R + 2N) float32 rows [dts | B | C]: one step's per-direction inputs, contiguous.

    A repack, on purpose: dts, B and C are K*(R+2N) floats per position against D for u (8 against 96 for
    VMamba-T stage 1), and one contiguous row per step is what the kernel's inner loop wants.
    """
    Bt, K, N, Lk = B.shape
    R = dts.shape[2] if dts is not None else 0
    shared = _one_buffer([t for t in (dts, B, C) if t is not None], R + 2 * N)
    if shared is not None:  # SS2D and the 1D mixer split one projection: read it in place
        return shared
    rows = torch.empty(Bt, K, Lk, R + 2 * N, dtype=torch.float32)
    if dts is not None:
        rows[..., :R].copy_(dts.transpose(-1, -2))
    rows[..., R:R + N].copy_(B.transpose(-1, -2))
    rows[..., R + N:].copy_(C.transpose(-1, -2))
    return rows


def _one_buffer(parts, P: int) -> Optional[torch.Tensor]:
    """The (Bt, K, Lk, P) float32 buffer that parts (each (Bt, K, width, Lk), channel stride 1) tile side by
    side, when they do (views of one contiguous projection split along channels); else None."""
    first = parts[0]
    Bt, K, _, Lk = first.shape
    strides = (K * Lk * P, Lk * P, 1, P)
    offset = 0
    for t in parts:
        if t.dtype != torch.float32 or t.stride() != strides:
            return None
        if t.data_ptr() != first.data_ptr() + 4 * offset or t.untyped_storage().data_ptr() != \
                first.untyped_storage().data_ptr():
            return None
        offset += t.shape[2]
    if offset != P:
        return None
    return first.as_strided((Bt, K, Lk, P), (K * Lk * P, Lk * P, P, 1), first.storage_offset())


def _kernel_args(u, delta, A, B, C, D, z, delta_bias, delta_weight, index):
    low_rank = delta_weight is not None
    return (_f32(u), _EMPTY if low_rank else _f32(delta), _small(delta_weight), _small(A),
            _pack_rows(delta if low_rank else None, B, C), _small(D), _small(delta_bias), _f32(z),
            index.contiguous())


def plan_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                  delta_softplus=True, delta_weight=None):
    """Same contract as plan_scan_reference; float32 compute (float64 is not among its capabilities)."""
    out = load_extension().plan_scan_forward(
        *_kernel_args(u, delta, A, B, C, D, z, delta_bias, delta_weight, index), int(length), _MERGE_CODES[merge],
        delta_softplus)
    return out if u.dtype == torch.float32 else out.to(u.dtype)


def plan_scan_cpu_backward(grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                           merge='sum', delta_softplus=True, delta_weight=None):
    """Gradients for (u, delta, A, B, C, D, z, delta_bias[, delta_weight]) in the inputs' dtypes and layouts.

    With ``delta_weight`` the second gradient is d(dts) (Bt, K, R, Lk) and a ninth, d(delta_weight), follows.
    """
    inputs = (u, delta, A, B, C, D, z, delta_bias) + ((delta_weight,) if delta_weight is not None else ())
    low_rank = delta_weight is not None
    # the channel sums (d(dts), dB, dC) are written by the kernel straight into their inputs' layouts
    g_dts = torch.empty_like(delta, dtype=torch.float32) if low_rank else _EMPTY
    g_B = torch.empty_like(B, dtype=torch.float32)
    g_C = torch.empty_like(C, dtype=torch.float32)
    du, ddelta, dA, dD, dz, dbias, dW = load_extension().plan_scan_backward(
        _f32(grad_out), *_kernel_args(u, delta, A, B, C, D, z, delta_bias, delta_weight, index), int(length),
        _MERGE_CODES[merge], delta_softplus, g_dts, g_B, g_C)
    grads = [du, g_dts if low_rank else ddelta, dA, g_B, g_C, dD if D is not None else None, dz,
             dbias if delta_bias is not None else None] + ([dW] if low_rank else [])
    return [g.to(t.dtype) if g is not None else None for g, t in zip(grads, inputs)]


def _available(device) -> bool:
    return os.environ.get(CPU_KERNEL_ENV, '1') != '0' and load_extension() is not None


# float64 is left to the PyTorch paths ('fast' is next in priority); deterministic for any thread count
register_backend(ScanBackend(
    name='cpu', forward=plan_scan_cpu, backward=plan_scan_cpu_backward, available=_available, priority=20,
    cost=cpu_cost,
    capabilities=Capabilities(devices=frozenset({'cpu'}), dtypes=REDUCED_FLOAT_DTYPES, low_rank_delta=True)))

