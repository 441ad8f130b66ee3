"""Spatial-Mamba: effective visual state space models via structure-aware state fusion.

Paper: `Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State Fusion`
    - https://arxiv.org/abs/2410.15091
Official code: https://github.com/EdwardChasel/Spatial-Mamba (Apache-2.0; weights on Google Drive)

One row-major selective scan per block whose hidden *states* (not outputs) are fused over their 2D
neighbourhood by dilated depthwise convolutions (``vssm.layers.StateFusion``) and only then read out with C:
y = fuse(h) * C + D * x. With d_state 1 (every released model) the state h is exactly a Mamba-1 scan's output
with C = 1 and D = 0, so the scan is the engine's ordinary ``plan_selective_scan`` over a one-direction plan;
no state-returning mode is needed. Blocks add two depthwise 3x3 position convs (cpe1, cpe2) around the mixer;
a BatchNorm conv stem and inverted-bottleneck downsamples. Channel-last (NHWC) features like VMamba; official
checkpoints load through ``checkpoint_filter_fn``.
"""
import math
import re
from typing import Dict, List, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead, ConvNormAct, DropPath, Mlp, calculate_drop_path_rates, register_notrace_module, trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ..layers import StateFusion, init_ssm_params
from ..ops import DirectionPlan, plan_selective_scan
from ..serialization import release_file_globals
from ._checks import check_state_dict_matches, unwrap_state_dict
from ._hierarchical import HierarchicalModelMixin

__all__ = ['SpatialMamba', 'StructureAwareSSM', 'SpatialMambaBlock']

ROW_MAJOR_PLAN = DirectionPlan(('h',), 'sum')


def _float32_up(t: torch.Tensor) -> torch.Tensor:
    # the per-channel SSM parameters enter the scan in float32 at least (float64 stays float64)
    return t.to(torch.promote_types(t.dtype, torch.float32))


