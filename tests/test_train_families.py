"""Every family trains a few steps through tools/train.py on the embedded digits set without NaN."""
import csv
import importlib.util
import math
from pathlib import Path

import pytest

TRAIN_PY = Path(__file__).resolve().parents[1] / 'tools' / 'train.py'

# one reduced model per family (full architecture, small widths / depths)
FAMILIES = {
    'vmamba_tiny_s1l8': 'depths=(1,1,1,1) dims=16',
    'vmamba_tiny_v0': 'depths=(1,1,1,1) dims=16',
    'vim_tiny': 'depth=2 embed_dim=32',
    'local_vim_tiny': "depth=2 embed_dim=32 directions=(('h','v_flip','w2','w7_flip'),('h_flip','v','w2_flip','w7'))",
    'local_vmamba_tiny': "depths=(1,1,1,1) dims=16 directions=(('h','v','w2','w2_flip'),('h','v','w2','w2_flip'),('h_flip','v_flip','w7','w7_flip'),('h','v','w2','w2_flip'))",
    'efficient_vmamba_tiny': 'depths=(1,1,1,1) dims=16',
    'groupmamba_tiny': 'depths=(1,1,1,1) dims=16',
    'mambavision_tiny': 'depths=(1,1,2,2) dim=16 in_dim=8 num_heads=(1,1,2,2) window_sizes=(2,2)',
    'spatial_mamba_tiny': 'depths=(1,1,1,1) dims=16',
}


@pytest.fixture(scope='module')
def train_tool():
    spec = importlib.util.spec_from_file_location('vssm_tools_train_families', TRAIN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(train_tool, model, tmp_path, extra=()):
    args = ['--model', model, '--model-kwargs', *FAMILIES[model].split(), '--img-size', '32', '--num-threads', '1',
            '--no-progress', '--train-num-samples', '64', '--val-num-samples', '32', '-b', '16', '--epochs', '1',
            '--warmup-epochs', '0', '--output', str(tmp_path), '--experiment', model, *extra]
    result = train_tool.main(args)
    with open(tmp_path / model / 'steps.csv') as f:
        losses = [float(r['loss']) for r in csv.DictReader(f)]
    assert len(losses) == 4
    assert all(math.isfinite(v) for v in losses), losses
    assert math.isfinite(result['eval']['loss']) and 0 <= result['eval']['top1'] <= 100


@pytest.mark.parametrize('model', list(FAMILIES))
def test_family_trains_without_nan(train_tool, model, tmp_path):
    _run(train_tool, model, tmp_path)


def test_distilled_training_with_a_teacher(train_tool, tmp_path):
    """GroupMamba's recipe (DeiT hard distillation through timm's TokenDistillationTask) with a tiny teacher."""
    import timm
    import torch
    teacher = tmp_path / 'teacher.pth'
    torch.save(timm.create_model('test_resnet', num_classes=10).state_dict(), teacher)
    _run(train_tool, 'groupmamba_tiny', tmp_path, ['--kd-model-name', 'test_resnet', '--kd-model-checkpoint',
                                                   str(teacher), '--kd-distill-type', 'token',
                                                   '--kd-token-distill-type', 'hard', '--task-loss-weight', '0.5'])
