"""EfficientVMamba: atrous selective scan for light-weight visual Mamba.

Paper: `EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba` - https://arxiv.org/abs/2403.09977
Official code: https://github.com/TerryPei/EfficientVMamba

Stages 1-2 are EVSS blocks: x + drop_path(SE(ES2D(LN x)) + SE(conv branch(LN x))) with one shared SE gate,
ES2D = the SS2D mixer (z-gated, d_state 16, ssm_ratio 2) scanning the four phases of a step-2 atrous grid.
Stages 3-4 are MobileNetV2 inverted residual blocks (expand 4, ReLU, SE 0.125). Patch-conv stem, patch
merging between stages, channel-last (NHWC) features like VMamba. Official checkpoints load through
``checkpoint_filter_fn``.
"""
import re
from functools import partial
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite

from ..layers import ChannelGate, SS2D
from ..ops import EFFICIENT_VMAMBA_PLAN
from ..serialization import release_file_globals
from ._checks import check_state_dict_matches, unwrap_state_dict
from ._hierarchical import HierarchicalModelMixin
from .vmamba import PatchMerging, _stem_v1

__all__ = ['EfficientVMamba', 'EVSSBlock']


class EVSSBlock(nn.Module):
    """Efficient VSS block (channel-last): the atrous SSM branch and a local conv branch share one SE gate."""

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = True,
            se_ratio: float = 0.125,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        # ES2D: z-gated SS2D over the four step-2 atrous phases; odd maps are zero-padded to even size first,
        # as the official code does (the padded tokens sit inside the phase sequences and advance the state)
        self.op = SS2D(
            dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
            act_layer='silu', gate=True, plan=EFFICIENT_VMAMBA_PLAN, pad_multiple=2, **dd,
        )
        # indices as the official nn.Sequential: 0 depthwise 3x3, 1 BN, 2 GELU, 3 pointwise
        self.conv_branch = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd),
            nn.BatchNorm2d(dim, **dd),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1, **dd),
        )
        self.se = ChannelGate(dim, ratio=se_ratio, act_layer='gelu', **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        local = self.conv_branch(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.se(self.op(h)) + self.se(local))


class EfficientVMambaStage(nn.Module):
    """Downsample (patch merging, NHWC) then blocks; inverted-residual blocks run channel-first inside."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            blocks: List[nn.Module],
            downsample: bool,
            channels_first: bool,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim, norm_eps=norm_eps, device=device, dtype=dtype) \
            if downsample else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.channels_first = channels_first
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.channels_first:
            x = x.permute(0, 3, 1, 2)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 2, 3, 1) if self.channels_first else x


class EfficientVMamba(HierarchicalModelMixin, nn.Module):
    """EfficientVMamba: EVSS stages then inverted-residual stages; channel-last features, output_fmt NHWC."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (2, 2, 4, 2),
            dims: Union[int, Tuple[int, ...]] = 64,
            ssm_stages: int = 2,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = True,
            se_ratio: float = 0.125,
            ir_exp_ratio: float = 4.0,
            ir_se_ratio: float = 0.125,
            patch_size: int = 4,
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: input image channels.
            num_classes: classifier classes (0 for no classifier).
            global_pool: pooling of the head ('avg', 'max', '' for none).
            depths: blocks per stage.
            dims: stage widths, or the first width (doubled per stage).
            ssm_stages: how many leading stages are EVSS blocks (the rest are inverted residuals).
            d_state: SSM state size N of ES2D.
            ssm_ratio: ES2D inner width / dim.
            dt_rank: delta projection rank ('auto' = ceil(dim / 16)).
            d_conv: ES2D depthwise conv size.
            conv_bias: bias on the ES2D depthwise conv.
            se_ratio: hidden ratio of the EVSS channel gate.
            ir_exp_ratio: expansion of the inverted residual blocks.
            ir_se_ratio: SE reduction of the inverted residual blocks (of the expanded width).
            patch_size: stride of the patch-conv stem.
            norm_eps: LayerNorm epsilon.
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear over all blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if isinstance(dims, int):
            dims = tuple(dims * 2 ** i for i in range(len(depths)))
        if len(dims) != len(depths):
            raise ValueError(f'dims {dims} and depths {depths} must have one entry per stage')
        if not 0 <= ssm_stages <= len(depths):
            raise ValueError(f'ssm_stages must be between 0 and {len(depths)}, got {ssm_stages}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_fmt = 'NHWC'
        self.min_input_size = patch_size * 2 ** (len(depths) - 1)

        self.stem = _stem_v1(in_chans, dims[0], patch_size, norm_eps, dd)
        evss = partial(
            EVSSBlock, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
            se_ratio=se_ratio, norm_eps=norm_eps, **dd,
        )
        inverted_residual = partial(
            InvertedResidual, exp_ratio=ir_exp_ratio, act_layer=nn.ReLU,
            se_layer=partial(SqueezeExcite, rd_ratio=ir_se_ratio), **dd,
        )
        dp_rates = calculate_drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks
        self.feature_info = []
        stages = []
        stride = patch_size
        prev_dim = dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            rates = dp_rates[sum(depths[:i]):sum(depths[:i + 1])]
            if i < ssm_stages:
                blocks = [evss(dim, drop_path=r) for r in rates]
            else:
                blocks = [inverted_residual(dim, dim, drop_path_rate=r) for r in rates]
            if i > 0:
                stride *= 2
            stages.append(EfficientVMambaStage(
                prev_dim, dim, blocks, downsample=i > 0, channels_first=i >= ssm_stages, norm_eps=norm_eps, **dd,
            ))
            prev_dim = dim
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev_dim
        # the official classifier normalises every token before pooling
        self.norm = nn.LayerNorm(prev_dim, eps=norm_eps, **dd)
        self.head = ClassifierHead(
            prev_dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC', **dd,
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official initialisation (Linear trunc_normal .02, norms 1/0, convs PyTorch default, SS2D's own);
        works after to_empty."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()
        for m in self.modules():
            if isinstance(m, SS2D):
                m.init_weights()

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        # the official code marks A_logs and Ds _no_weight_decay
        return ['*.A_logs', '*.Ds'] if any(isinstance(m, SS2D) for m in self.modules()) else []

# --------------------------------------------------------------------------------------- checkpoints

# official inverted residual (hunto's lib.models.operations) -> timm's InvertedResidual
_IR_KEYS = {
    'conv_pw.0.': 'conv_pw.', 'conv_pw.1.': 'bn1.',
    'conv_dw.0.': 'conv_dw.', 'conv_dw.1.': 'bn2.',
    'conv_pw2.0.': 'conv_pwl.', 'conv_pw2.1.': 'bn3.',
}


def _remap_official_key(k: str) -> Optional[str]:
    """Official EfficientVSSM key -> ours; None to drop.

    Official layout: ``patch_embed.{0,2}``; EVSS stages ``layers.i.blocks.j.*`` + ``layers.i.downsample.*``;
    inverted-residual stages ``layers.i.{1..depth}.*`` (index 0 and depth+1 are permutes) with the patch
    merging last; ``classifier.{norm,head}``. Downsamples close a stage there and open the next one here.
    """
    if k.startswith('patch_embed.'):
        return 'stem.' + k[len('patch_embed.'):]
    if k.startswith('classifier.norm.'):
        return 'norm.' + k[len('classifier.norm.'):]
    if k.startswith('classifier.head.'):
        return 'head.fc.' + k[len('classifier.head.'):]
    m = re.match(r'^layers\.(\d+)\.(.*)$', k)
    if not m:
        return k
    i, rest = int(m.group(1)), m.group(2)
    m = re.match(r'^downsample\.(.*)$', rest)
    if m:
        return f'stages.{i + 1}.downsample.{m.group(1)}'
    m = re.match(r'^blocks\.(\d+)\.(.*)$', rest)
    if m:
        return f'stages.{i}.blocks.{m.group(1)}.{m.group(2)}'
    m = re.match(r'^(\d+)\.(.*)$', rest)
    if m:
        idx, sub = int(m.group(1)), m.group(2)
        if sub.startswith(('reduction.', 'norm.')):  # the patch merging at the end of the nn.Sequential
            return f'stages.{i + 1}.downsample.{sub}'
        for old, new in _IR_KEYS.items():
            if sub.startswith(old):
                sub = new + sub[len(old):]
                break
        return f'stages.{i}.blocks.{idx - 1}.{sub}'
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: EfficientVMamba) -> Dict[str, torch.Tensor]:
    """Official EfficientVMamba checkpoints (`state_dict` wrapper, `module.` prefixes) -> vssm keys."""
    state_dict = unwrap_state_dict(state_dict)
    while state_dict and all(k.startswith('module.') for k in state_dict):  # DDP around DDP: module.module.
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    if 'stem.0.weight' in state_dict and any(k.startswith('stages.') for k in state_dict):
        out = dict(state_dict)  # already ours
    else:
        out = {}
        for k, v in state_dict.items():
            nk = _remap_official_key(k)
            if nk is not None:
                out[nk] = v
    check_state_dict_matches(out, model, ignore=('head.fc.', 'stem.0.'))
    return out


# ------------------------------------------------------------------------------------------- configs

def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2403.09977',
        'origin_url': 'https://github.com/TerryPei/EfficientVMamba',
        **kwargs,
    }


# The official README lists the checkpoints as "[-]" (logs only, release v1.0.0); third-party configs load
# files named efficient_vmamba_{tiny,small,base}.ckpt but no download address could be verified, so the
# urls stay empty: load a local file with pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    'efficient_vmamba_tiny.in1k': _cfg(),
    'efficient_vmamba_small.in1k': _cfg(),
    'efficient_vmamba_base.in1k': _cfg(),
})


