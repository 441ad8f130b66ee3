"""Package-level promises: what `import vssm` pulls in, and that every family registers with timm."""
import subprocess
import sys

import timm

import vssm  # noqa: F401


def test_import_is_light():
    """`import vssm` registers models but loads neither OpenMMLab nor vssm's Triton / CUDA kernel modules."""
    code = (
        'import sys, vssm, timm\n'
        'bad = [m for m in sys.modules if m.split(".")[0] in ("mmdet", "mmseg", "mmcv", "mmengine")'
        ' or m in ("vssm.ops.triton_scan", "vssm.ops.cuda_ext", "vssm.mm")]\n'
        'assert not bad, bad\n'
        'assert timm.is_model("vmamba_tiny_s1l8")\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


def test_models_are_vssm_modules():
    names = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('vssm.')]
    assert len(names) >= 9
    # module names stay distinct from timm's own (mambaout, efficientvim)
    mods = {timm.models.model_entrypoint(n).__module__.split('.')[-1] for n in names}
    assert not mods & {'mambaout', 'efficientvim', 'vision_transformer'}
