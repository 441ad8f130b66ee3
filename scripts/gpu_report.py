#!/usr/bin/env python3
"""The report of scripts/gpu_check.sh: environment, part status, build, every GPU test, scan and model figures,
and the issue's goals with pass/fail, as one markdown file plus CSVs and a PNG.

    python scripts/gpu_report.py env --output env.json            # device, driver, versions, date (JSON)
    python scripts/gpu_report.py report --work WORK --out OUT [--dry-run]

``report`` reads what gpu_check.sh left in WORK (parts.tsv, logs/, junit_<part>.xml, scan_<set>.csv,
models_<run>.csv, env.json; a test part stopped before pytest wrote its junit file is read from its -v log) and
writes into OUT at most six files, because the device tool brings back at
most eight: report.md, tests.csv, scan.csv, models.csv, report.png and gpu_check.log (every part's log).
It needs only the standard library (matplotlib for the PNG, when present): a broken torch still gets a report.
"""
import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]

# the goals (ISSUE 10, "Must show"); the official code reaches 0.56x / 0.58x on the two model ratios
COPY_FRACTION_GOAL = 0.60  # fused forward at VMamba-T stage shapes, of the measured copy bandwidth
FWD_BWD_SPEEDUP_GOAL = 1.5  # fused forward+backward vs the unfused PyTorch path
INFER_VS_CONVNEXT_GOAL = 1.0
TRAIN_VS_SWIN_GOAL = 1.0
VIM_SPEED_GOAL = 2.8  # Vim paper: 2.8x DeiT-Ti at 1248x1248 ...
VIM_MEMORY_GOAL = 0.132  # ... with 86.8% less GPU memory
FUSED_IMPLS = {'fused': 'Triton', 'cuda': 'CUDA C++'}


# ------------------------------------------------------------------------------------------- environment

