"""tools/benchmark.py, tools/benchmark_cpu_kernel.py, tools/erf.py and tools/convert_checkpoint.py on tiny models: they run and write what they
promise (CSV / JSON / PNG of the expected size), and conversions round-trip exactly."""
import csv
import gzip
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import vssm  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS = Path(__file__).resolve().parent / 'data' / 'vmamba_tiny_s1l8.official_keys.txt.gz'
TINY_KW = ['--model-kwargs', 'depths=(1,1,1,1)', 'dims=16']


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'vssm_tools_{name}', ROOT / 'tools' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png_size(path):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    return img.shape[1], img.shape[0]  # width, height


# ------------------------------------------------------------------------------------------- benchmark

def test_timing_statistic_is_median_min_max(monkeypatch):
    """vssm/tools_common/timing.py on a scripted clock: each call timed alone, warm-up calls not counted,
    min_time adds runs, the median is the figure."""
    from vssm.tools_common import timing
    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.010, 3.0, 3.002, 4.0, 4.004])  # calls of 3, 1, 10, 2, 4 ms
    monkeypatch.setitem(timing.CLOCKS, 'wall', lambda: next(ticks))
    calls = []
    t = timing.time_calls(lambda: calls.append(1), runs=3, warmup=2)
    assert len(calls) == 5 and t.runs == 3
    assert (t.median, t.min, t.max) == pytest.approx((0.003, 0.001, 0.010))
    assert t.fields('step_ms') == {'step_ms': 3.0, 'step_ms_min': 1.0, 'step_ms_max': 10.0}
    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.010, 3.0, 3.002, 4.0, 4.004])
    t = timing.time_calls(lambda: None, runs=1, warmup=0, min_time=0.0155)  # 3 + 1 + 10 + 2 ms > 15.5 ms
    assert t.runs == 4 and t.median == pytest.approx(0.0025)
    with pytest.raises(ValueError, match='runs must be at least 1'):
        timing.time_calls(lambda: None, runs=0)
    with pytest.raises(ValueError, match='clock must be one of'):
        timing.time_calls(lambda: None, runs=1, clock='gpu')


def test_benchmark_cpu_kernel_reads_layer_shapes_from_the_model():
    """The CPU scan benchmark's shapes come from a meta-device forward: VMamba-T's four stages at 224x224
    (d_inner = dim, rank ceil(dim / 16), d_state 1), with how many blocks each; then one tiny timed run."""
    bench = _tool('benchmark_cpu_kernel')
    layers = bench.model_scan_layers('vmamba_tiny_s1l8', 224)
    assert [(s.channels, s.H, s.W, s.rank, s.d_state, s.count) for s in layers] == [
        (96, 56, 56, 6, 1, 2), (192, 28, 28, 12, 1, 2), (384, 14, 14, 24, 1, 8), (768, 7, 7, 48, 1, 2)]
    assert bench.model_scan_layers('efficient_vmamba_tiny', 64)[0].directions[0] == 'a2_00_h'
    from vssm.ops.cpu_kernel import load_extension
    if load_extension() is None:
        pytest.skip('no C++ compiler: the fused CPU scan is not available')
    rows = bench.main(['--img-size', '32', '--batch', '1', '--iters', '1'])
    assert len(rows) == 4 and all(r['fwd_ms_min'] <= r['fwd_ms'] <= r['fwd_ms_max'] for r in rows)

