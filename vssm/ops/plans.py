"""Direction plans: how a 2D map becomes K 1D sequences and back.

A plan is a tuple of direction names. For a map of size (H, W) it yields an index map of shape
(K, Lk): entry [k, t] is the flat map position (row-major, ``h * W + w``) read at step t of
direction k, or -1 for a padded token (zero input, still advances the state). Index maps
depend only on (plan, H, W) and are cached.

Direction names:
  ``h`` / ``v``                 row-major / column-major over the whole map
  ``w{K}``                      KxK windows, windows row-major, row-major inside; H, W padded up to K
  ``a{p}_{i}{j}_{h|v}``         atrous sub-grid x[i::p, j::p] scanned row- or column-major
  any name + ``_flip``          the same sequence reversed
"""
import re
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = [
    'describe_index', 'DirectionPlan', 'build_index', 'cross_scan', 'cross_scan_rows', 'cross_merge',
    'VMAMBA_PLAN', 'VIM_PLAN', 'EFFICIENT_VMAMBA_PLAN', 'GROUPED_PLAN', 'MERGE_MODES', 'validate_index',
    'with_middle_token',
]

# sum / mean: directions summed (averaged) back into one map; none: one map per direction;
# group: direction k owns channel group k of the map, in and out (GroupMamba)
MERGE_MODES = ('sum', 'mean', 'none', 'group')
_ATROUS = re.compile(r'^a(\d+)_(\d)(\d)_([hv])$')
_WINDOW = re.compile(r'^w(\d+)$')


