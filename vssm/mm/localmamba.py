"""LocalMamba as mmdet / mmseg backbones: ``type='vssm.LocalVMamba'`` (hierarchical) and ``type='vssm.LocalVim'``
(plain, simple feature pyramid)."""
from typing import Optional, Sequence, Tuple, Union

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

    def __init__(
            self,
            arch: str = 'local_vmamba_tiny',
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            out_norm: bool = True,
            with_cp: bool = False,
            pretrained: Optional[str] = None,
            init_cfg=None,
            **model_kwargs,
    ):
        super().__init__(arch, out_indices, frozen_stages, norm_eval, out_norm, with_cp, pretrained, init_cfg,
                         **model_kwargs)


@MODELS.register_module(name='LocalVim')
class LocalVimBackbone(PlainBackbone):
    """LocalVim (no class token, windowed + gated scans over the patch grid, RoPE) with a simple feature
    pyramid at strides 4..32. See PlainBackbone for the arguments."""
    family_module = 'vssm.models.localmamba'
    arch_pattern = 'local_vim_*'
    filter_fn_name = 'local_vim_checkpoint_filter_fn'

    def __init__(
            self,
            arch: str = 'local_vim_tiny',
            img_size: Union[int, Tuple[int, int]] = 512,
            out_indices: Sequence[int] = (-1,),
            scales: Sequence[float] = (4, 2, 1, 0.5),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            out_norm: bool = True,
            with_cp: bool = False,
            pretrained: Optional[str] = None,
            init_cfg=None,
            **model_kwargs,
    ):
        super().__init__(arch, img_size, out_indices, scales, frozen_stages, norm_eval, out_norm, with_cp,
                         pretrained, init_cfg, **model_kwargs)
