"""LocalMamba: LocalVim (plain) and LocalVMamba (hierarchical) with windowed, per-layer searched scans.

Paper: `LocalMamba: Visual State Space Model with Windowed Selective Scan` - https://arxiv.org/abs/2403.09338
Official code and weights: https://github.com/hunto/LocalMamba

Every layer scans along four directions picked by the published search (h, v, 2x2 / 7x7 windows, each
optionally flipped; the lists below, read from the official model definitions, are config, not part of
the checkpoint). Each direction's output passes one shared channel gate (vssm.layers.ChannelGate, the
official BiAttn) and the gated outputs are summed. Windows pad the map up to a multiple of their size;
the padded tokens sit inside the sequence. Unlike upstream, the inverse of the column scan is correct on
non-square maps and every direction's A_log is its own tensor.

- LocalVim: the Vim class (vim.py) without a class token, MultiMamba mixers with the direction gate,
  rotary embedding on the residual stream, mean pooling; depth 20.
- LocalVim-T midcls (official ``local_vim_tiny_middle_cls_token``, the later release): Vim's middle class token
  instead of rotary embedding and mean pooling. The token sits at N // 2 of the token sequence, each direction
  scans the patch grid with the class token inserted at its step N // 2, and the head reads the class token.
- LocalVMamba: VMamba v0 layout (patch-embed v1, patch merging, d_state 16, ssm_ratio 2, z-gate, no MLP)
  with a direction-gated SS2D per block.
"""
import re
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import SS2D
from ..ops import DirectionPlan
from ..serialization import release_file_globals
from ._checks import check_state_dict_matches, unwrap_state_dict
from .vim import Vim, resample_pos_embed
from .vmamba import VMamba

__all__ = ['LocalVMamba', 'LOCAL_VIM_DIRECTIONS', 'LOCAL_VMAMBA_DIRECTIONS']


def _layers(*rows: str) -> Tuple[Tuple[str, ...], ...]:
    return tuple(tuple(r.split()) for r in rows)


# the searched directions of the released models, one row per layer (official local_vim.py / local_vmamba.py)
_LOCAL_VIM_SEARCHED = _layers(
    'h v_flip w7 w7_flip', 'h_flip w2_flip w7 w7_flip', 'h h_flip v w7', 'h h_flip v v_flip',
    'h h_flip v v_flip', 'h h_flip v v_flip', 'h_flip v v_flip w7', 'h_flip v v_flip w2_flip',
    'h h_flip v v_flip', 'h h_flip v v_flip', 'h v v_flip w2', 'h v v_flip w2_flip', 'h h_flip v_flip w7',
    'h_flip v v_flip w2', 'h h_flip v v_flip', 'h v w2 w2_flip', 'v v_flip w2 w7', 'h h_flip v w2',
    'h h_flip w2_flip w7', 'v v_flip w2 w2_flip',
)
# local_vim_tiny_middle_cls_token (official) repeats local_vim_tiny's list
LOCAL_VIM_DIRECTIONS = {'local_vim_tiny': _LOCAL_VIM_SEARCHED, 'local_vim_small': _LOCAL_VIM_SEARCHED,
                        'local_vim_tiny_midcls': _LOCAL_VIM_SEARCHED}
LOCAL_VMAMBA_DIRECTIONS = {
    'local_vmamba_tiny': _layers(
        'h h_flip w7 w7_flip', 'h_flip v_flip w2 w2_flip', 'h_flip v_flip w2_flip w7', 'h_flip v v_flip w2',
        'h h_flip v_flip w2_flip', 'h_flip v_flip w2 w2_flip', 'h w2_flip w7 w7_flip', 'h h_flip v v_flip',
        'h v_flip w7 w7_flip', 'h_flip v w2 w7_flip', 'v v_flip w2 w7_flip', 'h h_flip v_flip w2_flip',
        'v_flip w2_flip w7 w7_flip', 'h_flip v_flip w2_flip w7_flip', 'h_flip v w7 w7_flip',
    ),
    'local_vmamba_small': _layers(
        'h v v_flip w7_flip', 'h h_flip v w7', 'h_flip v v_flip w7', 'h_flip v w2_flip w7',
        'h_flip v w2_flip w7', 'h_flip v_flip w2 w7_flip', 'h_flip v v_flip w7', 'h v v_flip w7',
        'h v v_flip w7', 'h v v_flip w7_flip', 'h h_flip v v_flip', 'h v v_flip w2', 'v v_flip w2_flip w7',
        'h h_flip v w2', 'h_flip v v_flip w7_flip', 'h h_flip v v_flip', 'h v v_flip w7_flip',
        'h v v_flip w7_flip', 'h h_flip v_flip w7', 'h_flip v_flip w2_flip w7', 'h_flip v v_flip w7_flip',
        'v v_flip w7 w7_flip', 'h v v_flip w7_flip', 'h_flip v v_flip w2', 'h v v_flip w2_flip',
        'h h_flip v w7', 'h h_flip w7 w7_flip', 'h v_flip w2 w2_flip', 'h v_flip w2 w7', 'h v v_flip w7_flip',
        'h_flip v w2_flip w7', 'h_flip v_flip w7 w7_flip', 'h v w7 w7_flip',
    ),
}