def test_benchmark_writes_timm_fields_csv_json_and_plot(tmp_path):
    bench = _tool('benchmark')
    common = ['--model', 'vmamba_tiny_s1l8', *TINY_KW, '--device', 'cpu', '--num-threads', '1', '-b', '2',
              '--num-warm-iter', '1', '--num-bench-iter', '2']
    rows = bench.main(common + ['--bench', 'both', '--img-size', '32', '64', '--results-file', str(tmp_path / 'b.csv'),
                                '--plot', str(tmp_path / 'res.png')])
    assert len(rows) == 2 and not any('error' in r for r in rows)
    with open(tmp_path / 'b.csv') as f:
        got = list(csv.DictReader(f))
    for field in ('model', 'param_count', 'infer_samples_per_sec', 'infer_step_time', 'infer_batch_size',
                  'infer_img_size', 'infer_gmacs', 'infer_peak_mem_mb', 'train_samples_per_sec', 'train_step_time',
                  'train_batch_size', 'train_img_size', 'scan_backend', 'infer_step_time_min', 'infer_step_time_max',
                  'train_step_time_min', 'train_step_time_max'):
        assert field in got[0], field
    for r in got:  # the shared statistic: the median between min and max, img/s from the median
        for kind in ('infer', 'train'):
            lo, mid, hi = (float(r[f'{kind}_step_time{s}']) for s in ('_min', '', '_max'))
            assert lo <= mid <= hi
            assert float(r[f'{kind}_samples_per_sec']) == pytest.approx(2 / (mid / 1e3), rel=2e-3)
    assert [int(r['infer_img_size']) for r in got] == [32, 64]
    assert all(float(r['infer_samples_per_sec']) > 0 and float(r['train_samples_per_sec']) > 0 for r in got)
    # FLOPs (scan counted) grow with the pixels: x4 from 32 to 64, less the fixed-size classifier
    assert 3.5 < float(got[1]['infer_gmacs']) / float(got[0]['infer_gmacs']) <= 4
    assert _png_size(tmp_path / 'res.png') == (700, 500)

    rows = bench.main(common + ['--img-size', '32', '--results-file', str(tmp_path / 'b.json'),
                                '--plot', str(tmp_path / 'flops.png'), '--no-flops', '--timer', 'process'])
    data = json.loads((tmp_path / 'b.json').read_text())
    assert data[0]['infer_img_size'] == 32 and data[0]['timer'] == 'process' and 'infer_gmacs' not in data[0]
    assert (tmp_path / 'flops.png').is_file()


def test_benchmark_wildcards_and_unknown_models():
    bench = _tool('benchmark')
    names = bench.expand_models(['vmamba_tiny_*', 'convnext_tiny'])
    assert 'vmamba_tiny_s1l8' in names and 'vmamba_tiny_v0' in names and names[-1] == 'convnext_tiny'
    with pytest.raises(ValueError, match='unknown model'):
        bench.expand_models(['vmamba_enormous'])
    with pytest.raises(ValueError, match='no registered model matches'):
        bench.expand_models(['nothing_like_this_*'])


# ------------------------------------------------------------------------------------------------- ERF

def test_erf_random_inputs_png_csv_npy(tmp_path):
    erf = _tool('erf')
    out = tmp_path / 'erf' / 'map.png'
    rows = erf.main(['--model', 'vmamba_tiny_s1l8', *TINY_KW, '--img-size', '64', '--num-images', '2',
                     '-b', '2', '--device', 'cpu', '--output', str(out)])
    assert _png_size(out) == (400, 400)  # one 4-inch panel at 100 dpi
    g = np.load(tmp_path / 'erf' / 'map_vmamba_tiny_s1l8.npy')
    assert g.shape == (64, 64) and (g >= 0).all() and g.max() > 0
    with open(tmp_path / 'erf' / 'map.csv') as f:
        row = next(csv.DictReader(f))
    ratios = [float(row[f'area_ratio_t{t}']) for t in (20, 30, 50, 99)]
    assert all(0 < r <= 1 for r in ratios) and ratios == sorted(ratios)
    assert rows[0]['images'] == 2


def test_erf_two_models_images_from_a_folder_and_a_checkpoint(tmp_path):
    from PIL import Image
    erf = _tool('erf')
    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / 'imgs' / 'sub').mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / 'imgs' / 'sub' / f'{i}.png')
    model = timm.create_model('vmamba_tiny_s1l8', depths=(1, 1, 1, 1), dims=16)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'w.pth')
    out = tmp_path / 'two.png'
    rows = erf.main(['--model', 'vmamba_tiny_s1l8', 'vmamba_tiny_s1l8', *TINY_KW, '--checkpoint',
                     str(tmp_path / 'w.pth'), 'none', '--data-dir', str(tmp_path / 'imgs'), '--img-size', '32',
                     '--num-images', '5', '--stage', '2', '--panel-size', '3', '--output', str(out)])
    assert _png_size(out) == (600, 300)
    assert [r['images'] for r in rows] == [3, 3] and rows[0]['weights'] == 'w.pth'
    assert rows[1]['weights'] == 'random init'