def _base_order(name: str, H: int, W: int) -> torch.Tensor:
    """Flat positions of one un-flipped direction, -1 where padded."""
    grid = torch.arange(H * W, dtype=torch.long).view(H, W)
    if name == 'h':
        return grid.reshape(-1)
    if name == 'v':
        return grid.t().reshape(-1)
    m = _WINDOW.match(name)
    if m:
        k = int(m.group(1))
        Hp, Wp = -(-H // k) * k, -(-W // k) * k
        padded = torch.full((Hp, Wp), -1, dtype=torch.long)
        padded[:H, :W] = grid
        # (Hp/k, k, Wp/k, k) -> windows row-major, then rows/cols inside the window
        return padded.view(Hp // k, k, Wp // k, k).permute(0, 2, 1, 3).reshape(-1)
    m = _ATROUS.match(name)
    if m:
        p, i, j, order = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        if not (i < p and j < p):
            raise ValueError(f'atrous phase ({i}, {j}) must be below the step {p} in {name!r}')
        sub = grid[i::p, j::p]
        return (sub if order == 'h' else sub.t()).reshape(-1)
    raise ValueError(
        f'unknown scan direction {name!r}: expected h, v, w<K>, a<p>_<i><j>_<h|v>, each optionally + "_flip"')


def _direction_order(name: str, H: int, W: int) -> torch.Tensor:
    if name.endswith('_flip'):
        return _base_order(name[:-5], H, W).flip(0)
    return _base_order(name, H, W)


def with_middle_token(index: torch.Tensor, num_positions: int) -> torch.Tensor:
    """An index over a map of n positions -> the same plan over n + 1 tokens whose token n // 2 is a class token.

    Map positions from n // 2 on move up by one token, and every direction reads the class token at its own
    step n // 2, however the direction orders (or pads) the map: LocalMamba's middle class token
    (``local_vim_tiny_middle_cls_token``) is inserted into each scanned sequence at that step.
    """
    mid = num_positions // 2
    shifted = torch.where(index >= mid, index + 1, index)
    token = torch.full((index.shape[0], 1), mid, dtype=index.dtype, device=index.device)
    return torch.cat([shifted[:, :mid], token, shifted[:, mid:]], dim=1)


def describe_index(index: torch.Tensor) -> Optional[Tuple[Tuple[str, ...], int, int, bool]]:
    """(directions, H, W, middle_token) of an index map made by build_index (still cached), else None: names a
    recorded call's plan (vssm.ops.scan.record_scan_shapes)."""
    key = id(index)
    return _DESCRIBED[key] if _DESCRIBED_MAPS.get(key) is index else None


# id of a CPU index map made here -> its arguments; the weak map tells a live map from a new tensor at a reused id
_DESCRIBED: Dict[int, Tuple[Tuple[str, ...], int, int, bool]] = {}
_DESCRIBED_MAPS: 'weakref.WeakValueDictionary[int, torch.Tensor]' = weakref.WeakValueDictionary()


@lru_cache(maxsize=256)
def _index_cpu(directions: Tuple[str, ...], H: int, W: int, middle_token: bool = False) -> torch.Tensor:
    index = _make_index(directions, H, W, middle_token)
    _describe(index, (directions, H, W, middle_token))
    return index


def _describe(index: torch.Tensor, args) -> None:
    if torch.compiler.is_compiling():  # a tools-only record: nothing for dynamo to trace (weakrefs break graphs)
        return
    for dead in [k for k in _DESCRIBED if k not in _DESCRIBED_MAPS]:
        del _DESCRIBED[dead]
    _DESCRIBED[id(index)], _DESCRIBED_MAPS[id(index)] = args, index


def _make_index(directions: Tuple[str, ...], H: int, W: int, middle_token: bool = False) -> torch.Tensor:
    # a constant of the plan, never a traced value: torch.export's fake / proxy modes would otherwise turn it
    # into a fake tensor, which the cache would then hand to eager calls
    with _real_tensors():
        orders = [_direction_order(d, H, W) for d in directions]
        length = max(o.numel() for o in orders)
        # directions of unequal length (atrous phases on odd maps) are padded at the end: a causal scan's
        # earlier outputs do not depend on what follows, and padded outputs are dropped by the merge
        index = torch.full((len(orders), length), -1, dtype=torch.long)
        for k, o in enumerate(orders):
            index[k, :o.numel()] = o
        return with_middle_token(index, H * W) if middle_token else index


def _real_tensors():
    """Suspend torch dispatch modes (fake tensors, proxy tracing) while building a constant; dynamo traces
    the plain code instead (it keeps no cache, so nothing leaks)."""
    if torch.compiler.is_dynamo_compiling():
        return nullcontext()
    from torch.utils._python_dispatch import _disable_current_modes
    return _disable_current_modes()


# device copies of index maps, least recently used dropped first: multi-scale training meets many map sizes
_DEVICE_CACHE: 'OrderedDict[tuple, torch.Tensor]' = OrderedDict()
_DEVICE_CACHE_SIZE = 256


def build_index(directions: Sequence[str], H: int, W: int, device=None, middle_token: bool = False) -> torch.Tensor:
    """(K, Lk) long index map of a plan on an (H, W) map, cached per device (LRU, 256 entries).

    ``middle_token``: the sequence holds H*W + 1 tokens, a class token at H*W // 2 (see with_middle_token).
    """
    if H < 1 or W < 1:
        raise ValueError(f'a scan needs a map of at least 1x1, got {H}x{W}')
    # cached maps outlive the call: made outside inference mode, so a first forward under
    # torch.inference_mode() does not leave inference tensors that training (autograd) later refuses
    with torch.inference_mode(False):
        cpu = _index_cpu(tuple(directions), int(H), int(W), bool(middle_token))
    device = torch.device('cpu') if device is None else torch.device(device)
    if device.type == 'cpu':
        return cpu
    if device.type == 'meta':
        meta = cpu.to(device)
        _describe(meta, (tuple(directions), int(H), int(W), bool(middle_token)))
        return meta
    key = (tuple(directions), int(H), int(W), bool(middle_token), str(device))
    index = _DEVICE_CACHE.get(key)
    if index is None:
        with torch.inference_mode(False), _real_tensors():
            index = _DEVICE_CACHE[key] = cpu.to(device)
        while len(_DEVICE_CACHE) > _DEVICE_CACHE_SIZE:
            _DEVICE_CACHE.popitem(last=False)
    else:
        _DEVICE_CACHE.move_to_end(key)
    return index


# index tensors already validated, by id (weak: an entry dies with its tensor, so a new tensor at a reused
# address is checked again); the value records the tensor version and length it was checked at
_VALIDATED: 'weakref.WeakValueDictionary[int, torch.Tensor]' = weakref.WeakValueDictionary()
_VALIDATED_AT = {}


def validate_index(index: torch.Tensor, length: int) -> None:
    """Index maps must hold map positions in [0, length) or -1 (padding), each position at most once per
    direction: the fused kernels read and write through them without bounds checks or atomics.

    Checked once per index tensor and length (plans' index maps are cached, so a model pays once per map size).
    Skipped on meta/fake tensors and while torch.compile traces (the kernels' own checks still apply).
    """
    if index.device.type == 'meta' or torch.compiler.is_compiling() or _is_fake(index):
        return
    key = id(index)
    # an inference tensor has no version counter (an in-place edit cannot be seen): checked on every call
    cacheable = not index.is_inference()
    if cacheable and _VALIDATED.get(key) is index and _VALIDATED_AT.get(key) == (index._version, length):
        return
    if index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < -1 or hi >= length:
            raise ValueError(f'index must hold map positions in [0, {length}) or -1 for padding; found values '
                             f'from {lo} to {hi}')
        srt = index.sort(dim=1).values
        repeated = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if bool(repeated.any()):
            k = int(repeated.any(dim=1).nonzero()[0])
            raise ValueError(f'index direction {k} visits a map position more than once; each position may appear '
                             f'at most once per direction')
    if not cacheable:
        return
    for dead in [k for k in _VALIDATED_AT if k not in _VALIDATED]:
        del _VALIDATED_AT[dead]
    _VALIDATED[key] = index
    _VALIDATED_AT[key] = (index._version, length)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    return is_fake(t)


class DirectionPlan:
    """An ordered set of scan directions with the merge that recombines them."""

    def __init__(self, directions: Sequence[str], merge: str = 'sum'):
        if merge not in MERGE_MODES:
            raise ValueError(f'merge must be one of {MERGE_MODES}, got {merge!r}')
        self.directions = tuple(directions)
        if not self.directions:
            raise ValueError('a plan needs at least one direction')
        for d in self.directions:  # fail on a bad name now, not at the first forward
            _direction_order(d, 1, 1)
        self.merge = merge

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    def index(self, H: int, W: int, device=None, middle_token: bool = False) -> torch.Tensor:
        return build_index(self.directions, H, W, device, middle_token)

    def scan(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        if self.merge == 'group':  # direction k reads channel group k
            x = x.view(x.shape[0], self.num_directions, -1, x.shape[-1])
        return cross_scan(x, self.index(H, W, x.device))

    def __repr__(self):
        return f'DirectionPlan({list(self.directions)}, merge={self.merge!r})'

    def __eq__(self, other):
        return isinstance(other, DirectionPlan) and (self.directions, self.merge) == (other.directions, other.merge)

    def __hash__(self):
        return hash((self.directions, self.merge))


VMAMBA_PLAN = DirectionPlan(('h', 'v', 'h_flip', 'v_flip'), 'sum')
VIM_PLAN = DirectionPlan(('h', 'h_flip'), 'mean')
# GroupMamba: four channel groups, each scanned along one direction
GROUPED_PLAN = DirectionPlan(('h', 'v', 'h_flip', 'v_flip'), 'group')
# EfficientVMamba: the four dilation-2 phases are disjoint and cover the map, so 'sum' gives each position exactly
# one direction's output (a scatter; tests/test_ops_plans.py checks the cover)
EFFICIENT_VMAMBA_PLAN = DirectionPlan(('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v'), 'sum')


def _pad_index(index: torch.Tensor, length: int) -> torch.Tensor:
    # -1 (padding) points at an extra zero slot appended at position `length`
    return torch.where(index < 0, torch.full_like(index, length), index)


def cross_scan(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Map (B, C, L) shared by all directions, or (B, K, C, L) per direction -> (B, K, C, Lk)."""
    K, Lk = index.shape
    L = x.shape[-1]
    idx = _pad_index(index, L)
    x = torch.nn.functional.pad(x, (0, 1))
    if x.dim() == 3:
        B, C = x.shape[:2]
        return x.index_select(-1, idx.reshape(-1)).view(B, C, K, Lk).transpose(1, 2)
    B, _, C = x.shape[:3]
    return torch.gather(x, -1, idx.view(1, K, 1, Lk).expand(B, K, C, Lk))


def cross_scan_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Channel-last gather: (B, L, C) shared, or (B, L, K, C) one slice per direction -> (B, K, Lk, C).

    Copies whole rows of C channels (fast on CPU); padding reads an appended zero row.
    """
    K, Lk = index.shape
    Bt, L = x.shape[:2]
    C = x.shape[-1]
    if x.dim() == 4:  # direction k reads row (position * K + k) of the (B, L*K, C) view
        rows = torch.where(index < 0, torch.full_like(index, L * K),
                           index * K + torch.arange(K, device=index.device)[:, None])
        x = x.reshape(Bt, L * K, C)
    else:
        rows = _pad_index(index, L)
    x = torch.cat([x, x.new_zeros(Bt, 1, C)], dim=1)
    return x.index_select(1, rows.reshape(-1)).view(Bt, K, Lk, C)


def cross_merge(y: torch.Tensor, index: torch.Tensor, length: int, merge: str = 'sum') -> torch.Tensor:
    """Sequences (B, K, C, Lk) back to map positions: sum / mean -> (B, C, L); none -> (B, K, C, L);
    group -> (B, K*C, L) (direction k fills channel group k)."""
    K, Lk = index.shape
    B, _, C, _ = y.shape
    idx = _pad_index(index, length)
    if merge in ('none', 'group'):
        out = y.new_zeros(B, K, C, length + 1)
        out = out.scatter_add(-1, idx.view(1, K, 1, Lk).expand(B, K, C, Lk), y)[..., :length]
        return out.reshape(B, K * C, length) if merge == 'group' else out
    if merge not in ('sum', 'mean'):
        raise ValueError(f'merge must be one of {MERGE_MODES}, got {merge!r}')
    out = y.new_zeros(B, C, length + 1)
    out = out.index_add(-1, idx.reshape(-1), y.transpose(1, 2).reshape(B, C, K * Lk))[..., :length]
    return out / K if merge == 'mean' else out
