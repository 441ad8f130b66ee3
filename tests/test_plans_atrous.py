"""The atrous plan (EfficientVMamba's ES2D scan): index maps against brute force, coverage, round trips,
and the official scan/merge on odd and non-square maps."""
import pytest
import torch
import torch.nn.functional as F

from vssm.ops import EFFICIENT_VMAMBA_PLAN, DirectionPlan, build_index, cross_merge, cross_scan

SIZES = [(1, 1), (1, 5), (2, 2), (3, 3), (5, 7), (7, 4), (6, 9), (8, 8), (9, 2)]


def _brute_force_atrous(p: int, i: int, j: int, order: str, H: int, W: int):
    """Flat positions of the sub-grid rows i, i+p, ... x cols j, j+p, ..., written out loop by loop."""
    out = []
    if order == 'h':
        r = i
        while r < H:
            c = j
            while c < W:
                out.append(r * W + c)
                c += p
            r += p
    else:
        c = j
        while c < W:
            r = i
            while r < H:
                out.append(r * W + c)
                r += p
            c += p
    return out


@pytest.mark.parametrize('H,W', SIZES)
@pytest.mark.parametrize('p', [2, 3])
def test_atrous_index_matches_brute_force(H, W, p):
    for i in range(p):
        for j in range(p):
            for order in 'hv':
                for flip in (False, True):
                    name = f'a{p}_{i}{j}_{order}' + ('_flip' if flip else '')
                    idx = build_index((name,), H, W)[0].tolist()
                    expected = _brute_force_atrous(p, i, j, order, H, W)
                    expected = expected[::-1] if flip else expected
                    assert idx[:len(expected)] == expected, name
                    assert all(v == -1 for v in idx[len(expected):]), name


def test_efficient_vmamba_plan_is_the_official_phase_order():
    # official EfficientScan: xs[0] = x[::2, ::2] row-major, xs[1] = x^T[::2, 1::2] (rows 1::2, cols 0::2,
    # column-major), xs[2] = x[::2, 1::2], xs[3] = x^T[1::2, 1::2]
    assert EFFICIENT_VMAMBA_PLAN.directions == ('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v')
    assert EFFICIENT_VMAMBA_PLAN.merge == 'sum'


@pytest.mark.parametrize('H,W', SIZES)
def test_each_pixel_visited_exactly_once(H, W):
    idx = EFFICIENT_VMAMBA_PLAN.index(H, W)
    counts = torch.bincount(idx[idx >= 0], minlength=H * W)
    assert counts.tolist() == [1] * (H * W)


@pytest.mark.parametrize('H,W', SIZES)
def test_scan_merge_round_trip(H, W):
    x = torch.randn(2, 3, H * W, dtype=torch.float64)
    idx = EFFICIENT_VMAMBA_PLAN.index(H, W)
    seqs = cross_scan(x, idx)
    # the phases are disjoint, so the summing merge is a scatter: it gives back the map itself
    torch.testing.assert_close(cross_merge(seqs, idx, H * W, 'sum'), x, rtol=0, atol=0)
    # per direction, each pixel lands only in the direction that visits it
    per_dir = cross_merge(seqs, idx, H * W, 'none')
    torch.testing.assert_close(per_dir.sum(1), x, rtol=0, atol=0)
    owner = torch.full((H * W,), -1)
    for k in range(idx.shape[0]):
        owner[idx[k][idx[k] >= 0]] = k
    for k in range(idx.shape[0]):
        torch.testing.assert_close(per_dir[:, k], x * (owner == k), rtol=0, atol=0)


def _official_efficient_scan(x: torch.Tensor) -> torch.Tensor:
    """The official EfficientScan (step 2): pad to even, four strided slices, (B, 4, C, H/2 * W/2)."""
    B, C, H, W = x.shape
    x = F.pad(x, (0, W % 2, 0, H % 2))
    xt = x.transpose(2, 3)
    return torch.stack([
        x[:, :, ::2, ::2].flatten(2), xt[:, :, ::2, 1::2].flatten(2),
        x[:, :, ::2, 1::2].flatten(2), xt[:, :, 1::2, 1::2].flatten(2),
    ], dim=1)


def _official_efficient_merge(ys: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The official EfficientMerge: write each phase back into the padded map, crop, (B, C, H * W)."""
    B, K, C, _ = ys.shape
    h, w = -(-H // 2), -(-W // 2)
    y = ys.new_zeros(B, C, 2 * h, 2 * w)
    y[:, :, ::2, ::2] = ys[:, 0].reshape(B, C, h, w)
    y[:, :, 1::2, ::2] = ys[:, 1].reshape(B, C, w, h).transpose(2, 3)
    y[:, :, ::2, 1::2] = ys[:, 2].reshape(B, C, h, w)
    y[:, :, 1::2, 1::2] = ys[:, 3].reshape(B, C, w, h).transpose(2, 3)
    return y[:, :, :H, :W].flatten(2)


@pytest.mark.parametrize('H,W', [(5, 7), (7, 4), (6, 9), (8, 8), (1, 3)])
def test_plan_on_even_padded_map_equals_official_scan_and_merge(H, W):
    """ES2D zero-pads odd maps to even size, then scans with the plan: exactly the official sequences."""
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    Hp, Wp = H + H % 2, W + W % 2
    idx = EFFICIENT_VMAMBA_PLAN.index(Hp, Wp)
    ours = cross_scan(F.pad(x, (0, Wp - W, 0, Hp - H)).flatten(2), idx)
    official = _official_efficient_scan(x)
    torch.testing.assert_close(ours, official, rtol=0, atol=0)
    ys = torch.randn_like(official)
    merged = cross_merge(ys, idx, Hp * Wp, 'sum').view(2, 3, Hp, Wp)[:, :, :H, :W].flatten(2)
    torch.testing.assert_close(merged, _official_efficient_merge(ys, H, W), rtol=0, atol=0)


def test_bad_atrous_names_fail_early():
    with pytest.raises(ValueError, match='below the step'):
        DirectionPlan(('a2_20_h',))
    with pytest.raises(ValueError, match='unknown scan direction'):
        DirectionPlan(('a2_00_x',))
