"""Vim as an mmdet / mmseg backbone (``type='vssm.Vim'``): a ViTDet-style simple feature pyramid."""
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
    default_arch = 'vim_tiny'
