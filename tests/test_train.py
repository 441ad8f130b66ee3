"""tools/train.py end to end on the embedded digits set with a tiny VMamba: DDP == 1 process, exact resume,
fine-tuning with a new head, eval-only, YAML configs, and that the job learns."""
import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = ROOT / 'tools' / 'train.py'

# tiny model, few images: every run below is a few seconds on one thread
TINY = ['--model', 'vmamba_tiny_s1l8', '--model-kwargs', 'depths=(1,1,1,1)', 'dims=16', '--img-size', '32',
        '--num-threads', '1', '--no-progress', '--val-num-samples', '64']


def _load_train_module():
    spec = importlib.util.spec_from_file_location('vssm_tools_train', TRAIN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def train_tool():
    return _load_train_module()


def _weights(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    return ckpt['state_dict'], ckpt


def _steps(path):
    with open(path) as f:
        return [row for row in csv.DictReader(f)]


@pytest.fixture(scope='module')
def two_epoch_run(train_tool, tmp_path_factory):
    """2 epochs with EMA, every epoch's checkpoint kept: the reference run for resume / fine-tune / eval."""
    out = tmp_path_factory.mktemp('train')
    args = TINY + ['--train-num-samples', '96', '-b', '16', '--epochs', '2', '--warmup-epochs', '1',
                   '--model-ema', '--model-ema-decay', '0.9', '--checkpoint-hist', '5', '--drop-path', '0.1',
                   '--output', str(out), '--experiment', 'ref']
    result = train_tool.main(args)
    return out / 'ref', result, args


def test_default_run_writes_logs_checkpoints_and_plot(two_epoch_run):
    run_dir, result, _ = two_epoch_run
    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar',
                 'summary.csv', 'steps.csv', 'curves.png', 'results.json', 'args.yaml'):
        assert (run_dir / name).is_file(), name
    with open(run_dir / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in rows] == [0, 1]
    assert {'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'eval_ema_top1', 'lr'} <= set(rows[0])
    assert len(_steps(run_dir / 'steps.csv')) == 2 * (96 // 16)
    import matplotlib.image as mpimg
    img = mpimg.imread(run_dir / 'curves.png')
    assert img.shape[:2] == (400, 1100)  # figsize (11, 4) at 100 dpi
    _, ckpt = _weights(run_dir / 'last.pth.tar')
    assert ckpt['epoch'] == 1 and 'state_dict_ema' in ckpt and 'optimizer' in ckpt
    assert 0 <= result['eval']['top1'] <= 100


def test_resume_is_exact(train_tool, two_epoch_run, tmp_path):
    """Resuming from the epoch-0 checkpoint repeats epoch 1 of the uninterrupted run: losses, LR, weights, EMA."""
    run_dir, result, args = two_epoch_run
    resumed_args = [a for a in args] + ['--resume', str(run_dir / 'checkpoint-0.pth.tar'),
                                        '--output', str(tmp_path), '--experiment', 'resumed']
    resumed = train_tool.main(resumed_args)
    ref_steps = [r for r in _steps(run_dir / 'steps.csv') if r['epoch'] == '1']
    new_steps = _steps(tmp_path / 'resumed' / 'steps.csv')
    assert [r['epoch'] for r in new_steps] == ['1'] * len(ref_steps)
    # the next-step loss (and every later one) equals the uninterrupted run's
    assert [float(r['loss']) for r in new_steps] == pytest.approx([float(r['loss']) for r in ref_steps], abs=1e-6)
    assert [float(r['lr']) for r in new_steps] == pytest.approx([float(r['lr']) for r in ref_steps], rel=1e-9)
    ref_sd, ref_ckpt = _weights(run_dir / 'last.pth.tar')
    new_sd, new_ckpt = _weights(tmp_path / 'resumed' / 'last.pth.tar')
    for k in ref_sd:
        torch.testing.assert_close(new_sd[k], ref_sd[k], rtol=0, atol=1e-6, msg=k)
    for k in ref_ckpt['state_dict_ema']:
        torch.testing.assert_close(new_ckpt['state_dict_ema'][k], ref_ckpt['state_dict_ema'][k], rtol=0, atol=1e-6)
    assert resumed['eval']['top1'] == pytest.approx(result['eval']['top1'], abs=1e-6)


def test_eval_only_reproduces_the_final_validation(train_tool, two_epoch_run):
    run_dir, result, args = two_epoch_run
    base = [a for a in TINY]
    out = train_tool.main(base + ['--evaluate', '--initial-checkpoint', str(run_dir / 'last.pth.tar')])
    assert set(out) == {'eval'}
    assert out['eval']['top1'] == pytest.approx(result['eval']['top1'], abs=1e-6)
    assert out['eval']['loss'] == pytest.approx(result['eval']['loss'], rel=1e-5)


def test_finetune_with_a_new_head(train_tool, two_epoch_run, tmp_path):
    """--initial-checkpoint with another --num-classes keeps the trunk, makes a new classifier, and trains."""
    run_dir, _, _ = two_epoch_run
    ckpt_sd, _ = _weights(run_dir / 'last.pth.tar')
    argv = TINY + ['--initial-checkpoint', str(run_dir / 'last.pth.tar'), '--num-classes', '12',
                   '--train-num-samples', '32', '-b', '16', '--epochs', '1', '--output', str(tmp_path),
                   '--experiment', 'ft']
    args = train_tool.parse_args(argv)
    ctx = dict(distributed=False, world_size=1, rank=0, local_rank=0, device=torch.device('cpu'), primary=True)
    model = train_tool.build_model(args, 12, ctx)
    assert model.get_classifier().weight.shape == (12, ckpt_sd['head.fc.weight'].shape[1])
    sd = model.state_dict()
    trunk = [k for k in ckpt_sd if not k.startswith('head.fc.')]
    assert trunk and all(torch.equal(sd[k], ckpt_sd[k]) for k in trunk)
    assert not torch.equal(sd['head.fc.weight'][:10], ckpt_sd['head.fc.weight'])  # new, not copied
    result = train_tool.main(argv)
    new_sd, _ = _weights(tmp_path / 'ft' / 'last.pth.tar')
    assert new_sd['head.fc.weight'].shape[0] == 12
    assert result['eval']['top1'] >= 0


def test_main_job_learns(train_tool, tmp_path):
    """A short version of the embedded default (tiny model, 4 epochs, 512 images) is far above chance (10%)."""
    result = train_tool.main(TINY[:-2] + ['--val-num-samples', '200', '--train-num-samples', '512', '-b', '32',
                                          '--epochs', '4', '--output', str(tmp_path), '--experiment', 'learn'])
    assert result['eval']['top1'] > 50.0, result


DIST_COMMON = TINY + ['--train-num-samples', '64', '--epochs', '2', '--warmup-epochs', '0', '--no-aug',
                      '--drop-path', '0', '--smoothing', '0', '--checkpoint-hist', '3']


def _launch(tmp, args, nproc=1):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc)]
    subprocess.run(cmd + [str(TRAIN_PY)] + DIST_COMMON + ['--output', str(tmp)] + args, check=True, env=env,
                   cwd=tmp, timeout=400)


@pytest.fixture(scope='module')
def single_process_run(tmp_path_factory):
    """1 process, batch 16: the reference for the multi-process runs (same global batch)."""
    tmp = tmp_path_factory.mktemp('dist')
    _launch(tmp, ['-b', '16', '--experiment', 'single'])
    return tmp


def _assert_same_weights(a, b, atol=2e-5):
    sd_a, _ = _weights(a)
    sd_b, _ = _weights(b)
    assert set(sd_a) == set(sd_b)
    for k in sd_b:
        torch.testing.assert_close(sd_a[k], sd_b[k], rtol=1e-4, atol=atol, msg=k)


def test_ddp_two_processes_equal_one_process(single_process_run):
    """torchrun with 2 CPU processes (gloo, DDP, batch 8 each) ends with the weights of 1 process, batch 16."""
    tmp = single_process_run
    _launch(tmp, ['-b', '8', '--experiment', 'ddp'], nproc=2)
    _, ckpt = _weights(tmp / 'ddp' / 'last.pth.tar')
    assert ckpt['epoch'] == 1 and len(_steps(tmp / 'ddp' / 'steps.csv')) == 2 * 4
    _assert_same_weights(tmp / 'ddp' / 'last.pth.tar', tmp / 'single' / 'last.pth.tar')


def test_fsdp_two_processes_equal_one_process_and_resume(single_process_run):
    """--fsdp (sharded parameters and optimizer state, gloo) matches too, saves full weights, and resumes."""
    tmp = single_process_run
    _launch(tmp, ['-b', '8', '--fsdp', '--experiment', 'fsdp'], nproc=2)
    _assert_same_weights(tmp / 'fsdp' / 'last.pth.tar', tmp / 'single' / 'last.pth.tar')
    _launch(tmp, ['-b', '8', '--fsdp', '--experiment', 'fsdp_resumed',
                  '--resume', str(tmp / 'fsdp' / 'checkpoint-0.pth.tar')], nproc=2)
    ref = [float(r['loss']) for r in _steps(tmp / 'fsdp' / 'steps.csv') if r['epoch'] == '1']
    assert [float(r['loss']) for r in _steps(tmp / 'fsdp_resumed' / 'steps.csv')] == pytest.approx(ref, abs=1e-6)
    _assert_same_weights(tmp / 'fsdp_resumed' / 'last.pth.tar', tmp / 'fsdp' / 'last.pth.tar', atol=1e-6)


def test_image_folder_data_with_the_imagenet_options(train_tool, tmp_path):
    """--data-dir with train/ and val/ folders (timm's create_dataset / create_loader), classes inferred, and
    the recipe options on: RandAugment, random erasing, mixup/cutmix, EMA, bf16 autocast, grad accumulation,
    grad checkpointing, channels-last, clipping."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c, colour in (('a', (200, 30, 30)), ('b', (30, 30, 200)), ('c', (30, 200, 30))):
            (tmp_path / 'data' / split / c).mkdir(parents=True)
            for i in range(8):
                px = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(tmp_path / 'data' / split / c / f'{i}.png')
    result = train_tool.main(TINY[:-2] + [
        '--data-dir', str(tmp_path / 'data'), '-b', '8', '--epochs', '2', '--opt', 'adamw', '--lr', '1e-3',
        '--warmup-epochs', '0', '--workers', '0', '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25',
        '--mixup', '0.8', '--cutmix', '1.0', '--model-ema', '--amp', '--amp-dtype', 'bfloat16',
        '--grad-accum-steps', '2', '--grad-checkpointing', '--channels-last', '--clip-grad', '1.0',
        '--output', str(tmp_path), '--experiment', 'folder'])
    _, ckpt = _weights(tmp_path / 'folder' / 'last.pth.tar')
    assert ckpt['state_dict']['head.fc.weight'].shape[0] == 3  # classes read from the folders
    assert len(_steps(tmp_path / 'folder' / 'steps.csv')) == 2 * 2  # 3 batches -> 2 updates per epoch
    assert 0 <= result['eval']['top1'] <= 100 and 'ema_top1' in result['eval']


def test_yaml_configs_parse_with_timm_names(train_tool):
    configs = sorted((ROOT / 'configs' / 'imagenet').glob('*.yaml'))
    assert configs, 'no configs/imagenet/*.yaml'
    for cfg in configs:
        args = train_tool.parse_args(['-c', str(cfg), '--data-dir', '/nonexistent'])
        assert args.model == cfg.stem, cfg
        # AdamW 300 epochs, MambaVision's official LAMB 310 (+ 10 cooldown), MobileMamba's KD (dagger) recipe 1000
        assert args.mixup > 0 and args.aa
        assert (args.opt, args.epochs) in (('adamw', 300), ('lamb', 310), ('adamw', 1000)), cfg
        assert (args.epochs == 1000) == ('_kd' in cfg.stem), cfg
    args = train_tool.parse_args(['-c', str(configs[0]), '--data-dir', '/x', '--lr', '0.5', '--epochs', '3'])
    assert args.lr == 0.5 and args.epochs == 3  # the command line wins over the YAML


def test_yaml_unknown_key_is_a_clear_error(train_tool, tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: vmamba_tiny_s1l8\nlearning_rate: 0.1\n')
    with pytest.raises(SystemExit):
        train_tool.parse_args(['-c', str(bad)])
    assert "unknown argument(s) ['learning_rate']" in capsys.readouterr().err


def test_embedded_preset_only_without_data(train_tool):
    assert train_tool.parse_args([]).model_kwargs == {'depths': (1, 1, 2, 1), 'dims': 32}
    args = train_tool.parse_args(['--data-dir', '/some/imagenet'])
    assert args.model_kwargs == {} and args.epochs == 300 and args.img_size is None


def test_recipe_without_data_is_an_error_unless_digits_is_asked_for(train_tool, capsys):
    """-c configs/imagenet/X.yaml alone must not silently train the ImageNet recipe on the digits set."""
    cfg = str(ROOT / 'configs' / 'imagenet' / 'vmamba_tiny_s1l8.yaml')
    with pytest.raises(SystemExit):
        train_tool.parse_args(['-c', cfg])
    err = capsys.readouterr().err
    assert 'no data was given' in err and '--digits' in err
    args = train_tool.parse_args(['-c', cfg, '--digits'])
    assert args.data_dir is None and args.model == 'vmamba_tiny_s1l8' and args.epochs == 300  # the recipe wins
    with pytest.raises(SystemExit):
        train_tool.parse_args(['--digits', '--data-dir', '/x'])
    with pytest.raises(SystemExit):
        train_tool.parse_args(['--resume', 'w.safetensors'])
    assert 'weights only' in capsys.readouterr().err
    assert train_tool.parse_args([]).data_dir is None  # the README's main command still trains the default


def test_openmmlab_configs_are_routed(train_tool):
    assert train_tool._mm_config_path(['configs/mmdet/x.py', '--work-dir', 'w']) == 'configs/mmdet/x.py'
    assert train_tool._mm_config_path(['--config', 'a/b.py']) == 'a/b.py'
    assert train_tool._mm_config_path(['-c', 'configs/imagenet/vmamba_tiny_s1l8.yaml']) is None
    assert train_tool._mm_config_path(['/data/imagenet']) is None
