"""Host-side work plan of the fused Triton plan scan: tiles of output positions and chunks of steps.

No Triton here (importable anywhere). Given an index map (K, Lk) of a direction plan:

* the L map positions are cut into ``n_tiles`` contiguous ranges (tiles). One output program owns
  one tile (for one batch element and block of channels): it is the only writer of those output
  positions, which makes the merge deterministic without atomics;
* every direction's steps are cut into chunks: maximal runs of consecutive steps whose positions
  fall in one tile, split further into pieces of at most ``block_t`` steps (one scan tile). Padded
  steps (index -1) join the run of their neighbour so they never split a chunk.

Chunks are numbered direction-major, in step order (the order the state carry walks them). Each
tile lists its chunks ordered by (direction, step) for the forward pass, and by (direction,
reversed step) for the backward pass (the adjoint runs backward in time).
"""
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ['ScanSchedule', 'build_schedule', 'get_schedule']

MAX_GRID_DIM = 65535  # CUDA's limit on grid dimensions y and z


@dataclass
class ScanSchedule:
    K: int
    Lk: int
    length: int
    block_t: int
    n_tiles: int
    n_chunks: int
    index: torch.Tensor  # (K, Lk) int32
    tile_start: torch.Tensor  # (n_tiles + 1,) int32: tile j owns positions [tile_start[j], tile_start[j+1])
    chunk_k: torch.Tensor  # (n_chunks,) int32 direction of each chunk
    chunk_start: torch.Tensor  # (n_chunks,) int32 first step
    chunk_end: torch.Tensor  # (n_chunks,) int32 one past the last step
    dir_chunk_ptr: torch.Tensor  # (K + 1,) int32: direction k owns chunks [ptr[k], ptr[k+1])
    tile_chunk_ptr: torch.Tensor  # (n_tiles + 1,) int32 into the two lists below
    tile_chunks: torch.Tensor  # (n_chunks,) int32 chunk ids per tile, (direction, step) order
    tile_chunks_rev: torch.Tensor  # (n_chunks,) int32 chunk ids per tile, (direction, -step) order

    @property
    def single_tile(self) -> bool:
        """One tile: the output program walks whole directions and carries the state itself."""
        return self.n_tiles == 1

    def to(self, device) -> 'ScanSchedule':
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return ScanSchedule(**fields)


def _check_index(idx: np.ndarray, length: int) -> None:
    """The kernels write map positions without bounds checks or atomics: every position must be in range
    and visited at most once per direction (true of every plans.build_index map)."""
    if idx.size and (idx.max() >= length or idx.min() < -1):
        raise ValueError(f'index map entries must lie in [-1, {length}), got [{idx.min()}, {idx.max()}]')
    for k, row in enumerate(idx):
        real = row[row >= 0]
        if np.unique(real).size != real.size:
            raise ValueError(f'direction {k} of the index map visits a position twice; the fused scan needs each '
                             f'direction to be a (padded) permutation of map positions')


def _fill_padding(tiles: np.ndarray) -> np.ndarray:
    """Padded steps (-1) take the tile of the previous real step (of the next one at the start)."""
    out = tiles.copy()
    for row in out:
        real = np.flatnonzero(row >= 0)
        if real.size == 0:
            row[:] = 0
            continue
        # forward fill, then back-fill the leading pads
        last = np.maximum.accumulate(np.where(row >= 0, np.arange(row.size), -1))
        row[:] = np.where(last >= 0, row[np.maximum(last, 0)], row[real[0]])
    return out


