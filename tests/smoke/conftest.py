"""Make timm importable beside a CPU-only torch whose matching torchvision wheel has no usable C++ ops.

CI's old-torch smoke venv (scripts/smoke_old_torch.sh) has torch 2.13.0+cpu from the local wheel cache and
torchvision 0.28.0 from PyPI, whose compiled ops link torch's CUDA libraries and so cannot load. torchvision
then fails at import because it registers fake kernels for two of its ops unguarded (torchvision::nms, ::qnms);
timm imports torchvision's pure-Python parts (transforms, FrozenBatchNorm2d). Declaring those two schemas lets
that import finish; calling the ops still fails, and nothing here uses them. Where torchvision imports
normally (the pinned stack) this does nothing.
"""
import sys

import torch

_TORCHVISION_OPS = None  # keeps the library that declares the schemas alive


def _import_torchvision():
    global _TORCHVISION_OPS
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as e:
        if 'torchvision::nms' not in str(e):
            raise
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
        del sys.modules[name]
    _TORCHVISION_OPS = torch.library.Library('torchvision', 'DEF')
    _TORCHVISION_OPS.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _TORCHVISION_OPS.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    import torchvision  # noqa: F401


_import_torchvision()
