"""Malformed and odd-but-valid inputs thrown at plan_selective_scan on every CPU backend.

Malformed: each case gives a ValueError (vssm.ops.ScanInputError, or the index validator's) or a result, never a
crash or another exception. Cases are small valid scans with one thing broken (seeded, so a failure names a case
that can be rerun): wrong shapes, dtypes, devices, non-tensor arguments, index values out of range / repeated /
of the wrong dtype, odd strides (non-contiguous, zero-stride expanded, transposed and sliced views), empty
tensors, NaN / inf values, bad length or merge. A result must equal the reference's on the same inputs (values
where all are finite, else the same finite / non-finite pattern: NaN / inf in, NaN / inf out is correct).

Must succeed: valid inputs in odd forms (map sizes down to 1 x 1, channel counts across vector widths, every
float dtype and autocast's mix, the models' layouts, re-strided views of the tensors and the index) must give a
finite output equal to the reference's; here a ValueError is a failure like any other exception.

The 'cpu' (C++) backend runs in a subprocess, so a segfault or abort fails the test instead of killing pytest.
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scan_cases import ScanCase, check_against_reference, make_scan_case
from vssm.ops import build_index, plan_selective_scan

PLANS = [('h', 'v', 'h_flip', 'v_flip'), ('h', 'h_flip'), ('w2', 'w2_flip', 'v'),
         ('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v'), ('h',)]
FLOAT_ARGS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'delta_weight')
CASES_PER_BACKEND = 300
VALID_CASES_PER_BACKEND = 150


def _base_case(rng: random.Random, grouped: bool):
    """A valid scan: random plan, map size, batch, channels, state, merge, dtype, low-rank or not."""
    plan = rng.choice(PLANS)
    H, W = rng.randint(1, 4), rng.randint(1, 4)
    index = build_index(plan, H, W).clone()  # a fresh tensor: mutations never touch the plan cache
    merge = rng.choice(['sum', 'mean', 'none'] + (['group'] if grouped else []))
    case = make_scan_case(
        plan, H, W, batch=rng.randint(1, 2), channels=rng.randint(1, 3), d_state=rng.randint(1, 3),
        rank=rng.randint(1, 2) if rng.random() < 0.3 else 0, merge=merge,
        seq_u=merge != 'group' and rng.random() < 0.3, with_z=rng.random() < 0.5, with_D=rng.random() < 0.7,
        with_delta_bias=rng.random() < 0.7, dtype=rng.choice([torch.float32, torch.float64]), index=index,
        generator=torch.Generator().manual_seed(rng.randrange(2 ** 31)))
    return dict(case.inputs, index=case.index, length=case.length, merge=merge)


def _present(case, rng, names=FLOAT_ARGS):
    return rng.choice([n for n in names if case.get(n) is not None])


# each mutation: (case, rng) -> description; 'error' cases must raise, the others may return a result
def _wrong_shape(case, rng):
    n = _present(case, rng)
    t = case[n]
    how = rng.choice(['drop', 'add', 'grow'])
    if how == 'drop' and t.dim() > 1:
        case[n] = t.select(rng.randrange(t.dim()), 0)
    elif how == 'add':
        case[n] = t.unsqueeze(rng.randrange(t.dim() + 1))
    else:
        d = rng.randrange(t.dim())
        case[n] = torch.cat([t, t.narrow(d, 0, 1)], dim=d)
    return f'{n} shape {tuple(t.shape)} -> {tuple(case[n].shape)}'


def _wrong_dtype(case, rng):
    n = _present(case, rng)
    dt = rng.choice([torch.int64, torch.int32, torch.bool, torch.complex64, torch.uint8])
    case[n] = case[n].to(dt)
    return f'{n} dtype {dt}'


def _mixed_float_dtypes(case, rng):
    n = _present(case, rng)
    dt = rng.choice([torch.float16, torch.bfloat16, torch.float32, torch.float64])
    case[n] = case[n].to(dt)
    return f'{n} as {dt} (others {case["u"].dtype})'


def _wrong_device(case, rng):
    n = _present(case, rng)
    case[n] = case[n].to('meta')
    return f'{n} on meta'


def _not_a_tensor(case, rng):
    n = _present(case, rng, FLOAT_ARGS + ('index',))
    kind = rng.choice(['list', 'numpy', 'int', 'str', 'none_required'])
    if kind == 'list':
        case[n] = case[n].tolist()
    elif kind == 'numpy':
        case[n] = case[n].numpy()
    elif kind == 'int':
        case[n] = 3
    elif kind == 'str':
        case[n] = 'x'
    else:
        n = rng.choice(['u', 'delta', 'A', 'B', 'C', 'index'])
        case[n] = None
    return f'{n} as {kind}'


def _bad_index_values(case, rng):
    index, L = case['index'], case['length']
    primed = rng.random() < 0.5
    if primed:  # a first call validates (and caches) the good map; the edit below must be seen all the same
        _call(case, 'reference')
    k, t = rng.randrange(index.shape[0]), rng.randrange(index.shape[1])
    how = rng.choice(['too_big', 'way_too_big', 'below_minus_one', 'repeat'])
    how += ' (in place, after a call)' if primed else ''
    if how.startswith('too_big'):
        index[k, t] = L
    elif how.startswith('way_too_big'):
        index[k, t] = L + rng.choice([1, 7, 10 ** 6, 2 ** 40])
    elif how.startswith('below_minus_one'):
        index[k, t] = rng.choice([-2, -5, -(2 ** 40)])
    else:
        valid = (index[k] >= 0).nonzero().flatten().tolist()
        if len(valid) < 2:
            index[k, t] = L  # nothing to repeat on a one-position map: out of range instead
        else:
            a, b = rng.sample(valid, 2)
            index[k, b] = index[k, a]
    return f'index[{k}, {t}] {how}'


def _bad_index_form(case, rng):
    index = case['index']
    how = rng.choice(['int32', 'float', 'one_dim', 'three_dim', 'no_steps', 'no_directions', 'transposed'])
    if how == 'transposed' and index.shape[0] == index.shape[1]:
        case['_valid'] = True  # a square index transposed is another (valid or invalid) index of the same shape
    case['index'] = {
        'int32': lambda: index.int(), 'float': lambda: index.float(), 'one_dim': lambda: index.reshape(-1),
        'three_dim': lambda: index[None], 'no_steps': lambda: index[:, :0], 'no_directions': lambda: index[:0],
        'transposed': lambda: index.t(),
    }[how]()
    return f'index {how}'


def _odd_strides(case, rng):
    """Same values in other memory layouts: must give the reference's result."""
    n = _present(case, rng, FLOAT_ARGS + ('index',))
    t = case[n]
    how = rng.choice(['transposed_copy', 'sliced', 'expanded', 'channels_last'])
    if how == 'sliced':  # every other element of a tensor twice the size
        big = torch.stack([t, torch.zeros_like(t)], dim=-1)
        case[n] = big[..., 0]
    elif how == 'expanded' and t.dim() >= 1 and t.shape[0] > 0:  # zero stride along dim 0 (values change)
        case[n] = t[:1].expand(t.shape)
    elif t.dim() >= 2:  # same shape, permuted memory
        d0, d1 = (t.dim() - 2, t.dim() - 1) if how == 'transposed_copy' else (1, t.dim() - 1)
        case[n] = t.transpose(d0, d1).contiguous().transpose(d0, d1)
    else:
        case[n] = t.flip(0).contiguous().flip(0)
    return f'{n} {how} strides {case[n].stride()}'


