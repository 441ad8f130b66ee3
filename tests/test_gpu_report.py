"""scripts/gpu_report.py (the report of scripts/gpu_check.sh) on a made-up work folder: every test's outcome (from
junit, or from the -v log of a part stopped before pytest wrote junit), the goals' verdicts, every section, and
what a dry run must have produced. Also the detection shape set of tools/benchmark_scan.py."""
import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(folder, name):
    spec = importlib.util.spec_from_file_location(f'vssm_{folder}_{name}', ROOT / folder / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tool(name):
    return _load('tools', name)


@pytest.fixture(scope='module')
def gpu_report():
    return _load('scripts', 'gpu_report')  # harness code of scripts/gpu_check.sh, not a user tool


def _write_csv(path, rows):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def _scan_row(stage, impl, frac, fwd_bwd_ms):
    return dict(model='vmamba_t', stage=stage, impl=impl, dtype='bfloat16', batch=128, H=56, W=56, channels=96,
                d_state=1, directions='h v h_flip v_flip', fwd_ms=1.0, fwd_bwd_ms=fwd_bwd_ms, fwd_min_bytes=100,
                fwd_bytes_per_s=4e12 * frac, fwd_frac_copy_bw=frac, fwd_bwd_min_bytes=300,
                fwd_bwd_bytes_per_s=1e12, fwd_bwd_frac_copy_bw=0.3, device='NVIDIA H200', copy_bytes_per_s=4e12)


def _model_row(model, **fields):
    return dict(model=model, param_count=1.0, device='cuda', precision='amp_bfloat16', **fields)


@pytest.fixture
def work(tmp_path):
    w = tmp_path / 'work'
    (w / 'logs').mkdir(parents=True)
    (w / 'env.json').write_text('{"date_utc": "2026-12-01 10:00 UTC", "device": "NVIDIA H200"}')
    (w / 'parts.tsv').write_text('env\t0\t3\t60\t\nbuild\t1\t40\t150\t\ntests\t0\t50\t150\t\n'
                                 'tests_cuda_ext\t124\t90\t90\t\nwheels\tskip\t0\t0\tno wheels\n')
    (w / 'logs' / 'build.log').write_text('nvcc ...\ncsrc/x.cuh(39): error: identifier "requires" is undefined\n')
    (w / 'junit_tests.xml').write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_triton_scan" name="test_a[f32]" time="1.5"/>'
        '<testcase classname="tests.test_triton_scan" name="test_b" time="0.2">'
        '<failure message="AssertionError: values differ">trace</failure></testcase>'
        '<testcase classname="tests.test_triton_scan" name="test_c" time="0">'
        '<skipped message="needs a CUDA GPU"/></testcase>'
        '</testsuite></testsuites>')
    # stopped by its time limit: no junit, outcomes from the -v log (xdist and plain forms)
    (w / 'logs' / 'tests_cuda_ext.log').write_text(
        '[gw0] [ 50%] PASSED tests/test_cuda_ext.py::test_gpu_x[a] \n'
        'tests/test_cuda_ext.py::test_gpu_y FAILED                         [100%]\n')
    scan = []
    for stage, frac in (('s1', 0.70), ('s2', 0.65), ('s3', 0.61), ('s4', 0.62)):
        scan += [_scan_row(stage, 'fused', frac, 1.0), _scan_row(stage, 'cuda', 0.5, 2.5),
                 _scan_row(stage, 'unfused', 0.1, 3.0)]
    _write_csv(w / 'scan_cls224.csv', scan)
    ips = 'infer_samples_per_sec'
    _write_csv(w / 'models_infer.csv', [_model_row('vmamba_tiny_s1l8', **{ips: 1100, 'infer_batch_size': 128}),
                                        _model_row('convnext_tiny', **{ips: 1000, 'infer_batch_size': 128}),
                                        dict(model='swin_tiny_patch4_window7_224', error='RuntimeError: boom')])
    _write_csv(w / 'models_train.csv', [_model_row('vmamba_tiny_s1l8', train_samples_per_sec=500),
                                        _model_row('swin_tiny_patch4_window7_224', train_samples_per_sec=600)])
    _write_csv(w / 'models_vim.csv', [_model_row('vim_tiny', **{ips: 300, 'infer_peak_mem_mb': 1000}),
                                      _model_row('deit_tiny_patch16_224', **{ips: 100, 'infer_peak_mem_mb': 10000})])
    return w