# -------------------------------------------------------------------------------------------- convert

def _official_state_dict():
    sd = {}
    for line in gzip.decompress(OFFICIAL_KEYS.read_bytes()).decode().splitlines():
        key, shape = line.split('\t')
        sd[key] = torch.randn(tuple(int(s) for s in re.findall(r'\d+', shape)))
    return sd


def test_convert_official_vmamba_round_trip(tmp_path):
    conv = _tool('convert_checkpoint')
    official = _official_state_dict()
    torch.save({'model': official, 'model_ema': {k: v + 1 for k, v in official.items()}, 'epoch': 263},
               tmp_path / 'release.pth')
    report = conv.main(['--model', 'vmamba_tiny_s1l8', str(tmp_path / 'release.pth'), str(tmp_path / 'ours.pth'),
                        '--report', str(tmp_path / 'report.json'), '--quiet'])
    assert report['source_tensors'] == report['written_tensors'] == report['renamed'] == len(official) == 276
    assert not report['dropped'] and not report['rebuilt'] and not report['missing_in_result']
    assert report['renames']['patch_embed.0.weight'] == 'stem.0.weight'
    assert report['renames']['layers.0.downsample.1.weight'] == 'stages.1.downsample.1.weight'
    assert report['renames']['classifier.head.weight'] == 'head.fc.weight'
    assert json.loads((tmp_path / 'report.json').read_text())['renamed'] == 276

    ours = torch.load(tmp_path / 'ours.pth', weights_only=True)
    model = timm.create_model('vmamba_tiny_s1l8', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'ours.pth')))
    torch.testing.assert_close(model.state_dict()['stem.0.weight'], official['patch_embed.0.weight'])
    assert set(ours) == set(model.state_dict())

    conv.main(['--model', 'vmamba_tiny_s1l8', str(tmp_path / 'ours.pth'), str(tmp_path / 'back.pth'), '--reverse',
               '--quiet'])
    back = torch.load(tmp_path / 'back.pth', weights_only=True)['model']
    assert set(back) == set(official)
    assert all(torch.equal(back[k], official[k]) for k in official)

    # the EMA weights of the release, written as safetensors
    conv.main(['--model', 'vmamba_tiny_s1l8', str(tmp_path / 'release.pth'), str(tmp_path / 'ema.safetensors'),
               '--use-ema', '--quiet'])
    from safetensors.torch import load_file
    ema = load_file(tmp_path / 'ema.safetensors')
    torch.testing.assert_close(ema['stem.0.weight'], official['patch_embed.0.weight'] + 1)


def test_convert_release_file_to_safetensors(tmp_path):
    """A release in the official training format (yacs config, optimizer, scheduler pickled) -> safetensors,
    which timm's pretrained path and vssm's readers load; a mismatched name or --reverse is a clear error."""
    from test_release_files import _vmamba_files
    conv = _tool('convert_checkpoint')
    name, kw, path, expected = _vmamba_files(tmp_path)
    out = tmp_path / 'vmamba_tiny_s1l8.safetensors'
    kwargs = ['--model-kwargs'] + [f'{k}={v}' for k, v in kw.items()]
    report = conv.main(['--model', name, str(path), str(out), '--format', 'safetensors', '--quiet'] + kwargs)
    assert report['format'] == 'safetensors' and not report['missing_in_result']
    from safetensors import safe_open
    with safe_open(str(out), 'pt') as f:
        assert f.metadata()['model'] == name
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)), **kw)
    for k, v in expected.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    for bad in (['--format', 'safetensors'], ['--reverse', '--format', 'safetensors']):
        target = tmp_path / ('x.pth' if '--reverse' not in bad else 'x.safetensors')
        with pytest.raises(ValueError, match='safetensors|torch.load'):
            conv.main(['--model', name, str(path), str(target), '--quiet'] + bad + kwargs)


