"""The scan engine's public backend protocol: what a backend implements, how it registers, how a call picks one.

A backend is a ``ScanBackend`` record: a forward function with its mode's signature, an optional backward,
a ``Capabilities`` record, an availability test and an optional cost function. ``register_backend`` adds it;
``resolve_backend`` picks one for a call by capability. Backends (built-in or not) import only the names of
this module, ``vssm.ops.cost`` and the mode's module (``vssm.ops.scan`` for the selective scan).

Modes share the protocol and differ in their argument lists (docs/scan_engine.md has both contracts):

* ``'selective'`` (Mamba-1, vssm/ops/scan.py)::

      forward(u, delta, A, B, C, D, z, delta_bias, *, index, length, merge, delta_softplus[, delta_weight])
      backward(grad_out, <the same inputs>, *, <the same options>) -> gradients of the tensor inputs

* ``'ssd'`` (Mamba-2 state space duality, vssm/ops/ssd.py), with its own argument list.

A backend without ``backward`` gets gradients by autograd through ``differentiable`` (a forward built from
differentiable torch ops; default: the mode's reference), recomputed in the op's backward
(``recompute_grads``).

Dispatch order: the ``backend=`` argument, else ``VSSM_SCAN_BACKEND``, else the capable backend of highest
``priority``. A named backend that cannot run the call raises ``UnsupportedScanError`` naming the backend and
the capability it lacks; nothing falls back silently.
"""
import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence

import torch

__all__ = [
    'Capabilities', 'ScanBackend', 'ScanRequest', 'UnsupportedScanError', 'register_backend', 'unregister_backend',
    'get_backend', 'available_backends', 'resolve_backend', 'default_backend', 'op_gradients', 'recompute_grads',
    'register_lazy_backend', 'BACKEND_ENV', 'ALL_FLOAT_DTYPES',
    'REDUCED_FLOAT_DTYPES',
]

BACKEND_ENV = 'VSSM_SCAN_BACKEND'
ALL_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
REDUCED_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})  # float32 compute inside


class UnsupportedScanError(ValueError):
    """The chosen backend lacks a capability the call needs (or is not available on this machine)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run. Dispatch compares a call's ``ScanRequest`` with it."""
    devices: FrozenSet[str]  # torch device types: 'cpu', 'cuda', 'meta'
    dtypes: FrozenSet[torch.dtype] = ALL_FLOAT_DTYPES  # of the per-step inputs (u / x)
    merges: FrozenSet[str] = frozenset({'sum', 'mean', 'none', 'group'})  # 'group': grouped plans
    # plan kinds: 'map' (u is a (Bt, D, L) map read through the index), 'sequences' (u given per direction)
    plan_kinds: FrozenSet[str] = frozenset({'map', 'sequences'})
    low_rank_delta: bool = False  # takes delta_weight (Δ computed in the kernel); otherwise the op expands Δ
    deterministic: bool = True  # bitwise the same result run to run
    exportable: bool = False  # made of standard ops that torch.export / ONNX can record

    @property
    def grouped(self) -> bool:
        return 'group' in self.merges


@dataclass(frozen=True)
class ScanRequest:
    """What one call needs of a backend (built by the mode's entry point from its inputs)."""
    mode: str
    device: str
    dtype: torch.dtype
    merge: str
    plan_kind: str = 'map'

    def missing(self, caps: Capabilities) -> Optional[str]:
        """The first capability ``caps`` lacks for this call, in words; None when it can run it."""
        if self.device not in caps.devices:
            return f'device {self.device!r} (it runs on {sorted(caps.devices)})'
        if self.dtype not in caps.dtypes:
            return f'dtype {self.dtype} (it takes {sorted(str(d) for d in caps.dtypes)})'
        if self.merge not in caps.merges:
            return f'merge {self.merge!r} (it merges {sorted(caps.merges)})'
        if self.plan_kind not in caps.plan_kinds:
            return f'plan kind {self.plan_kind!r} (it takes {sorted(caps.plan_kinds)})'
        return None


@dataclass(frozen=True)
class ScanBackend:
    """One backend of one scan mode (see the module doc for the signatures)."""
    name: str
    forward: Callable
    capabilities: Capabilities
    mode: str = 'selective'
    backward: Optional[Callable] = None
    differentiable: Optional[Callable] = None  # autograd-friendly forward for the recompute backward
    available: Callable[[torch.device], bool] = field(default=lambda device: True)
    cost: Optional[Callable] = None  # (ScanShape) -> ScanCost, see vssm/ops/cost.py
    priority: int = 0  # default choice among capable backends: the highest wins; < 0: never a default
    # devices where it may be a default (None: all of capabilities.devices); Triton runs CPU tensors only
    # under its interpreter, a test tool, never a default there
    default_devices: Optional[FrozenSet[str]] = None

    def why_not(self, request: ScanRequest) -> Optional[str]:
        """Why this backend cannot run ``request`` (None: it can)."""
        if request.mode != self.mode:
            return f'mode {request.mode!r} (it is a {self.mode!r} backend)'
        missing = request.missing(self.capabilities)
        if missing is None and not self.available(torch.device(request.device)):
            missing = f'availability on {request.device} here (not built, or its runtime is missing)'
        return missing


_REGISTRY: Dict[str, Dict[str, ScanBackend]] = {}
# built-in backends living in modules with heavy imports (Triton, a C++ build): imported on first need
_LAZY: Dict[str, Dict[str, str]] = {}


def register_backend(backend: ScanBackend) -> None:
    """Add (or replace) a backend of ``backend.mode`` under ``backend.name``."""
    if not isinstance(backend, ScanBackend):
        raise TypeError(f'register_backend expects a ScanBackend, got {type(backend).__name__}')
    _REGISTRY.setdefault(backend.mode, {})[backend.name] = backend