def test_report_sections_tests_and_goals(gpu_report, work, tmp_path):
    out = tmp_path / 'out'
    goals, tests, parts = gpu_report.report(work, out, dry_run=False, started=None)
    assert sorted(p.name for p in out.iterdir()) == ['gpu_check.log', 'models.csv', 'report.md', 'report.png',
                                                      'scan.csv', 'tests.csv']
    outcomes = {(t.file, t.name): t.outcome for t in tests}
    assert outcomes[('tests/test_triton_scan.py', 'test_a[f32]')] == 'passed'
    assert outcomes[('tests/test_triton_scan.py', 'test_b')] == 'failed'
    assert outcomes[('tests/test_triton_scan.py', 'test_c')] == 'skipped'
    assert outcomes[('tests/test_cuda_ext.py', 'test_gpu_x[a]')] == 'passed'
    assert outcomes[('tests/test_cuda_ext.py', 'test_gpu_y')] == 'failed'
    verdict = {g.what: g.verdict for g in goals}
    assert verdict['Triton forward at VMamba-T stage shapes (batch 128, 224²), of copy bandwidth'] == 'PASS'
    assert verdict['CUDA C++ forward at VMamba-T stage shapes (batch 128, 224²), of copy bandwidth'] == 'FAIL'
    assert verdict['Triton forward+backward vs the unfused PyTorch path, every measured layer shape'] == 'PASS'
    assert verdict['CUDA C++ forward+backward vs the unfused PyTorch path, every measured layer shape'] == 'FAIL'
    assert verdict['vmamba_tiny_s1l8 inference vs convnext_tiny (img/s)'] == 'PASS'
    assert verdict['vmamba_tiny_s1l8 training vs swin_tiny (img/s)'] == 'FAIL'
    assert verdict["torch.compile'd vmamba_tiny_s1l8 inference vs (eager) convnext_tiny"] == 'not measured'
    assert verdict['vim_tiny vs deit_tiny_patch16_224 inference speed at 1248²'] == 'PASS'
    assert verdict["vim_tiny peak memory as a fraction of deit_tiny_patch16_224's at 1248²"] == 'PASS'
    text = (out / 'report.md').read_text()
    for section in ('## Goals', '## Environment', '## Parts', '## Build of kernels/', '## GPU tests',
                    '## Scan benchmark: 224²', '## Scan benchmark: 800×1333', '## Whole models', '## Files'):
        assert section in text, section
    assert 'identifier "requires" is undefined' in text  # the compiler's error, not only pip's traceback
    assert 'TIMED OUT after 90 s' in text and 'error: RuntimeError: boom' in text
    assert 'lowest 61% (s1 70%, s2 65%, s3 61%, s4 62%)' in text
    with open(out / 'tests.csv') as f:
        assert len(list(csv.DictReader(f))) == len(tests)


def test_incomplete_lists_what_a_dry_run_missed(gpu_report, work):
    parts = gpu_report.read_parts(work)
    tests = gpu_report.read_tests(work, parts)
    problems = gpu_report.incomplete(work, parts, tests, gpu_report.collect_scan(work),
                                     gpu_report.collect_models(work))
    assert 'part build: FAILED (exit 1)' in problems
    assert 'part tests_cuda_ext: TIMED OUT after 90 s' in problems
    assert 'scan det800: no fused rows' in problems
    assert 'models compile: no rows' in problems
    assert 'models infer: swin_tiny_patch4_window7_224: RuntimeError: boom' in problems
    assert not any(p.startswith('scan cls224') for p in problems)


def test_detection_shape_set():
    bench = _tool('benchmark_scan')
    (height, width), batch = bench.SHAPE_SETS['det800']
    layers, base = bench.layers_at(height, width), bench.layers_at(224, 224)  # recorded from the built models
    assert batch == 2 and len(layers) == len(base)
    maps = {(s.model, s.stage): (s.H, s.W) for s in layers}
    # 800x1333 padded to 800x1344 (a multiple of 32): strides 4..32; Vim: 50x84 patches + the class token
    assert maps[('vmamba_t', 's1')] == (200, 336) and maps[('vmamba_t', 's4')] == (25, 42)
    assert maps[('localvmamba_t', 's2')] == (100, 168) and maps[('efficientvmamba_t', 's1')] == (200, 336)
    assert maps[('vim_s', 'all')] == (1, 50 * 84 + 1)
    assert all(s.channels == t.channels and s.directions == t.directions for s, t in zip(layers, base))
