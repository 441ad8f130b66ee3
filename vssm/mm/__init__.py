"""mmdet / mmseg backbones for the vssm families (needs the OpenMMLab stack: scripts/install_mm.sh).

Importing this module registers the backbones in the ``vssm`` registry scope, a child of mmengine's root
MODELS registry, so mmdet and mmseg configs both use them as ``type='vssm.<Name>'`` after
``custom_imports=dict(imports=['vssm.mm'])``. It also routes mmengine's checkpoint loading through
``load_checkpoint_file`` (torch >= 2.6 weights_only default; see vssm/mm/checkpoint.py).

Backbones: vssm.VMamba, vssm.EfficientVMamba, vssm.LocalVMamba, vssm.GroupMamba, vssm.MambaVision,
vssm.SpatialMamba (hierarchical, strides 4..32); vssm.MobileMamba (hierarchical, strides 16..64); vssm.Vim,
vssm.LocalVim (plain, with a ViTDet-style simple feature pyramid at strides 4..32).
"""
try:
    import mmengine  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('vssm.mm needs mmengine, mmcv, mmdet / mmseg: run scripts/install_mm.sh <python>') from e

from .checkpoint import load_checkpoint_file, patch_mmengine_checkpoint_loader
from .registry import MODELS
from .base import HierarchicalBackbone, TimmBackboneBase
from .vmamba import VMambaBackbone
from .efficient_vmamba import EfficientVMambaBackbone
from .groupmamba import GroupMambaBackbone
from .mambavision import MambaVisionBackbone
from .mobilemamba import MobileMambaBackbone
from .spatial_mamba import SpatialMambaBackbone
from .localmamba import LocalVimBackbone, LocalVMambaBackbone
from .plain import PlainBackbone
from .vim import VimBackbone

__all__ = [
    'MODELS', 'TimmBackboneBase', 'HierarchicalBackbone', 'PlainBackbone', 'VMambaBackbone',
    'EfficientVMambaBackbone', 'GroupMambaBackbone', 'LocalVMambaBackbone', 'LocalVimBackbone', 'VimBackbone',
    'MambaVisionBackbone', 'MobileMambaBackbone', 'SpatialMambaBackbone', 'load_checkpoint_file',
    'patch_mmengine_checkpoint_loader',
]

patch_mmengine_checkpoint_loader()