def _empty(case, rng):
    n = _present(case, rng, ('u', 'delta', 'A', 'B', 'C'))
    t = case[n]
    d = rng.randrange(t.dim())
    case[n] = t.narrow(d, 0, 0)
    return f'{n} empty along dim {d}'


def _empty_batch(case, rng):
    for n in ('u', 'delta', 'B', 'C', 'z'):
        if case[n] is not None:
            case[n] = case[n][:0]
    return 'batch of 0'


def _non_finite(case, rng):
    n = _present(case, rng)
    t = case[n].clone()
    flat = t.view(-1)
    for _ in range(rng.randint(1, 3)):
        flat[rng.randrange(flat.numel())] = rng.choice([float('nan'), float('inf'), -float('inf')])
    case[n] = t
    return f'{n} with NaN/inf'


def _bad_length_or_merge(case, rng):
    how = rng.choice(['zero', 'negative', 'float', 'bool', 'off_by_one', 'merge'])
    if how == 'merge':
        case['merge'] = rng.choice(['max', '', None, 3])
    else:
        case['length'] = {'zero': 0, 'negative': -4, 'float': float(case['length']), 'bool': True,
                          'off_by_one': case['length'] + 1}[how]
    return f'length/merge {how}'


MUTATIONS = [_wrong_shape, _wrong_dtype, _mixed_float_dtypes, _wrong_device, _not_a_tensor, _bad_index_values,
             _bad_index_form, _odd_strides, _empty, _empty_batch, _non_finite, _bad_length_or_merge]
MUST_RAISE = {_wrong_dtype, _wrong_device, _bad_index_values, _bad_index_form, _empty, _empty_batch}