def unregister_backend(name: str, mode: str = 'selective') -> None:
    _REGISTRY.get(mode, {}).pop(name, None)


def register_lazy_backend(name: str, module: str, mode: str = 'selective') -> None:
    """A backend that ``module`` registers when imported (done on first need; an ImportError leaves it out)."""
    _LAZY.setdefault(mode, {})[name] = module


def get_backend(name: str, mode: str = 'selective') -> Optional[ScanBackend]:
    """The registered backend ``name`` of ``mode`` (importing a lazy built-in), or None."""
    registry = _REGISTRY.setdefault(mode, {})
    if name not in registry and name in _LAZY.get(mode, {}):
        try:
            importlib.import_module(_LAZY[mode][name])
        except ImportError:
            return None
    return registry.get(name)


def _names(mode: str) -> List[str]:
    return list(dict.fromkeys([*_REGISTRY.get(mode, {}), *_LAZY.get(mode, {})]))


def _candidates(mode: str, device: torch.device) -> Iterable[ScanBackend]:
    for name in _names(mode):
        # a lazy GPU backend's import (Triton) is only worth it for tensors on that device
        lazy_gpu = name not in _REGISTRY.get(mode, {}) and name in ('triton', 'cuda') and device.type != 'cuda'
        b = None if lazy_gpu else get_backend(name, mode)
        if b is not None:
            yield b


def available_backends(device='cpu', mode: str = 'selective') -> List[str]:
    """Names of the backends of ``mode`` that run on ``device`` here."""
    device = torch.device(device)
    return [b.name for b in _candidates(mode, device)
            if device.type in b.capabilities.devices and b.available(device)]


def resolve_backend(request: ScanRequest, backend: Optional[str] = None) -> ScanBackend:
    """The backend for ``request``: ``backend`` > $VSSM_SCAN_BACKEND > the capable one of highest priority."""
    name = backend or os.environ.get(BACKEND_ENV) or None
    if name:
        b = get_backend(name, request.mode)
        if b is None:
            where = 'argument' if backend else BACKEND_ENV
            raise UnsupportedScanError(
                f'scan backend {name!r} ({where}) is not available for mode {request.mode!r} here; expected one '
                f'of {available_backends(request.device, request.mode)}')
        missing = b.why_not(request)
        if missing is not None:
            capable = [c.name for c in _candidates(request.mode, torch.device(request.device))
                       if c.why_not(request) is None]
            raise UnsupportedScanError(f'scan backend {name!r} cannot run this call: it lacks {missing}; '
                                       f'backends that can: {capable}')
        return b
    best = None
    for b in _candidates(request.mode, torch.device(request.device)):
        if b.priority < 0 or (b.default_devices is not None and request.device not in b.default_devices):
            continue
        if b.why_not(request) is None and (best is None or b.priority > best.priority):
            best = b
    if best is None:
        raise UnsupportedScanError(f'no {request.mode!r} scan backend can run {request}; registered: '
                                   f'{_names(request.mode)}')
    return best


def op_gradients(grads: Sequence[Optional[torch.Tensor]], inputs: Sequence[Optional[torch.Tensor]],
                 others: Sequence[Optional[torch.Tensor]] = ()) -> List[torch.Tensor]:
    """Gradients as a backward custom op may return them: each in its input's dtype and strides (those of
    ``torch.empty_like(input)``: a backend that writes that layout costs no copy), none sharing memory with an
    input, with ``others`` (grad_out, the index) or with another gradient (custom ops must not return aliases;
    autograd's recompute can hand back grad_out itself, or two slices of one buffer), and an empty tensor for an
    absent input (custom ops cannot return None)."""
    def storage(t):
        return t.untyped_storage().data_ptr() if t is not None and t.numel() else None
    taken = {storage(t) for t in (*inputs, *others)} - {None}
    out = []
    for g, t in zip(grads, inputs):
        if t is None:
            out.append(torch.empty(0, dtype=inputs[0].dtype, device=inputs[0].device))
            continue
        if g.dtype != t.dtype or g.stride() != torch.empty_like(t, device='meta').stride() or storage(g) in taken:
            g = torch.empty_like(t).copy_(g)
        taken.add(storage(g))
        out.append(g)
    return out


def default_backend(device='cpu', *, mode: str = 'selective', dtype: torch.dtype = torch.float32,
                    merge: str = 'sum', plan_kind: str = 'map', backend: Optional[str] = None) -> str:
    """The name of the backend a call of these properties would get (tools report it)."""
    request = ScanRequest(mode=mode, device=torch.device(device).type, dtype=dtype, merge=merge, plan_kind=plan_kind)
    return resolve_backend(request, backend).name


def recompute_grads(fn: Callable, grad_out: torch.Tensor, inputs: Sequence[Optional[torch.Tensor]],
                    *args, **kwargs) -> List[Optional[torch.Tensor]]:
    """Gradients of every tensor of ``inputs`` (None where absent) through ``fn(*inputs, *args, **kwargs)``, a
    forward made of differentiable torch ops, recomputed now.

    Uses ``torch.func.vjp``, which runs its own autograd and so also works inside a custom op's kernel, where
    torch dispatches below autograd (``torch.autograd.grad`` would see no graph there)."""
    present = [i for i, t in enumerate(inputs) if t is not None]

    def forward(*tensors):
        full = list(inputs)
        for i, t in zip(present, tensors):
            full[i] = t
        return fn(*full, *args, **kwargs)

    _, vjp = torch.func.vjp(forward, *[inputs[i] for i in present])
    grads = iter(vjp(grad_out))
    return [next(grads) if t is not None else None for t in inputs]