def _run(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ''


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        return str(getattr(mod, '__version__', 'installed'))
    except Exception as e:  # noqa: BLE001  (report what is there, whatever breaks)
        return f'not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'


def environment() -> Dict[str, str]:
    env = {
        'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'host': platform.node(), 'python': sys.version.split()[0], 'python_path': sys.executable,
        'cpu_count': str(os.cpu_count()), 'platform': platform.platform(),
    }
    env['vssm_commit'] = _run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD']) or 'unknown (no git here)'
    smi = _run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'])
    env['nvidia_smi'] = smi or 'nvidia-smi not found'
    nvcc = _run(['nvcc', '--version']).splitlines()
    env['nvcc'] = next((line for line in nvcc if 'release' in line), 'nvcc not found')
    for module in ('torch', 'triton', 'timm', 'numpy', 'fvcore'):
        env[module] = _version(module)
    try:
        import torch
        env['torch_cuda'] = str(torch.version.cuda)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env['device'] = (f'{p.name}, {p.total_memory / 2 ** 30:.0f} GiB, {p.multi_processor_count} SMs, '
                             f'compute capability {p.major}.{p.minor}')
        else:
            env['device'] = 'cpu (no CUDA device visible to torch)'
    except Exception as e:  # noqa: BLE001
        env['device'] = f'unknown: torch failed ({type(e).__name__})'
    return env


# ------------------------------------------------------------------------------------------------ inputs

@dataclass
class Part:
    name: str
    rc: Optional[int]  # None: skipped
    seconds: float
    limit: int
    note: str

    @property
    def status(self) -> str:
        if self.rc is None:
            return f'skipped ({self.note})' if self.note else 'skipped'
        if self.rc == 0:
            return 'ok'
        if self.rc in (124, 137):
            return f'TIMED OUT after {self.limit} s'
        return f'FAILED (exit {self.rc})'


def read_parts(work: Path) -> List[Part]:
    parts = []
    path = work / 'parts.tsv'
    if not path.exists():
        return parts
    for line in path.read_text().splitlines():
        name, rc, seconds, limit, note = (line.split('\t') + [''] * 5)[:5]
        parts.append(Part(name, None if rc == 'skip' else int(rc), float(seconds or 0), int(limit or 0), note))
    return parts


def read_csv_rows(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@dataclass
class TestResult:
    file: str
    name: str
    outcome: str  # passed / failed / error / skipped
    seconds: float
    message: str


def read_junit(paths: Iterable[Path]) -> List[TestResult]:
    results = []
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as e:
            results.append(TestResult(path.name, '(junit file unreadable)', 'error', 0.0, str(e)))
            continue
        for case in root.iter('testcase'):
            outcome, message = 'passed', ''
            for tag in ('failure', 'error', 'skipped'):
                node = case.find(tag)
                if node is not None:
                    outcome = {'failure': 'failed'}.get(tag, tag)
                    message = (node.get('message') or node.text or '').strip().splitlines()
                    message = message[0][:200] if message else ''
                    break
            classname = case.get('classname', '')
            results.append(TestResult(classname.replace('.', '/') + '.py' if classname else path.name,
                                      case.get('name', '?'), outcome, float(case.get('time') or 0), message))
    return results


_VERBOSE_LINE = re.compile(r'(?:(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\s+(\S+::\S+))|(?:(\S+::\S+)\s+'
                           r'(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b)')


def read_verbose_log(path: Path) -> List[TestResult]:
    """Per-test outcomes from pytest -v output (plain and xdist line forms), for a part stopped before pytest
    wrote its junit file."""
    results = {}
    if not path.exists():
        return []
    for line in path.read_text(errors='replace').splitlines():
        m = _VERBOSE_LINE.search(line)
        if not m:
            continue
        outcome, nodeid = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        file, _, name = nodeid.partition('::')
        results[nodeid] = TestResult(file, name, outcome.lower(), 0.0, '(from the log)')
    note = TestResult(path.stem, '(part stopped before pytest wrote its junit file: outcomes read from its log)',
                      'error', 0.0, 'tests that had not finished are missing')
    return list(results.values()) + [note]


def read_tests(work: Path, parts: List['Part']) -> List[TestResult]:
    results = []
    for p in parts:
        if not p.name.startswith('tests') or p.rc is None:
            continue
        junit = work / f'junit_{p.name}.xml'
        results += read_junit([junit]) if junit.exists() else read_verbose_log(work / 'logs' / f'{p.name}.log')
    return results


def _f(row: Dict[str, str], key: str) -> float:
    try:
        return float(row.get(key, ''))
    except (TypeError, ValueError):
        return float('nan')


# ------------------------------------------------------------------------------------------------- goals

@dataclass
class Goal:
    what: str
    measured: str
    target: str
    verdict: str  # PASS / FAIL / not measured / info


def _verdict(value: float, ok: Callable[[float], bool]) -> str:
    if value is None or math.isnan(value):
        return 'not measured'
    return 'PASS' if ok(value) else 'FAIL'


def scan_goals(scan: List[Dict[str, str]]) -> List[Goal]:
    goals = []
    for impl, label in FUSED_IMPLS.items():
        stages = [r for r in scan if r['impl'] == impl and r['model'] == 'vmamba_t' and r['shape_set'] == 'cls224']
        fracs = {r['stage']: _f(r, 'fwd_frac_copy_bw') for r in stages}
        low = min(fracs.values()) if fracs else float('nan')
        detail = ', '.join(f'{s} {100 * v:.0f}%' for s, v in sorted(fracs.items()))
        goals.append(Goal(f'{label} forward at VMamba-T stage shapes (batch 128, 224²), of copy bandwidth',
                          f'lowest {100 * low:.0f}% ({detail})' if fracs else '-',
                          f'≥ {100 * COPY_FRACTION_GOAL:.0f}% at every stage',
                          _verdict(low, lambda v: v >= COPY_FRACTION_GOAL)))
    for impl, label in FUSED_IMPLS.items():
        ratios = speedups(scan, impl, 'fwd_bwd_ms')
        low = min(ratios.values()) if ratios else float('nan')
        geo = math.exp(sum(math.log(v) for v in ratios.values()) / len(ratios)) if ratios else float('nan')
        worst = min(ratios, key=ratios.get) if ratios else ''
        goals.append(Goal(f'{label} forward+backward vs the unfused PyTorch path, every measured layer shape',
                          f'lowest {low:.2f}× ({worst}), geometric mean {geo:.2f}× over {len(ratios)}'
                          if ratios else '-',
                          f'≥ {FWD_BWD_SPEEDUP_GOAL}×', _verdict(low, lambda v: v >= FWD_BWD_SPEEDUP_GOAL)))
    return goals


def speedups(scan: List[Dict[str, str]], impl: str, key: str) -> Dict[str, float]:
    """unfused time / impl time per layer (shape set, model, stage)."""
    base = {(r['shape_set'], r['model'], r['stage']): _f(r, key) for r in scan if r['impl'] == 'unfused'}
    out = {}
    for r in scan:
        k = (r['shape_set'], r['model'], r['stage'])
        if r['impl'] == impl and k in base and _f(r, key) > 0 and not math.isnan(base[k]):
            out[' '.join(k)] = base[k] / _f(r, key)
    return out


def _model_row(models: List[Dict[str, str]], run: str, name: str) -> Optional[Dict[str, str]]:
    for r in models:
        if r.get('run') == run and r.get('model') == name and not r.get('error'):
            return r
    return None


def _ratio(a: Optional[Dict[str, str]], b: Optional[Dict[str, str]], key: str) -> float:
    if a is None or b is None:
        return float('nan')
    den = _f(b, key)
    return _f(a, key) / den if den and not math.isnan(den) else float('nan')


# (what, run and model of the numerator, run and model of the denominator, field, target, passes, format)
_RATIO_GOALS = [
    ('vmamba_tiny_s1l8 inference vs convnext_tiny (img/s)', ('infer', 'vmamba_tiny_s1l8'),
     ('infer', 'convnext_tiny'), 'infer_samples_per_sec', f'≥ {INFER_VS_CONVNEXT_GOAL}×',
     lambda v: v >= INFER_VS_CONVNEXT_GOAL, '{:.2f}×'),
    ('vmamba_tiny_s1l8 training vs swin_tiny (img/s)', ('train', 'vmamba_tiny_s1l8'),
     ('train', 'swin_tiny_patch4_window7_224'), 'train_samples_per_sec', f'≥ {TRAIN_VS_SWIN_GOAL}×',
     lambda v: v >= TRAIN_VS_SWIN_GOAL, '{:.2f}×'),
    ("torch.compile'd vmamba_tiny_s1l8 inference vs (eager) convnext_tiny", ('compile', 'vmamba_tiny_s1l8'),
     ('infer', 'convnext_tiny'), 'infer_samples_per_sec', '-', None, '{:.2f}×'),
    ('vim_tiny vs deit_tiny_patch16_224 inference speed at 1248²', ('vim', 'vim_tiny'),
     ('vim', 'deit_tiny_patch16_224'), 'infer_samples_per_sec', f'≥ {VIM_SPEED_GOAL}×',
     lambda v: v >= VIM_SPEED_GOAL, '{:.2f}×'),
    ("vim_tiny peak memory as a fraction of deit_tiny_patch16_224's at 1248²", ('vim', 'vim_tiny'),
     ('vim', 'deit_tiny_patch16_224'), 'infer_peak_mem_mb', f'≤ {VIM_MEMORY_GOAL:.1%}',
     lambda v: v <= VIM_MEMORY_GOAL, '{:.1%}'),
    ('vim_tiny vs deit_tiny with explicit (non-fused) attention, as in the Vim paper: speed', ('vim', 'vim_tiny'),
     ('vim_naive_attn', 'deit_tiny_patch16_224'), 'infer_samples_per_sec', '-', None, '{:.2f}×'),
    ('vim_tiny vs deit_tiny with explicit (non-fused) attention, as in the Vim paper: peak memory',
     ('vim', 'vim_tiny'), ('vim_naive_attn', 'deit_tiny_patch16_224'), 'infer_peak_mem_mb', '-', None, '{:.1%}'),
]


def model_goals(models: List[Dict[str, str]]) -> List[Goal]:
    goals = []
    for what, num, den, key, target, passes, fmt in _RATIO_GOALS:
        r = _ratio(_model_row(models, *num), _model_row(models, *den), key)
        verdict = _verdict(r, passes) if passes else ('not measured' if math.isnan(r) else 'info')
        goals.append(Goal(what, _num(r, fmt), target, verdict))
    return goals


# -------------------------------------------------------------------------------------------- markdown

def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        lines.append('| ' + ' | '.join(str(c).replace('|', '\\|').replace('\n', ' ') for c in row) + ' |')
    return '\n'.join(lines)


def _num(v: float, fmt: str = '{:.3f}') -> str:
    return '-' if v is None or math.isnan(v) else fmt.format(v)


def scan_section(scan: List[Dict[str, str]], shape_set: str) -> str:
    rows = [r for r in scan if r['shape_set'] == shape_set]
    if not rows:
        return f'No scan figures for `{shape_set}` (see the part status and gpu_check.log).'
    first = rows[0]
    head = (f'Device {first.get("device", "?")}, copy bandwidth {_f(first, "copy_bytes_per_s") / 1e9:.1f} GB/s '
            f'(read + write), dtype {first.get("dtype")}, batch {first.get("batch")}. Bytes are the fused op\'s '
            f'minimum (tools/benchmark_scan.py); "× unfused" is the unfused time over this one.')
    fwd_up = {impl: speedups(scan, impl, 'fwd_ms') for impl in ('fused', 'cuda', 'unfused-triton')}
    fb_up = {impl: speedups(scan, impl, 'fwd_bwd_ms') for impl in ('fused', 'cuda', 'unfused-triton')}
    table = []
    for r in rows:
        key = ' '.join((r['shape_set'], r['model'], r['stage']))
        table.append((r['model'], r['stage'], f'{r["H"]}×{r["W"]}', r['channels'], r['d_state'], r['impl'],
                      _num(_f(r, 'fwd_ms')), _num(_f(r, 'fwd_bytes_per_s') / 1e9, '{:.0f}'),
                      _num(100 * _f(r, 'fwd_frac_copy_bw'), '{:.1f}%'),
                      _num(fwd_up.get(r['impl'], {}).get(key, float('nan')), '{:.2f}×'),
                      _num(_f(r, 'fwd_bwd_ms')), _num(_f(r, 'fwd_bwd_bytes_per_s') / 1e9, '{:.0f}'),
                      _num(100 * _f(r, 'fwd_bwd_frac_copy_bw'), '{:.1f}%'),
                      _num(fb_up.get(r['impl'], {}).get(key, float('nan')), '{:.2f}×')))
    return head + '\n\n' + md_table(
        ('model', 'stage', 'map', 'D', 'N', 'impl', 'fwd ms', 'fwd GB/s', 'fwd % copy', 'fwd × unfused',
         'f+b ms', 'f+b GB/s', 'f+b % copy', 'f+b × unfused'), table)


# gpu_check.sh's model runs (sizes on the GPU; the table gives the sizes each row used)
MODEL_RUNS = {
    'infer': 'inference (batch 128 at 224²)', 'train': 'training, one SGD step (batch 64 at 224²)',
    'compile': "inference of the torch.compile'd model (batch 128 at 224²)",
    'vim': 'inference at 1248²', 'vim_naive_attn': 'inference at 1248², DeiT with explicit attention '
                                                    '(TIMM_FUSED_ATTN=0), as the Vim paper measured it',
    'train_m2': 'training step of vmamba_tiny_m2 (Mamba-2 SSD scan) against vmamba_tiny_s1l8 (batch 64 at 224²)',
}


def models_section(models: List[Dict[str, str]]) -> str:
    if not models:
        return 'No model figures (see the part status and gpu_check.log).'
    table = []
    for r in models:
        if r.get('error'):
            table.append((r.get('run'), r.get('model'), 'error: ' + r['error'][:160], '', '', '', '', ''))
            continue
        training = r.get('run') == 'train'
        p = 'train_' if training else 'infer_'
        table.append((r.get('run'), r.get('model'), r.get(p + 'img_size', ''), r.get(p + 'batch_size', ''),
                      r.get(p + 'samples_per_sec', ''), r.get(p + 'step_time', ''), r.get(p + 'peak_mem_mb', ''),
                      r.get('scan_backend', '')))
    runs = '\n'.join(f'- `{k}`: {v}' for k, v in MODEL_RUNS.items())
    precisions = ', '.join(sorted({r['precision'] for r in models if r.get('precision')})) or '?'
    return (f'tools/benchmark.py, precision {precisions}, channels_last, `--no-flops`; peak MB: allocator peak '
            f'during the timed loop above what was held before it. Runs:\n{runs}\n\n'
            + md_table(('run', 'model', 'img', 'batch', 'img/s', 'ms/step', 'peak MB', 'scan'), table))


def tests_section(tests: List[TestResult]) -> str:
    if not tests:
        return 'No test results (the test parts did not write junit files: see gpu_check.log).'
    counts = {o: sum(t.outcome == o for t in tests) for o in ('passed', 'failed', 'error', 'skipped')}
    summary = ', '.join(f'{n} {o}' for o, n in counts.items())
    rows = [(t.file, t.name, t.outcome.upper() if t.outcome in ('failed', 'error') else t.outcome,
             f'{t.seconds:.2f}', t.message) for t in tests]
    return f'{summary} ({len(tests)} tests).\n\n' + md_table(('file', 'test', 'result', 's', 'message'), rows)


def build_section(parts: List[Part], work: Path) -> str:
    build = next((p for p in parts if p.name == 'build'), None)
    if build is None:
        return 'The build part did not run.'
    if build.rc is None:
        return f'Not built: {build.note}.'
    cmd = (work / 'build_cmd.txt').read_text().strip() if (work / 'build_cmd.txt').exists() else '?'
    text = f'`{cmd}`: **{build.status}** in {build.seconds:.0f} s.'
    log = work / 'logs' / 'build.log'
    if build.rc not in (0, None) and log.exists():
        lines = log.read_text(errors='replace').splitlines()
        errors = [line.strip()[:300] for line in lines if re.search(r'\berror\b', line)][:15]
        text += '\n\nCompiler errors (first 15 lines that say "error"):\n\n```\n' + '\n'.join(errors) + '\n```'
        text += '\n\nLast lines of the build log:\n\n```\n' + '\n'.join(lines[-10:]) + '\n```'
    return text


def report_markdown(env: Dict[str, str], parts: List[Part], tests: List[TestResult], scan: List[Dict[str, str]],
                    models: List[Dict[str, str]], goals: List[Goal], work: Path, dry_run: bool) -> str:
    out = [f'# vssm GPU check: {env.get("date_utc", "?")}', '']
    if dry_run:
        out += ['**DRY RUN on the CPU at tiny shapes** (Triton under its interpreter, small models): this proves that '
                'scripts/gpu_check.sh runs and writes every section. Its figures say nothing about the goals.', '']
    out += ['Made by `bash scripts/gpu_check.sh' + (' --dry-run' if dry_run else '') + '`; every figure below is from '
            'this run.', '', '## Goals', '',
            md_table(('goal', 'measured', 'target', 'verdict'), ((g.what, g.measured, g.target, g.verdict)
                                                                 for g in goals)), '']
    counts = {o: sum(t.outcome == o for t in tests) for o in ('passed', 'failed', 'error', 'skipped')}
    out += [f'GPU tests: {counts["passed"]} passed, {counts["failed"]} failed, {counts["error"]} errors, '
            f'{counts["skipped"]} skipped.', '', '## Environment', '',
            md_table(('', ''), sorted(env.items())), '', '## Parts', '',
            md_table(('part', 'status', 'seconds', 'time limit (s)'),
                     ((p.name, p.status, f'{p.seconds:.0f}', p.limit) for p in parts)), '',
            f'Wall time {env.get("wall_seconds", "?")} s (the build, where it runs, overlaps the first tests).', '',
            '## Build of kernels/ (CUDA C++ backend)', '', build_section(parts, work), '',
            '## GPU tests (`pytest -m gpu`)', '', tests_section(tests), '',
            '## Scan benchmark: 224² classification layers (batch 128)', '', scan_section(scan, 'cls224'), '',
            '## Scan benchmark: 800×1333 detection stage maps (batch 2)', '', scan_section(scan, 'det800'), '',
            '## Whole models', '', models_section(models), '',
            '## Files', '', 'report.md (this), tests.csv, scan.csv, models.csv, report.png (figures), gpu_check.log '
            '(every part\'s output).', '']
    return '\n'.join(out)


# ----------------------------------------------------------------------------------------------- plot

def _speed_ratios(models: List[Dict[str, str]]) -> List[Tuple[str, float, Optional[float]]]:
    """(label, measured ratio, target or None) of the img/s goals, for the plot."""
    targets = {'infer_vs_convnext': INFER_VS_CONVNEXT_GOAL, 'train_vs_swin': TRAIN_VS_SWIN_GOAL,
               'vim_vs_deit_1248': VIM_SPEED_GOAL}
    labels = ['infer_vs_convnext', 'train_vs_swin', 'compiled_infer_vs_convnext', 'vim_vs_deit_1248', None,
              'vim_vs_naive_deit_1248', None]
    out = []
    for label, (what, num, den, key, *_rest) in zip(labels, _RATIO_GOALS):
        if label:
            out.append((label, _ratio(_model_row(models, *num), _model_row(models, *den), key), targets.get(label)))
    return out


def plot(scan: List[Dict[str, str]], models: List[Dict[str, str]], path: Path) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib missing: no PNG'
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.8), dpi=100, gridspec_kw=dict(width_ratios=(3, 3, 2)))
    for ax, key, title in ((axes[0], 'fwd_frac_copy_bw', 'forward'), (axes[1], 'fwd_bwd_frac_copy_bw',
                                                                      'forward + backward')):
        rows = [r for r in scan if r['shape_set'] == 'cls224']
        layers = list(dict.fromkeys(f'{r["model"]} {r["stage"]}' for r in rows))
        impls = list(dict.fromkeys(r['impl'] for r in rows))
        width = 0.8 / max(1, len(impls))
        for i, impl in enumerate(impls):
            vals = {f'{r["model"]} {r["stage"]}': 100 * _f(r, key) for r in rows if r['impl'] == impl}
            ax.bar([j + i * width for j in range(len(layers))], [vals.get(name, 0) for name in layers], width,
                   label=impl)
        ax.axhline(100 * COPY_FRACTION_GOAL, color='k', ls='--', lw=0.8, label=f'goal {COPY_FRACTION_GOAL:.0%}')
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
        ax.set_xticklabels(layers, rotation=60, ha='right', fontsize=7)
        ax.set_ylabel('% of copy bandwidth (fused-minimum bytes)')
        ax.set_title(f'plan scan {title}, 224² layers, batch 128')
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis='y')
    ax = axes[2]
    ratios = _speed_ratios(models)
    xs = range(len(ratios))
    ax.bar(xs, [0 if math.isnan(v) else v for _, v, _ in ratios], color='tab:green')
    for x, (_, _, target) in zip(xs, ratios):
        if target is not None:
            ax.hlines(target, x - 0.4, x + 0.4, color='k', ls='--', lw=1)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label for label, _, _ in ratios], rotation=30, ha='right', fontsize=7)
    ax.set_ylabel('img/s ratio (dashed: goal)')
    ax.set_title('whole models: img/s ratios')
    ax.grid(alpha=0.3, axis='y')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------------------------- main

