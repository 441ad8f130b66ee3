"""LocalMamba as mmdet / mmseg backbones: ``type='vssm.LocalVMamba'`` (hierarchical) and ``type='vssm.LocalVim'``
(plain, simple feature pyramid)."""
from .base import HierarchicalBackbone
from .plain import PlainBackbone
from .registry import MODELS

__all__ = ['LocalVMambaBackbone', 'LocalVimBackbone']


@MODELS.register_module(name='LocalVMamba')
class LocalVMambaBackbone(HierarchicalBackbone):
    """LocalVMamba stages 0..3 (strides 4..32) with per-output LayerNorms; the searched per-layer scan
    directions come with the timm model (pass ``directions`` with custom ``depths``). See
    HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.localmamba'
    arch_pattern = 'local_vmamba_*'
    filter_fn_name = 'local_vmamba_checkpoint_filter_fn'
    default_arch = 'local_vmamba_tiny'


@MODELS.register_module(name='LocalVim')
class LocalVimBackbone(PlainBackbone):
    """LocalVim (no class token, windowed + gated scans over the patch grid, RoPE) with a simple feature
    pyramid at strides 4..32. See PlainBackbone for the arguments."""
    family_module = 'vssm.models.localmamba'
    arch_pattern = 'local_vim_*'
    filter_fn_name = 'local_vim_checkpoint_filter_fn'
    default_arch = 'local_vim_tiny'