@register_notrace_module  # shape-dependent plan: one leaf for timm's FX feature extraction
class StructureAwareSSM(nn.Module):
    """in_proj -> (x, z); x: depthwise 3x3 + SiLU -> row-major scan returning the state h -> state fusion
    -> y = fuse(h) * C + D * x -> out_norm -> * SiLU(z) -> out_proj. Channel-last in and out."""

    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            d_conv: int = 3,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if d_state != 1:
            # the state of an N > 1 scan is (B, D, N, L): the official model reshapes it as N = 1 (and its CUDA
            # op returns h for N <= 4 only); a Mamba-1 scan output equals h only for N = 1
            raise ValueError(f'Spatial-Mamba fuses the scan state of d_state 1 (all official models); got '
                             f'd_state={d_state}')
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16)  # of the block width, not d_inner (as the official code)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False, **dd)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, **dd)
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(d_inner, dt_rank, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(d_inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(d_inner, d_state, **dd))
        self.Ds = nn.Parameter(torch.empty(d_inner, **dd))
        self.state_fusion = StateFusion(d_inner, **dd)
        self.out_norm = nn.LayerNorm(d_inner, eps=norm_eps, **dd)
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: Linear trunc_normal .02, x_proj nn.Linear's default, Mamba's dt / A / D, fusion ones."""
        if self.A_logs.is_meta:
            return
        trunc_normal_(self.in_proj.weight, std=.02)
        trunc_normal_(self.out_proj.weight, std=.02)
        bound = 1 / math.sqrt(self.d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        init_ssm_params(self.A_logs, self.Ds, self.dt_projs_weight, self.dt_projs_bias, self.dt_rank)
        self.conv2d.reset_parameters()
        self.out_norm.reset_parameters()
        if self.state_fusion.fused_weight is None:
            self.state_fusion.reset_parameters()

    def scan_state(self, x: torch.Tensor, dts: torch.Tensor, Bs: torch.Tensor) -> torch.Tensor:
        """h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t along the rows of the (B, D, H, W) map -> (B, D, H, W).

        A Mamba-1 scan with C = 1 and no D skip returns exactly this state (N = 1)."""
        Bt, D, H, W = x.shape
        L = H * W
        index = ROW_MAJOR_PLAN.index(H, W, x.device)
        u = x.permute(0, 2, 3, 1).reshape(Bt, L, D).transpose(1, 2)  # channels-last memory: a view
        h = plan_selective_scan(
            u, dts, -torch.exp(_float32_up(self.A_logs)), Bs, torch.ones_like(Bs), None,
            delta_bias=_float32_up(self.dt_projs_bias), index=index, length=L, merge='sum', delta_softplus=True,
            delta_weight=self.dt_projs_weight.unsqueeze(0),
        )
        return h.view(Bt, D, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bt, H, W, _ = x.shape
        N, R = self.d_state, self.dt_rank
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = self.act(self.conv2d(xs.permute(0, 3, 1, 2)))  # (B, D, H, W), channels-last memory
        x_dbl = F.linear(xs.permute(0, 2, 3, 1), self.x_proj_weight)  # (B, H, W, R + 2N)
        x_dbl = x_dbl.reshape(Bt, 1, H * W, R + 2 * N).transpose(-1, -2)  # one direction: (B, 1, R + 2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        h = self.state_fusion(self.scan_state(xs, dts, Bs))
        y = h * Cs.reshape(Bt, 1, H, W) + xs * self.Ds.view(-1, 1, 1)
        y = self.out_norm(y.permute(0, 2, 3, 1)) * self.act(z)
        return self.out_proj(y)


class SpatialMambaBlock(nn.Module):
    """x + cpe1(x); x + drop_path(SSM(norm1 x)); x + cpe2(x); x + drop_path(MLP(norm2 x)). Channel-last."""

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            mlp_ratio: float = 4.0,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mixer = StructureAwareSSM(dim, d_state=d_state, ssm_ratio=ssm_ratio, norm_eps=norm_eps, **dd)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    @staticmethod
    def _cpe(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._cpe(self.cpe1, x)
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        x = x + self._cpe(self.cpe2, x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SpatialMambaStem(nn.Module):
    """conv1 (3x3 s2 -> C/2, BN, ReLU); conv2 (a residual pair of 3x3 convs: BN + ReLU, then BN) + skip;
    conv3 (3x3 s2 -> 4C, BN, ReLU; 1x1 -> C, BN). No conv biases. NCHW in, NHWC out."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        half = dim // 2
        self.conv1 = ConvNormAct(in_chans, half, 3, stride=2, **dd)
        self.conv2 = nn.Sequential(
            ConvNormAct(half, half, 3, **dd),
            ConvNormAct(half, half, 3, apply_act=False, **dd),
        )
        self.conv3 = nn.Sequential(
            ConvNormAct(half, 4 * dim, 3, stride=2, **dd),
            ConvNormAct(4 * dim, dim, 1, apply_act=False, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class SpatialMambaDownsample(nn.Module):
    """1x1 (C -> 8C, bias) + ReLU; depthwise 3x3 s2 (bias) + ReLU; 1x1 (-> 2C, bias) + BN. NHWC in and out."""

    def __init__(self, dim: int, out_dim: int, expand: float = 4.0, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = int(out_dim * expand)
        self.conv = nn.Sequential(
            ConvNormAct(dim, hidden, 1, bias=True, apply_norm=False, **dd),
            ConvNormAct(hidden, hidden, 3, stride=2, groups=hidden, bias=True, apply_norm=False, **dd),
            ConvNormAct(hidden, out_dim, 1, bias=True, apply_act=False, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SpatialMambaStage(nn.Module):
    """(downsample) -> blocks; channel-last."""

    def __init__(self, downsample: nn.Module, blocks: List[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SpatialMamba(HierarchicalModelMixin, nn.Module):
    """Spatial-Mamba: BN conv stem, four stages of structure-aware SSM blocks, LayerNorm + average pool head.
    Channel-last features, output_fmt NHWC."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (2, 4, 8, 4),
            dims: Union[int, Tuple[int, ...]] = 64,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            mlp_ratio: float = 4.0,
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
            d_state: SSM state size N; 1 only (the state fusion reads the N = 1 state, as every official model).
            ssm_ratio: SSM inner width / block width.
            mlp_ratio: MLP hidden ratio.
            norm_eps: LayerNorm epsilon (every LayerNorm, as the official nn.LayerNorm default).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear over all blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if isinstance(dims, int):
            dims = tuple(dims * 2 ** i for i in range(len(depths)))
        if len(dims) != len(depths):
            raise ValueError(f'dims {dims} and depths {depths} must have one entry per stage')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_fmt = 'NHWC'
        self.min_input_size = 2 ** (len(depths) + 1)

        self.stem = SpatialMambaStem(in_chans, dims[0], **dd)
        dp_flat = calculate_drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks
        self.feature_info = []
        stages = []
        stride = 4
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                stride *= 2
            rates = dp_flat[sum(depths[:i]):sum(depths[:i + 1])]
            stages.append(SpatialMambaStage(
                SpatialMambaDownsample(dims[i - 1], dim, **dd) if i > 0 else nn.Identity(),
                [SpatialMambaBlock(dim, drop_path=r, d_state=d_state, ssm_ratio=ssm_ratio, mlp_ratio=mlp_ratio,
                                   norm_eps=norm_eps, **dd) for r in rates],
            ))
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps, **dd)  # every token normalised before pooling
        self.head = ClassifierHead(
            dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC', **dd,
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official initialisation (Linear trunc_normal .02 / zero bias, LayerNorm 1/0, PyTorch's conv and BN
        defaults, the SSM's own); works after to_empty."""
        if next(self.parameters()).is_meta:  # nothing to fill, and init ops on meta are slow
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()
        for m in self.modules():
            if isinstance(m, StructureAwareSSM):
                m.init_weights()

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        # the official optimizer decays every weight of 2+ dims (A_logs (D, 1) included); 1-D parameters and
        # biases are skipped by timm's param groups as by the official one
        return []

# --------------------------------------------------------------------------------------- checkpoints

_BLOCK_KEYS = (('.ln_1.', '.norm1.'), ('.ln_2.', '.norm2.'), ('.self_attention.', '.mixer.'))


def _remap_official_key(k: str) -> str:
    """Official key -> ours: patch_embed -> stem, layers.i.downsample -> stages.i+1.downsample, ConvLayer
    `.norm.` -> ConvNormAct `.bn.`, block norms / mixer renamed, head -> head.fc."""
    if k.startswith('patch_embed.'):
        return 'stem.' + k[len('patch_embed.'):].replace('.norm.', '.bn.')
    m = re.match(r'^layers\.(\d+)\.downsample\.(.*)$', k)
    if m:
        return f'stages.{int(m.group(1)) + 1}.downsample.' + m.group(2).replace('.norm.', '.bn.')
    m = re.match(r'^layers\.(\d+)\.blocks\.(.*)$', k)
    if m:
        k = f'stages.{m.group(1)}.blocks.{m.group(2)}'
        for old, new in _BLOCK_KEYS:
            k = k.replace(old, new)
        return k
    if k.startswith('head.'):
        return 'head.fc.' + k[len('head.'):]
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: SpatialMamba) -> Dict[str, torch.Tensor]:
    """Official Spatial-Mamba checkpoints -> vssm keys.

    The official main.py saves {'model', 'model_ema' (when EMA is on), 'optimizer', 'lr_scheduler', 'config'
    (yacs), ...}: the EMA weights are taken when present (as timm's loader prefers them), else `model`;
    `module.` prefixes are dropped. Bare state dicts (official layout or ours) load as they are.
    """
    if isinstance(state_dict, dict) and isinstance(state_dict.get('model_ema'), dict) and state_dict['model_ema']:
        state_dict = state_dict['model_ema']
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('stem.conv1.') for k in state_dict):
        out = {k: v for k, v in state_dict.items() if torch.is_tensor(v)}  # already ours
    else:
        out = {_remap_official_key(k): v for k, v in state_dict.items() if torch.is_tensor(v)}
    check_state_dict_matches(out, model, ignore=('head.fc.', 'stem.conv1.conv.'))
    return out


def checkpoint_to_official(state_dict: Dict[str, torch.Tensor], model: SpatialMamba) -> Dict[str, torch.Tensor]:
    """vssm Spatial-Mamba keys -> the official layout (the inverse of checkpoint_filter_fn)."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(r'^stages\.(\d+)\.downsample\.(.*)$', k)
        if k.startswith('stem.'):
            k = 'patch_embed.' + k[len('stem.'):].replace('.bn.', '.norm.')
        elif m:
            k = f'layers.{int(m.group(1)) - 1}.downsample.' + m.group(2).replace('.bn.', '.norm.')
        elif k.startswith('stages.'):
            k = 'layers.' + k[len('stages.'):]
            for official, ours in _BLOCK_KEYS:
                k = k.replace(ours, official)
        elif k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------- configs

def _cfg(**kwargs) -> Dict:
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1.conv', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2410.15091',
        'origin_url': 'https://github.com/EdwardChasel/Spatial-Mamba',
        **kwargs,
    }


# The released weights are Google Drive files (no address timm can fetch): the urls stay empty, so
# pretrained=True raises; load a downloaded file with pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    'spatial_mamba_tiny.in1k': _cfg(),
    'spatial_mamba_small.in1k': _cfg(),
    'spatial_mamba_base.in1k': _cfg(),
})


def _create_spatial_mamba(variant: str, pretrained: bool = False, **kwargs) -> SpatialMamba:
    with release_file_globals():  # official files pickle their yacs config (vssm.serialization)
        return build_model_with_cfg(
            SpatialMamba, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
            **kwargs,
        )


@register_model
def spatial_mamba_tiny(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-T: 26.7M params, 4.5 GFLOPs, 83.5 top-1."""
    args = dict(depths=(2, 4, 8, 4), dims=64, drop_path_rate=0.2)
    return _create_spatial_mamba('spatial_mamba_tiny', pretrained, **dict(args, **kwargs))


@register_model
def spatial_mamba_small(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-S: 43.1M params, 7.1 GFLOPs, 84.6 top-1."""
    args = dict(depths=(2, 4, 21, 5), dims=64, drop_path_rate=0.3)
    return _create_spatial_mamba('spatial_mamba_small', pretrained, **dict(args, **kwargs))


@register_model
def spatial_mamba_base(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-B: 95.7M params, 15.8 GFLOPs, 85.3 top-1."""
    args = dict(depths=(2, 4, 21, 5), dims=96, drop_path_rate=0.5)
    return _create_spatial_mamba('spatial_mamba_base', pretrained, **dict(args, **kwargs))