def collect_scan(work: Path) -> List[Dict[str, str]]:
    rows = []
    for path in sorted(work.glob('scan_*.csv')):
        shape_set = path.stem[len('scan_'):]
        rows += [dict(r, shape_set=shape_set) for r in read_csv_rows(path)]
    return rows


def collect_models(work: Path) -> List[Dict[str, str]]:
    rows = []
    for run in MODEL_RUNS:
        rows += [dict(r, run=run) for r in read_csv_rows(work / f'models_{run}.csv')]
    return rows


def write_csv(path: Path, rows: List[Dict[str, object]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ['empty']
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def concat_logs(work: Path, parts: List[Part], path: Path) -> None:
    with open(path, 'w') as out:
        for p in parts:
            log = work / 'logs' / f'{p.name}.log'
            out.write(f'\n===== {p.name}: {p.status}, {p.seconds:.0f} s =====\n')
            if log.exists():
                out.write(log.read_text(errors='replace'))


def report(work: Path, out: Path, dry_run: bool, started: Optional[float] = None
           ) -> Tuple[List[Goal], List['TestResult'], List[Part]]:
    out.mkdir(parents=True, exist_ok=True)
    env_path = work / 'env.json'
    try:
        env = json.loads(env_path.read_text()) if env_path.exists() else {}
    except json.JSONDecodeError:
        env = {}
    env = env or {'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                  'note': 'the env part failed'}
    parts = read_parts(work)
    tests = read_tests(work, parts)
    scan, models = collect_scan(work), collect_models(work)
    goals = scan_goals(scan) + model_goals(models)
    if started:
        env['wall_seconds'] = f'{time.time() - started:.0f}'
    (out / 'report.md').write_text(report_markdown(env, parts, tests, scan, models, goals, work, dry_run))
    write_csv(out / 'tests.csv', [vars(t) for t in tests])
    write_csv(out / 'scan.csv', scan)
    write_csv(out / 'models.csv', models)
    note = plot(scan, models, out / 'report.png')
    if note:
        print(note)
    concat_logs(work, parts, out / 'gpu_check.log')
    return goals, tests, parts


def incomplete(work: Path, parts: List[Part], tests: List[TestResult], scan: List[Dict[str, str]],
               models: List[Dict[str, str]]) -> List[str]:
    """What a dry run must have produced and did not: CI's proof that every part of the script works."""
    problems = [] if (work / 'env.json').exists() else ['no env.json']
    for p in parts:
        if p.rc not in (0, None):
            problems.append(f'part {p.name}: {p.status}')
    if not tests:
        problems.append('no test results')
    for shape_set in ('cls224', 'det800'):
        have = {(r['model'], r['impl']) for r in scan if r['shape_set'] == shape_set}
        models_seen = {m for m, _ in have}
        for impl in ('fused', 'unfused'):
            missing = sorted(m for m in models_seen if (m, impl) not in have)
            if not models_seen or missing:
                problems.append(f'scan {shape_set}: no {impl} rows' + (f' for {missing}' if missing else ''))
    for run in MODEL_RUNS:
        rows = [r for r in models if r.get('run') == run]
        if not rows:
            problems.append(f'models {run}: no rows')
        problems += [f'models {run}: {r.get("model")}: {r["error"]}' for r in rows if r.get('error')]
    return problems


def print_summary(goals: List[Goal], tests: List[TestResult], parts: List[Part], out: Path) -> None:
    # the device tool returns the end of the output: the short tables go last
    print('\nparts:')
    for p in parts:
        print(f'  {p.name:<16} {p.status:<28} {p.seconds:6.0f} s')
    bad = [t for t in tests if t.outcome in ('failed', 'error')]
    counts = {o: sum(t.outcome == o for t in tests) for o in ('passed', 'failed', 'error', 'skipped')}
    # worded so that no CI log reader takes it for a test runner's closing line
    print(f'\nGPU tests (pytest -m gpu) - passed {counts["passed"]}, failed {counts["failed"]}, '
          f'errors {counts["error"]}, skipped {counts["skipped"]}')
    for t in bad[:20]:
        print(f'  {t.outcome.upper()} {t.file}::{t.name}: {t.message[:120]}')
    print('\ngoals:')
    for g in goals:
        print(f'  [{g.verdict:^12}] {g.what}: {g.measured} (target {g.target})')
    print(f'\nreport: {out / "report.md"}')


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    e = sub.add_parser('env', help='the environment as JSON')
    e.add_argument('--output', type=Path, default=None, help='write here (default: print)')
    r = sub.add_parser('report', help='write the report from a gpu_check work folder')
    r.add_argument('--work', required=True, type=Path)
    r.add_argument('--out', required=True, type=Path)
    r.add_argument('--dry-run', action='store_true')
    r.add_argument('--started', type=float, default=None, help='epoch seconds when the check began (wall time)')
    r.add_argument('--require-complete', action='store_true',
                   help='exit 1 unless every part ran and every section has figures (CI, with --dry-run)')
    args = p.parse_args(argv)
    if args.cmd == 'env':
        text = json.dumps(environment(), indent=1)
        print(text)
        if args.output:
            args.output.write_text(text)
        return 0
    goals, tests, parts = report(args.work, args.out, args.dry_run, args.started)
    print_summary(goals, tests, parts, args.out)
    if args.require_complete:
        problems = incomplete(args.work, parts, tests, collect_scan(args.work), collect_models(args.work))
        for problem in problems:
            print(f'incomplete: {problem}')
        return 1 if problems else 0
    return 0


if __name__ == '__main__':
    sys.exit(main())