def test_convert_reads_the_class_count_of_a_finetuned_release(tmp_path):
    conv = _tool('convert_checkpoint')
    official = _official_state_dict()
    official['classifier.head.weight'] = torch.randn(37, 768)
    official['classifier.head.bias'] = torch.randn(37)
    torch.save({'model': official}, tmp_path / 'pets.pth')
    report = conv.main(['--model', 'vmamba_tiny_s1l8', str(tmp_path / 'pets.pth'), str(tmp_path / 'o.pth'), '--quiet'])
    assert report['num_classes'] == 37 and report['renamed'] == 276


def test_convert_wrong_model_is_a_clear_error(tmp_path):
    conv = _tool('convert_checkpoint')
    torch.save({'model': _official_state_dict()}, tmp_path / 'tiny.pth')
    with pytest.raises(ValueError, match='does not match vmamba_small_s1l20'):
        conv.main(['--model', 'vmamba_small_s1l20', str(tmp_path / 'tiny.pth'), str(tmp_path / 'o.pth'), '--quiet'])


def _one_model_per_family():
    by_module = {}
    # the tiny sizes first: the test needs one real model per family, not the largest
    for name in sorted(timm.list_models(), key=lambda n: ('tiny' not in n, n)):
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith('vssm.models.') and module not in by_module:
            by_module[module] = name
    return sorted(by_module.values())


@pytest.mark.parametrize('name', _one_model_per_family())
def test_convert_is_generic_over_families(name, tmp_path):
    """Every registered family converts its own weights through its filter fn, unchanged, with a full report."""
    conv = _tool('convert_checkpoint')
    model = timm.create_model(name)
    sd = model.state_dict()
    torch.save({'state_dict': sd}, tmp_path / 'w.pth')
    report = conv.main(['--model', name, str(tmp_path / 'w.pth'), str(tmp_path / 'o.pth'), '--quiet'])
    assert report['written_tensors'] == len(sd) and not report['missing_in_result']
    out = torch.load(tmp_path / 'o.pth', weights_only=True)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def _official_layouts():
    """(model, model kwargs, official-layout state_dict) per family, from the families' own test helpers."""
    # the families' test modules sit beside this one: a failing import is a failure, not a smaller test
    from test_efficient_vmamba import CONFIGS, official_state_dict
    from test_localmamba import official_local_vim_state_dict, official_local_vmamba_state_dict
    from test_vim import official_vim_state_dict
    params, buffers = official_local_vim_state_dict(192, device='cpu')
    return [
        ('vim_tiny', ['embed_dim=32', 'depth=2'], official_vim_state_dict(32, depth=2, device='cpu')),
        ('local_vmamba_tiny', [], official_local_vmamba_state_dict((2, 2, 9, 2), device='cpu')),
        ('local_vim_tiny', [], {**params, **buffers}),
        ('efficient_vmamba_tiny', [], official_state_dict(**CONFIGS['efficient_vmamba_tiny'])),
    ]


def test_convert_official_layouts_of_the_other_families(tmp_path):
    """Official Vim / LocalMamba / EfficientVMamba layouts (DataParallel prefixes, `state_dict` wrapper) convert
    through each family's filter with every model tensor filled and the renames reported."""
    conv = _tool('convert_checkpoint')
    cases = _official_layouts()
    if not cases:
        pytest.skip('no family test helpers to build official layouts from')
    for name, kwargs, official in cases:
        path = tmp_path / f'{name}.pth'
        torch.save({'state_dict': {'module.' + k: v for k, v in official.items()}, 'epoch': 1}, path)
        argv = ['--model', name, str(path), str(tmp_path / f'{name}_vssm.pth'), '--quiet']
        report = conv.main(argv + (['--model-kwargs', *kwargs] if kwargs else []))
        assert not report['missing_in_result'], name
        assert report['written_tensors'] == len(torch.load(tmp_path / f'{name}_vssm.pth', weights_only=True))
        assert report['renamed'] + report['kept'] + len(report['rebuilt']) == report['written_tensors'], name
        print(name, {k: (v if isinstance(v, int) else len(v)) for k, v in report.items()
                     if k in ('source_tensors', 'written_tensors', 'renamed', 'kept', 'rebuilt', 'dropped')})