def _call(case, backend):
    kw = {k: case[k] for k in ('index', 'length', 'merge', 'delta_weight')}
    return plan_selective_scan(*[case[n] for n in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')],
                               backend=backend, **kw)


def _agrees(out, ref) -> str:
    """'' when the backend's result matches the reference's (values, or the finite / non-finite pattern)."""
    if out.shape != ref.shape:
        return f'shape {tuple(out.shape)} vs reference {tuple(ref.shape)}'
    fin, rfin = torch.isfinite(out), torch.isfinite(ref)
    if not torch.equal(fin, rfin):
        return f'finite pattern differs: {int((fin != rfin).sum())} of {fin.numel()} elements'
    tol = dict(rtol=1e-2, atol=1e-3) if out.dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-4, atol=1e-5)
    if fin.any() and not torch.allclose(out[fin].double(), ref[fin].double(), **tol):
        return f'values differ by {float((out[fin].double() - ref[fin].double()).abs().max()):.3g}'
    return ''


def run_cases(backend: str, seed: int, n: int, verbose: bool = False):
    """Run n seeded cases; returns a list of failure descriptions (empty: all good)."""
    rng = random.Random(seed)
    failures = []
    grouped = backend in ('reference', 'fast')
    for i in range(n):
        case = _base_case(rng, grouped)
        mutation = MUTATIONS[i % len(MUTATIONS)]
        what = mutation(case, rng)
        if verbose:  # the last line printed before a crash names the case
            print(f'case {i}: {what}', flush=True)
        try:
            out = _call(case, backend)
        except ValueError:  # ScanInputError (a ValueError and TypeError) or the index validator's ValueError
            continue
        except Exception as e:  # noqa: BLE001 (the point: anything but a clear input error is a failure)
            failures.append(f'case {i} ({what}): {type(e).__name__}: {str(e)[:200]}')
            continue
        if mutation in MUST_RAISE and not case.get('_valid'):
            failures.append(f'case {i} ({what}): returned a result instead of raising')
            continue
        try:
            ref = _call(case, 'reference')
        except ValueError as e:
            failures.append(f'case {i} ({what}): {backend} returned a result, the reference raised {e}')
            continue
        problem = _agrees(out, ref)
        if problem:
            failures.append(f'case {i} ({what}): {problem}')
    return failures


# ----------------------------------------------------- must succeed: valid inputs in odd sizes, layouts, dtypes

# (activations, parameters): one dtype throughout, or 16-bit activations beside float32 parameters (autocast)
VALID_DTYPES = [(torch.float32, None), (torch.float64, None), (torch.float16, None), (torch.bfloat16, None),
                (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]
# the reference runs in float64 on the same rounded values: what is left is the backend's arithmetic and the
# rounding of its output to the activations' dtype
VALID_TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.float16: (5e-3, 5e-3),
             torch.bfloat16: (2e-2, 2e-2)}
VALID_PLANS = PLANS + [('w2', 'w2_flip', 'w3', 'w3_flip'), ('v_flip',)]
RESTRIDES = ('sliced', 'offset', 'expanded', 'transposed', 'channel_last')


def _restride(t: torch.Tensor, how: str):
    """(the same values in another memory layout, the layout made); 'expanded' gives other valid values with a
    zero stride along dim 0. A layout the tensor's shape does not allow falls back to 'sliced'."""
    if how == 'offset':  # a view at a storage offset into a larger buffer
        return torch.empty(t.numel() + 3, dtype=t.dtype)[3:].view(t.shape).copy_(t), how
    if how == 'expanded' and t.shape[0] > 1:
        return t[:1].expand(t.shape), how
    if how == 'transposed' and t.dim() >= 2:
        return t.transpose(-2, -1).contiguous().transpose(-2, -1), how
    if how == 'channel_last' and t.dim() >= 3:
        return t.transpose(1, -1).contiguous().transpose(1, -1), how
    # every other element of a buffer twice the size
    return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0], 'sliced'