def _create_efficient_vmamba(variant: str, pretrained: bool = False, **kwargs) -> EfficientVMamba:
    with release_file_globals():  # official files pickle configs / args (vssm.serialization)
        return build_model_with_cfg(
            EfficientVMamba, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
            **kwargs,
        )


@register_model
def efficient_vmamba_tiny(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-T (official mobile_vssm_fusion_nano): 6M params, 0.8 GFLOPs, 76.5 top-1."""
    args = dict(depths=(2, 2, 4, 2), dims=48, drop_path_rate=0.2)
    return _create_efficient_vmamba('efficient_vmamba_tiny', pretrained, **dict(args, **kwargs))


@register_model
def efficient_vmamba_small(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-S (official mobile_vssm_fusion_micro, width 64 as the released weights):
    11M params, 1.3 GFLOPs, 78.7 top-1."""
    args = dict(depths=(2, 2, 4, 2), dims=64, drop_path_rate=0.2)
    return _create_efficient_vmamba('efficient_vmamba_small', pretrained, **dict(args, **kwargs))


@register_model
def efficient_vmamba_base(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-B (official mobile_vssm_fusion_tiny): 33M params, 4.0 GFLOPs, 81.8 top-1."""
    args = dict(depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.2)
    return _create_efficient_vmamba('efficient_vmamba_base', pretrained, **dict(args, **kwargs))