class LocalVMamba(VMamba):
    """VMamba v0 hierarchy whose SS2D blocks scan four per-layer directions merged by a channel gate."""

    def __init__(
            self,
            directions: Sequence[Sequence[str]],
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (2, 2, 9, 2),
            dims: Union[int, Tuple[int, ...]] = 96,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = True,
            patch_size: int = 4,
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            device=None,
            dtype=None,
    ):
        """
        Args:
            directions: scan directions per block (sum(depths) lists), see vssm.ops.plans.
            in_chans, num_classes, global_pool, depths, dims, d_state, ssm_ratio, dt_rank, d_conv, conv_bias,
            patch_size, norm_eps, drop_rate, drop_path_rate: as VMamba (v0 layout: z-gate, no MLP).
        """
        directions = [tuple(d) for d in directions]
        if len(directions) != sum(depths):
            raise ValueError(f'got {len(directions)} per-block direction lists for {sum(depths)} blocks {depths}')
        super().__init__(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, depths=depths, dims=dims,
            d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
            ssm_act_layer='silu', gate=True, mlp_ratio=0., stem='v1', patch_size=patch_size, downsample='v1',
            norm_eps=norm_eps, drop_rate=drop_rate, drop_path_rate=drop_path_rate, device=device, dtype=dtype,
        )
        # swap each block's 4-direction VMamba scan for its searched, gated one (same parameter shapes + gate)
        dd = {'device': device, 'dtype': dtype}
        blocks = [blk for stage in self.stages for blk in stage.blocks]
        for blk, dirs in zip(blocks, directions):
            dim = blk.norm.normalized_shape[0]
            blk.op = SS2D(
                dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
                act_layer='silu', gate=True, plan=DirectionPlan(dirs, 'none'), direction_gate=True, **dd,
            )
        if not self.norm.weight.is_meta:
            self.init_weights()


# --------------------------------------------------------------------------------------- checkpoints

_LOCAL_VIM_DIR_PARAM = re.compile(r'^(blocks\.\d+\.mixer\.)(A_log|D)_(\d+)$')
_LOCAL_VIM_DIR_MODULE = re.compile(r'^(blocks\.\d+\.mixer\.)(conv1d|x_proj|dt_proj)_(\d+)\.')


def _remap_local_vim_key(k: str) -> Optional[str]:
    if k.startswith('rope.'):
        return None  # fixed rotary tables, recomputed from the config
    if k.startswith('layers.'):
        k = 'blocks.' + k[len('layers.'):]
    if k.startswith('norm_f.'):
        return 'norm.' + k[len('norm_f.'):]
    k = _LOCAL_VIM_DIR_PARAM.sub(r'\1dirs.\3.\2', k)
    k = _LOCAL_VIM_DIR_MODULE.sub(r'\1dirs.\3.\2.', k)
    return k.replace('.mixer.attn.', '.mixer.direction_gate.')


def local_vim_checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Vim) -> Dict[str, torch.Tensor]:
    """Official LocalVim checkpoints (`state_dict` / `model` wrappers, `module.` prefix) -> vssm keys."""
    state_dict = unwrap_state_dict(state_dict)
    has_token, wants_token = 'cls_token' in state_dict, getattr(model, 'cls_token', None) is not None
    if has_token != wants_token:
        raise ValueError(
            f'this LocalVim checkpoint {"has" if has_token else "has no"} cls_token but the model '
            f'{"has none" if has_token else "has one"}: local_vim_tiny_middle_cls_token files load into '
            f'local_vim_tiny_midcls, the RoPE LocalVim files (local_vim_tiny.ckpt) into local_vim_tiny / _small')
    out = {}
    for k, v in state_dict.items():
        nk = _remap_local_vim_key(k)
        if nk is None:
            continue
        out[nk] = resample_pos_embed(v, model) if nk == 'pos_embed' else v
    check_state_dict_matches(out, model, ignore=('head.', 'patch_embed.proj.'))
    return out


def _remap_local_vmamba_key(k: str) -> str:
    if k.startswith('patch_embed.'):
        return 'stem.' + k[len('patch_embed.'):]
    m = re.match(r'^layers\.(\d+)\.downsample\.(.*)$', k)
    if m:  # the official downsample ends stage i; ours starts stage i + 1
        return f'stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}'
    k = re.sub(r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.', k)
    k = k.replace('.op.multi_scan.attn.', '.op.direction_gate.')
    return k.replace('classifier.norm.', 'norm.', 1).replace('classifier.head.', 'head.fc.', 1)


def local_vmamba_checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor],
                                      model: LocalVMamba) -> Dict[str, torch.Tensor]:
    """Official LocalVMamba checkpoints (`state_dict` / `model` wrappers, `module.` prefix) -> vssm keys."""
    state_dict = unwrap_state_dict(state_dict)
    out = {_remap_local_vmamba_key(k): v for k, v in state_dict.items()}
    check_state_dict_matches(out, model, ignore=('head.fc.', 'stem.0.'))
    return out