def _valid_case(rng: random.Random, grouped: bool):
    """A valid call in an unusual form: odd map sizes (1 x n included), channel counts across vector widths,
    model layouts (channel-last views, slices of one projection) and 1-3 tensors (the index too) re-strided."""
    plan = rng.choice(VALID_PLANS)
    H, W = rng.choice([1, 2, 3, 5, 7]), rng.choice([1, 2, 3, 5, 7])
    merge = rng.choice(['sum', 'mean', 'none'] + (['group'] if grouped else []))
    dtype, params = rng.choice(VALID_DTYPES)
    layout = rng.choice(['contiguous', 'channel_last', 'projection'])
    case = make_scan_case(
        plan, H, W, batch=rng.randint(1, 3), channels=rng.choice([1, 2, 3, 5, 17]),
        d_state=rng.choice([1, 2, 3, 16]), rank=rng.choice([0, 0, 1, 2, 3]), merge=merge,
        seq_u=merge != 'group' and rng.random() < 0.25, with_z=rng.random() < 0.6, with_D=rng.random() < 0.8,
        with_delta_bias=rng.random() < 0.8, channel_last=layout == 'channel_last',
        projection=layout == 'projection', dtype=dtype, param_dtype=params,
        generator=torch.Generator().manual_seed(rng.randrange(2 ** 31)))
    changes = []
    for name in rng.sample(case.present() + ['index'], rng.randint(1, 3)):
        if name == 'index':
            index, how = _restride(case.index, rng.choice(RESTRIDES))
            case = ScanCase(case.inputs, index, case.length, case.merge)
        else:
            t, how = _restride(case[name], rng.choice(RESTRIDES))
            case = case.with_inputs(**{name: t})
        changes.append(f'{name} {how}')
    what = (f'{plan} {H}x{W} {merge} {layout} {dtype} params {params or dtype} '
            f'shapes u{tuple(case["u"].shape)} delta{tuple(case["delta"].shape)} A{tuple(case["A"].shape)}; '
            + ', '.join(changes))
    return case, what


def run_valid_cases(backend: str, seed: int, n: int, verbose: bool = False):
    """Run n seeded valid cases; each must give a finite output equal to the reference's, or, where the backend
    declares it cannot run the call (e.g. float64 on a float32 kernel), the capability error. Returns failures."""
    from vssm.ops import UnsupportedScanError, get_backend, scan_request
    rng = random.Random(seed)
    failures = []
    for i in range(n):
        case, what = _valid_case(rng, grouped=True)
        if verbose:
            print(f'case {i}: {what}', flush=True)
        request = scan_request(case['u'], case.merge, *[case[n] for n in case.present()])
        missing = get_backend(backend).why_not(request)
        try:
            check_against_reference(backend, case, grads=False, finite=True, tol=VALID_TOL[case['u'].dtype])
            if missing is not None:
                failures.append(f'valid case {i} ({what}): ran although the backend lacks {missing}')
        except UnsupportedScanError as e:
            if missing is None or missing not in str(e):
                failures.append(f'valid case {i} ({what}): UnsupportedScanError: {str(e)[:300]}')
        except Exception as e:  # noqa: BLE001 (a valid input: any exception, ValueError included, is a failure)
            failures.append(f'valid case {i} ({what}): {type(e).__name__}: {str(e)[:300]}')
    return failures


@pytest.mark.parametrize('backend', ['reference', 'fast'])
def test_fuzz_python_backends(backend):
    failures = run_cases(backend, seed=13, n=CASES_PER_BACKEND)
    assert not failures, '\n'.join(failures[:20])


@pytest.mark.parametrize('backend', ['reference', 'fast'])
def test_valid_inputs_succeed_python_backends(backend):
    failures = run_valid_cases(backend, seed=29, n=VALID_CASES_PER_BACKEND)
    assert not failures, '\n'.join(failures[:20])


def _cpu_kernel_in_a_subprocess(runner: str, seed: int, n: int):
    """runner('cpu', seed, n) of this module in a fresh process: a segfault or abort fails the test."""
    from vssm.ops.cpu_kernel import load_extension
    if load_extension() is None:
        pytest.skip('no C++ compiler: the fused CPU scan is not available')
    here = Path(__file__).resolve().parent
    code = ('import json, sys, torch; torch.set_num_threads(1); import test_scan_fuzz as f; '
            f'print("FAILURES " + json.dumps(f.{runner}("cpu", seed={seed}, n={n}, verbose=True)))')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), str(here.parent), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith('case ')][-1:] or ['(no case started)']
    assert proc.returncode == 0, (f'the cpu backend crashed (exit {proc.returncode}) at {last[0]}\n'
                                  f'{proc.stderr[-2000:]}')
    failures = json.loads(proc.stdout.rsplit('FAILURES ', 1)[1])
    assert not failures, '\n'.join(failures[:20])


def test_fuzz_cpu_kernel_in_a_subprocess():
    _cpu_kernel_in_a_subprocess('run_cases', seed=13, n=CASES_PER_BACKEND)


def test_valid_inputs_succeed_cpu_kernel_in_a_subprocess():
    _cpu_kernel_in_a_subprocess('run_valid_cases', seed=29, n=VALID_CASES_PER_BACKEND)
