"""Vim as an mmdet / mmseg backbone (``type='vssm.Vim'``): a ViTDet-style simple feature pyramid."""
from typing import Optional, Sequence, Tuple, Union

from .plain import PlainBackbone
from .registry import MODELS

__all__ = ['VimBackbone']


@MODELS.register_module(name='Vim')
class VimBackbone(PlainBackbone):
    """Vim (middle class token, bidirectional Mamba blocks) with a simple feature pyramid at strides 4..32.
    Loads our classification checkpoints and the official hustvl/Vim files (position embedding resampled
    to ``img_size``). See PlainBackbone for the arguments."""
    family_module = 'vssm.models.vim'
    arch_pattern = 'vim_*'

    def __init__(
            self,
            arch: str = 'vim_tiny',
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