# ------------------------------------------------------------------------------------------- configs

_RELEASE = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'


def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2403.09338', 'origin_url': 'https://github.com/hunto/LocalMamba',
        **kwargs,
    }


_VMAMBA_CFG = dict(pool_size=(7, 7), first_conv='stem.0', classifier='head.fc')

# the official README lists release files for LocalVim-T, LocalVim-T midcls and LocalVMamba-S only (LocalVim-S
# links the LocalVMamba-S file by mistake; LocalVMamba-T was never released)
default_cfgs = generate_default_cfgs({
    'local_vim_tiny.in1k': _cfg(url=_RELEASE + 'local_vim_tiny.ckpt'),
    'local_vim_small.in1k': _cfg(),
    'local_vim_tiny_midcls.in1k': _cfg(url=_RELEASE + 'local_vim_tiny_middle_cls_token.ckpt'),
    'local_vmamba_tiny.in1k': _cfg(**_VMAMBA_CFG),
    'local_vmamba_small.in1k': _cfg(url=_RELEASE + 'local_vssm_small.ckpt', **_VMAMBA_CFG),
})


def _create_local_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    out_indices = kwargs.pop('out_indices', 3)
    with release_file_globals():  # official files pickle configs / args (vssm.serialization)
        return build_model_with_cfg(
            Vim, variant, pretrained,
            pretrained_filter_fn=local_vim_checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
            **kwargs,
        )


def _create_local_vmamba(variant: str, pretrained: bool = False, **kwargs) -> LocalVMamba:
    with release_file_globals():  # official files pickle configs / args (vssm.serialization)
        return build_model_with_cfg(
            LocalVMamba, variant, pretrained,
            pretrained_filter_fn=local_vmamba_checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
            **kwargs,
        )


# LocalVim: Vim without class token, gated 4-direction mixers over the patch grid, RoPE, mean pooling
_LOCAL_VIM = dict(depth=20, class_token=False, global_pool='avg', direction_gate=True, rope=True,
                  dynamic_img_pad=True, weight_init='trunc_normal')


@register_model
def local_vim_tiny(pretrained: bool = False, **kwargs) -> Vim:
    """LocalVim-T: 8.0M params, 76.2 top-1."""
    args = dict(embed_dim=192, directions=LOCAL_VIM_DIRECTIONS['local_vim_tiny'], drop_path_rate=0.1, **_LOCAL_VIM)
    return _create_local_vim('local_vim_tiny', pretrained, **dict(args, **kwargs))


@register_model
def local_vim_tiny_midcls(pretrained: bool = False, **kwargs) -> Vim:
    """LocalVim-T with the middle class token (official local_vim_tiny_middle_cls_token): 8.0M params, 77.8 top-1."""
    args = dict(embed_dim=192, directions=LOCAL_VIM_DIRECTIONS['local_vim_tiny_midcls'], drop_path_rate=0.1,
                **dict(_LOCAL_VIM, class_token=True, grid_scan=True, global_pool='token', rope=False))
    return _create_local_vim('local_vim_tiny_midcls', pretrained, **dict(args, **kwargs))


@register_model
def local_vim_small(pretrained: bool = False, **kwargs) -> Vim:
    """LocalVim-S: 28M params, 81.2 top-1 (81.1 for the released file)."""
    args = dict(embed_dim=384, directions=LOCAL_VIM_DIRECTIONS['local_vim_small'], drop_path_rate=0.1, **_LOCAL_VIM)
    return _create_local_vim('local_vim_small', pretrained, **dict(args, **kwargs))


@register_model
def local_vmamba_tiny(pretrained: bool = False, **kwargs) -> LocalVMamba:
    """LocalVMamba-T: 25.5M params, 82.7 top-1."""
    args = dict(depths=(2, 2, 9, 2), dims=96, directions=LOCAL_VMAMBA_DIRECTIONS['local_vmamba_tiny'],
                drop_path_rate=0.2)
    return _create_local_vmamba('local_vmamba_tiny', pretrained, **dict(args, **kwargs))


@register_model
def local_vmamba_small(pretrained: bool = False, **kwargs) -> LocalVMamba:
    """LocalVMamba-S: 49.7M params, 83.7 top-1."""
    args = dict(depths=(2, 2, 27, 2), dims=96, directions=LOCAL_VMAMBA_DIRECTIONS['local_vmamba_small'],
                drop_path_rate=0.2)
    return _create_local_vmamba('local_vmamba_small', pretrained, **dict(args, **kwargs))
