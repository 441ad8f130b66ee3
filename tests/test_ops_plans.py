"""Direction plans: coverage, inverses and the index maps against brute-force construction."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vssm.ops import DirectionPlan, build_index, cross_merge, cross_scan, EFFICIENT_VMAMBA_PLAN, VMAMBA_PLAN

PERMUTATION_DIRECTIONS = ['h', 'v', 'h_flip', 'v_flip']
ATROUS = list(EFFICIENT_VMAMBA_PLAN.directions)


def _brute_force(name: str, H: int, W: int):
    """Positions in the order a person would write them down, one loop per direction kind."""
    flip = name.endswith('_flip')
    base = name[:-5] if flip else name
    order = []
    if base == 'h':
        order = [r * W + c for r in range(H) for c in range(W)]
    elif base == 'v':
        order = [r * W + c for c in range(W) for r in range(H)]
    elif base.startswith('w'):
        k = int(base[1:])
        Hp, Wp = -(-H // k) * k, -(-W // k) * k
        for wr in range(0, Hp, k):
            for wc in range(0, Wp, k):
                for r in range(wr, wr + k):
                    for c in range(wc, wc + k):
                        order.append(r * W + c if r < H and c < W else -1)
    elif base.startswith('a'):
        p, i, j, o = int(base[1]), int(base[3]), int(base[4]), base[6]
        rows, cols = range(i, H, p), range(j, W, p)
        order = [r * W + c for r in rows for c in cols] if o == 'h' else [r * W + c for c in cols for r in rows]
    return order[::-1] if flip else order


@given(H=st.integers(1, 9), W=st.integers(1, 9),
       name=st.sampled_from(PERMUTATION_DIRECTIONS + ATROUS + ['w2', 'w3_flip', 'w7', 'a3_21_v_flip']))
@settings(max_examples=150, deadline=None)
def test_index_matches_brute_force(H, W, name):
    idx = build_index((name,), H, W)[0].tolist()
    expected = _brute_force(name, H, W)
    assert idx[:len(expected)] == expected
    assert all(i == -1 for i in idx[len(expected):])


@pytest.mark.parametrize('H,W', [(1, 1), (3, 5), (7, 4), (8, 8)])
@pytest.mark.parametrize('name', PERMUTATION_DIRECTIONS)
def test_permutation_visits_each_pixel_once(H, W, name):
    idx = build_index((name,), H, W)[0]
    assert sorted(idx.tolist()) == list(range(H * W))


@pytest.mark.parametrize('H,W', [(2, 2), (5, 7), (6, 3), (1, 4)])
def test_atrous_plan_partitions_the_map(H, W):
    idx = EFFICIENT_VMAMBA_PLAN.index(H, W)
    visited = idx[idx >= 0].tolist()
    assert sorted(visited) == list(range(H * W))  # every pixel in exactly one direction


@pytest.mark.parametrize('H,W', [(5, 7), (4, 4)])
@pytest.mark.parametrize('name', ['w2', 'w3', 'w7_flip'])
def test_window_plan_covers_map_with_padding(H, W, name):
    idx = build_index((name,), H, W)[0]
    assert sorted(idx[idx >= 0].tolist()) == list(range(H * W))
    k = int(name[1])
    assert idx.numel() == (-(-H // k) * k) * (-(-W // k) * k)


@pytest.mark.parametrize('merge', ['sum', 'mean', 'none'])
@pytest.mark.parametrize('H,W', [(3, 5), (6, 6)])
def test_merge_inverts_scan_for_permutation_plans(merge, H, W):
    x = torch.randn(2, 3, H * W)
    idx = VMAMBA_PLAN.index(H, W)
    y = cross_merge(cross_scan(x, idx), idx, H * W, merge)
    K = idx.shape[0]
    if merge == 'sum':
        torch.testing.assert_close(y, K * x)
    elif merge == 'mean':
        torch.testing.assert_close(y, x)
    else:
        for k in range(K):
            torch.testing.assert_close(y[:, k], x)


def test_scatter_merge_of_atrous_recovers_map():
    H, W = 5, 6
    x = torch.randn(1, 4, H * W)
    idx = EFFICIENT_VMAMBA_PLAN.index(H, W)
    torch.testing.assert_close(cross_merge(cross_scan(x, idx), idx, H * W, 'sum'), x)


def test_vmamba_plan_orders():
    """k0 row-major, k1 column-major, k2/k3 their flips (the official cross-scan)."""
    H, W = 2, 3
    x = torch.arange(H * W).view(1, 1, H, W).float()
    s = VMAMBA_PLAN.scan(x.flatten(2), H, W)[0, :, 0]
    torch.testing.assert_close(s[0], x.flatten())
    torch.testing.assert_close(s[1], x.transpose(2, 3).flatten())
    torch.testing.assert_close(s[2], x.flatten().flip(0))
    torch.testing.assert_close(s[3], x.transpose(2, 3).flatten().flip(0))


def test_bad_plans_raise():
    with pytest.raises(ValueError, match='unknown scan direction'):
        DirectionPlan(('h', 'diagonal'))
    with pytest.raises(ValueError, match='merge must be one of'):
        DirectionPlan(('h',), merge='max')
    with pytest.raises(ValueError, match='at least 1x1'):
        build_index(('h',), 0, 3)


def test_plans_first_used_under_inference_mode_still_train():
    """A first forward under torch.inference_mode() caches the plan's index map; it must not be an inference
    tensor (no version counter, refused by autograd) when training then uses the same map size."""
    from vssm.layers import MultiMamba
    m = MultiMamba(8, ('h', 'w3_flip', 'v'), direction_gate=True, d_state=2)
    x = torch.randn(1, 13 * 17, 8)
    with torch.inference_mode():
        assert not build_index(('h', 'w3_flip', 'v'), 13, 17).is_inference()
        m(x, (13, 17))
    m(x, (13, 17)).sum().backward()
    assert m.dirs[1].A_log.grad is not None