def _chunk_starts(index: np.ndarray, tile_size: int, block_t: int):
    """(tile of each step, boolean chunk-start flags), both (K, Lk)."""
    K, Lk = index.shape
    tiles = _fill_padding(np.where(index >= 0, index // tile_size, -1))
    starts = np.zeros((K, Lk), dtype=bool)
    starts[:, 0] = True
    starts[:, 1:] = tiles[:, 1:] != tiles[:, :-1]
    # split long runs into scan tiles of block_t steps
    t = np.arange(Lk)
    for k in range(K):
        run_start = np.maximum.accumulate(np.where(starts[k], t, 0))
        starts[k] |= (t - run_start) % block_t == 0
    return tiles, starts


def _candidate_tile_counts(length: int, min_tiles: int):
    """Tile counts to try: from min_tiles up to 4x, each giving a distinct tile size."""
    seen, counts = set(), []
    for m in range(min_tiles, min(length, 4 * min_tiles) + 1):
        size = math.ceil(length / m)
        if size not in seen:
            seen.add(size)
            counts.append(size)
        if len(counts) >= 96:
            break
    return counts


def build_schedule(index: torch.Tensor, length: int, block_t: int, min_tiles: int = 1) -> ScanSchedule:
    """Plan tiles and chunks on the CPU; ``min_tiles`` > 1 asks for sequence parallelism."""
    idx = index.detach().to('cpu', torch.long).numpy()
    K, Lk = idx.shape
    _check_index(idx, length)
    if min_tiles <= 1:
        tile_size = max(length, 1)
    else:
        # among tile sizes giving enough tiles, take the one that cuts the fewest chunks (row-aligned
        # tiles keep column-major directions in long runs)
        best = None
        for size in _candidate_tile_counts(length, min(min_tiles, length)):
            n = int(_chunk_starts(idx, size, block_t)[1].sum())
            if best is None or n < best[0]:
                best = (n, size)
        tile_size = best[1]
    n_tiles = math.ceil(length / tile_size)
    tiles, starts = _chunk_starts(idx, tile_size, block_t)

    ks, ss = np.nonzero(starts)  # row-major: direction-major, step order
    ends = np.empty_like(ss)
    for k in range(K):
        sel = np.flatnonzero(ks == k)
        ends[sel[:-1]] = ss[sel[1:]]
        ends[sel[-1]] = Lk
    chunk_tile = tiles[ks, ss]
    n_chunks = ks.size
    if n_chunks > MAX_GRID_DIM or n_tiles > MAX_GRID_DIM:
        raise ValueError(f'scan schedule needs {n_chunks} chunks / {n_tiles} tiles, above the grid limit '
                         f'{MAX_GRID_DIM}; raise block_t')
    dir_ptr = np.searchsorted(ks, np.arange(K + 1))
    fwd = np.lexsort((ss, ks, chunk_tile))  # by tile, then direction, then step
    rev = np.lexsort((-ss, ks, chunk_tile))
    tile_ptr = np.searchsorted(chunk_tile[fwd], np.arange(n_tiles + 1))
    tile_start = np.minimum(np.arange(n_tiles + 1) * tile_size, length)

    def i32(a):
        return torch.from_numpy(np.ascontiguousarray(a).astype(np.int32))

    return ScanSchedule(
        K=K, Lk=Lk, length=length, block_t=block_t, n_tiles=n_tiles, n_chunks=n_chunks,
        index=i32(idx), tile_start=i32(tile_start), chunk_k=i32(ks), chunk_start=i32(ss), chunk_end=i32(ends),
        dir_chunk_ptr=i32(dir_ptr), tile_chunk_ptr=i32(tile_ptr), tile_chunks=i32(fwd), tile_chunks_rev=i32(rev),
    )


_CACHE: 'OrderedDict[tuple, tuple]' = OrderedDict()
_CACHE_SIZE = 64


def get_schedule(index: torch.Tensor, length: int, block_t: int, min_tiles: int, device) -> ScanSchedule:
    """Cached build_schedule on ``device``.

    Keyed by the index tensor's storage and version (index maps come from plans.build_index's cache,
    so the same tensor comes back every call); the entry keeps the tensor alive so its memory cannot
    be reused by a different map. A miss copies the index to the CPU once.
    """
    key = (index.data_ptr(), index._version, tuple(index.shape), str(index.device), length, block_t, min_tiles,
           str(device))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is index:
        _CACHE.move_to_end(key)
        return hit[1]
    sched = build_schedule(index, length, block_t, min_tiles).to(device)
    _CACHE[key] = (index, sched)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return sched
