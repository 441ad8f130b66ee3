"""GroupMamba: parameter-efficient group visual state space model.

Paper: `GroupMamba: Efficient Group-Based Visual State Space Model` - https://arxiv.org/abs/2407.13772
Official code: https://github.com/Amshaker/GroupMamba (classification/models/groupmamba.py, ss2d.py, csms6s.py)
Weights: HF hub Abdelrahman-shaker/GroupMamba-{Tiny,Small,Base} (EMA state dicts)

The modulated group Mamba layer normalises its input, splits the channels into four groups and runs one
single-direction SS2D per group (row-major, column-major and their flips); the outputs are concatenated,
scaled by ``skip_scale`` and the normalised input, modulated by a channel-affinity gate, normalised again by
the same LayerNorm and projected. The four groups' scans are one grouped plan scan (``GroupedSS2D``).
Blocks add a PVT-v2 MLP (depthwise 3x3 conv inside); a BatchNorm conv stem, 3x3 stride-2 downsamples, and
a class block on the mean token feed two classifiers (``head`` + distillation ``dist_head``, DeiT-style).
Channel-last (NHWC) features like VMamba; official checkpoints load through ``checkpoint_filter_fn``.
"""
import math
import re
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, Mlp, calculate_drop_path_rates, get_device_dtype, register_notrace_module, trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models.pvt_v2 import MlpWithDepthwiseConv

from ..layers import ChannelGate, GroupedSS2D
from ..ops import GROUPED_PLAN
from ..serialization import release_file_globals
from ._checks import check_state_dict_matches, unwrap_state_dict
from ._hierarchical import HierarchicalModelMixin
from .vmamba import _downsample_v3

__all__ = ['GroupMamba', 'GroupMambaLayer', 'GroupMambaBlock', 'ClassBlock', 'ClassTokenHead']


@register_notrace_module  # its affinity gate pools over shape-dependent axes: one leaf for timm's FX tracing
class GroupMambaLayer(nn.Module):
    """The modulated group Mamba layer (channel-last): four single-direction SS2D groups + channel affinity.

    The official layer casts float16 input to float32 first; this one runs in its input's dtype (under
    autocast the LayerNorms and the scan accumulate in float32 anyway).
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            d_conv: int = 3,
            reduction: int = 16,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim // reduction < 1:
            raise ValueError(f'the channel affinity reduces {dim} channels by {reduction}: dim must be at least '
                             f'{reduction}')
        # one LayerNorm, used before the groups and again after the modulation (the official layer reuses it)
        self.norm = nn.LayerNorm(dim, **dd)
        # channel affinity: mean over tokens of the normed input -> C/16 -> ReLU -> C -> sigmoid
        self.affinity = ChannelGate(dim, ratio=1 / reduction, act_layer='relu', norm=False, **dd)
        self.ssm = GroupedSS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv, conv_bias=True,
                               plan=GROUPED_PLAN, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.skip_scale = nn.Parameter(torch.ones(1, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = self.ssm(h) * self.skip_scale * h
        y = y * self.affinity.gate(h)
        return self.proj(self.norm(y))


class GroupMambaBlock(nn.Module):
    """x + drop_path(layer(x)), then x + drop_path(PVT-v2 MLP(norm(x))); channel-last."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float,
            drop_path: float = 0.,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            d_conv: int = 3,
            reduction: int = 16,
            norm_eps: float = 1e-6,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.mixer = GroupMambaLayer(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv, reduction=reduction,
                                     **dd)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = MlpWithDepthwiseConv(dim, int(dim * mlp_ratio), **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bt, H, W, C = x.shape
        x = x + self.drop_path(self.mixer(x))
        mlp = self.mlp(self.norm2(x).reshape(Bt, H * W, C), [H, W]).reshape(Bt, H, W, C)
        return x + self.drop_path(mlp)


class ClassBlock(nn.Module):
    """The official class block on a (B, 1, 1, C) token: t + post_norm(layer(t)), then t + MLP(norm2(t))."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            d_conv: int = 3,
            reduction: int = 16,
            norm_eps: float = 1e-6,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.mixer = GroupMambaLayer(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv, reduction=reduction,
                                     **dd)
        self.post_norm = nn.LayerNorm(dim, eps=norm_eps, **dd)  # after the layer, unlike the blocks
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **dd)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        token = token + self.post_norm(self.mixer(token))
        return token + self.mlp(self.norm2(token))


class ClassTokenHead(nn.Module):
    """Pool the last map into the official class token and classify it with `fc` and the distillation `fc_dist`.

    pool_type 'token': the mean token through a ClassBlock, then a LayerNorm (pre-logits); '': no pooling (the
    map passes through). With both heads the logits are (fc, fc_dist) while training with distillation
    (``distilled_training``, as timm's distilled DeiT), and their mean otherwise.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            pool_type: str = 'token',
            distilled: bool = True,
            drop_rate: float = 0.,
            mlp_ratio: float = 4.0,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            d_conv: int = 3,
            reduction: int = 16,
            norm_eps: float = 1e-6,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.in_features = in_features
        self.distilled = distilled
        self.distilled_training = False
        self._block_args = dict(mlp_ratio=mlp_ratio, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv,
                                reduction=reduction, norm_eps=norm_eps)
        self.cls_block: Optional[ClassBlock] = None
        self.norm: nn.Module = nn.Identity()
        self._set_pool(pool_type, device=device, dtype=dtype)
        self.drop = nn.Dropout(drop_rate)
        self._set_classifiers(num_classes, device=device, dtype=dtype)

    def _set_pool(self, pool_type: str, device=None, dtype=None) -> None:
        if pool_type not in ('token', ''):
            raise ValueError(f"GroupMamba pools with its class block ('token') or not at all (''); got "
                             f"global_pool={pool_type!r}")
        self.pool_type = pool_type
        if pool_type == '':
            self.cls_block, self.norm = None, nn.Identity()
        elif self.cls_block is None:
            eps = self._block_args['norm_eps']
            self.cls_block = ClassBlock(self.in_features, **self._block_args, device=device, dtype=dtype)
            self.norm = nn.LayerNorm(self.in_features, eps=eps, device=device, dtype=dtype)

    def _set_classifiers(self, num_classes: int, device=None, dtype=None) -> None:
        def linear():
            return nn.Linear(self.in_features, num_classes, device=device, dtype=dtype) if num_classes > 0 \
                else nn.Identity()
        self.fc = linear()
        self.fc_dist = linear() if self.distilled else None

    def reset(self, num_classes: int, pool_type: Optional[str] = None, device=None, dtype=None) -> None:
        if pool_type is not None:
            self._set_pool(pool_type, device=device, dtype=dtype)
        self._set_classifiers(num_classes, device=device, dtype=dtype)
        self.train(self.training)  # new modules follow the model's mode

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls_block is None:
            return x
        token = self.cls_block(x.mean(dim=(1, 2), keepdim=True))  # the mean token as a 1x1 map
        return self.norm(token.flatten(1))

    def forward(self, x: torch.Tensor, pre_logits: bool = False):
        x = self.drop(self.pool(x))
        if pre_logits:
            return x
        if self.fc_dist is None:
            return self.fc(x)
        logits, logits_dist = self.fc(x), self.fc_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return logits, logits_dist
        return (logits + logits_dist) / 2


class GroupMambaStem(nn.Module):
    """conv 7x7 s2 -> BN -> ReLU -> (conv 3x3 -> BN -> ReLU) x2 -> conv 3x3 s2 -> LayerNorm; NCHW in, NHWC out.

    `conv` keeps the official nn.Sequential indices (0, 1, 3, 4, 6, 7)."""

    def __init__(self, in_chans: int, hidden_dim: int, out_dim: int, norm_eps: float = 1e-5, device=None,
                 dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden_dim, out_dim, 3, stride=2, padding=1, **dd)
        self.norm = nn.LayerNorm(out_dim, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.conv(x)).permute(0, 2, 3, 1))


class GroupMambaStage(nn.Module):
    """(downsample) -> blocks -> norm; channel-last. The last stage has no norm (the head norms its token)."""

    def __init__(self, downsample: nn.Module, blocks: List[nn.Module], norm: nn.Module):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class GroupMamba(HierarchicalModelMixin, nn.Module):
    """GroupMamba: a BN conv stem, four stages of modulated group Mamba blocks, a class-token head with a
    distillation classifier. Channel-last features, output_fmt NHWC."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            depths: Tuple[int, ...] = (3, 4, 9, 3),
            dims: Union[int, Tuple[int, ...]] = (64, 128, 348, 448),
            mlp_ratios: Union[float, Tuple[float, ...]] = (8, 8, 4, 4),
            stem_hidden_dim: int = 32,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            d_conv: int = 3,
            reduction: int = 16,
            distilled: bool = True,
            norm_eps: float = 1e-6,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: input image channels.
            num_classes: classifier classes (0 for no classifier).
            global_pool: 'token' (the official class block on the mean token) or '' (no pooling).
            depths: blocks per stage.
            dims: stage widths (multiples of 4: four channel groups), or the first width (doubled per stage).
            mlp_ratios: MLP hidden ratio per stage (one number for all); the class block uses the last.
            stem_hidden_dim: width of the stem's three BN convs.
            d_state: SSM state size N of each group's scan.
            ssm_ratio: inner width / group width of each group's SS2D.
            d_conv: depthwise conv size inside each group's SS2D.
            reduction: channel-affinity bottleneck (C -> C / reduction -> C).
            distilled: add the distillation classifier (`fc_dist`, the official `dist_head`).
            norm_eps: epsilon of the block, stage and head LayerNorms (the layer's own norm, the SS2D out_norm,
                the stem and downsample norms keep 1e-5, as the official code).
            drop_rate: dropout before the classifiers (the official train.py passes drop_rate=0.1, which its
                model swallows unused: 0 reproduces it).
            drop_path_rate: stochastic depth, linear over all blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if isinstance(dims, int):
            dims = tuple(dims * 2 ** i for i in range(len(depths)))
        if isinstance(mlp_ratios, (int, float)):
            mlp_ratios = (mlp_ratios,) * len(depths)
        if not len(dims) == len(depths) == len(mlp_ratios):
            raise ValueError(f'dims {dims}, depths {depths} and mlp_ratios {mlp_ratios} need one entry per stage')
        groups = GROUPED_PLAN.num_directions
        if any(d % groups for d in dims):
            raise ValueError(f'GroupMamba splits every stage into {groups} channel groups: dims {dims} must be '
                             f'multiples of {groups}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_fmt = 'NHWC'
        self.min_input_size = 2 ** (len(depths) + 1)
        layer_args = dict(d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv, reduction=reduction)

        self.stem = GroupMambaStem(in_chans, stem_hidden_dim, dims[0], **dd)
        dp_flat = calculate_drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks
        self.feature_info = []
        stages = []
        stride = 4
        for i, (depth, dim, ratio) in enumerate(zip(depths, dims, mlp_ratios)):
            if i > 0:
                stride *= 2
            rates = dp_flat[sum(depths[:i]):sum(depths[:i + 1])]
            blocks = [GroupMambaBlock(dim, ratio, drop_path=r, norm_eps=norm_eps, **layer_args, **dd) for r in rates]
            last = i == len(depths) - 1
            stages.append(GroupMambaStage(
                _downsample_v3(dims[i - 1], dim, 1e-5, dd) if i > 0 else nn.Identity(),
                blocks,
                nn.Identity() if last else nn.LayerNorm(dim, eps=norm_eps, **dd),
            ))
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        # no norm over the last map: the official model normalises only the class token (head.norm)
        self.norm = nn.Identity()
        self.head = ClassTokenHead(
            dims[-1], num_classes, pool_type=global_pool, distilled=distilled, drop_rate=drop_rate,
            mlp_ratio=mlp_ratios[-1], norm_eps=norm_eps, **layer_args, **dd,
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official initialisation (Linear trunc_normal .02, LayerNorm 1/0, Conv2d N(0, 2 / fan_out) with zero
        bias, BatchNorm 1/0, each SS2D group's own); works after to_empty."""
        if next(self.parameters()).is_meta:  # nothing to fill, and init ops on meta are slow
            return
        for m in self.modules():
            if isinstance(m, GroupedSS2D):
                m.init_weights()
            elif isinstance(m, GroupMambaLayer):
                m.skip_scale.fill_(1.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.reset_parameters()
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        # the official optimizer skips 1-D parameters; each group's out_norm is 1-D there, stacked (4, D) here
        return ['*.ssm.out_norm.weight', '*.ssm.out_norm.bias']

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return (self.head.fc, self.head.fc_dist) if self.head.fc_dist is not None else self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifiers (both, with distillation) for num_classes; global_pool 'token' or '' when given."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Training forward returns (logits, distillation logits), for timm's TokenDistillationTask."""
        self.head.distilled_training = enable

# --------------------------------------------------------------------------------------- checkpoints

# per-group SS2D tensors: official name -> (ours, how the four groups combine): 'cat' along dim 0 where the
# official tensor already has a (size 1) group axis or runs over channels, 'stack' into a new group axis
_GROUP_TENSORS = {
    'x_proj_weight': ('x_proj_weight', 'cat'), 'dt_projs_weight': ('dt_projs_weight', 'cat'),
    'dt_projs_bias': ('dt_projs_bias', 'cat'), 'A_logs': ('A_logs', 'cat'), 'Ds': ('Ds', 'cat'),
    'conv2d.weight': ('conv2d.weight', 'cat'), 'conv2d.bias': ('conv2d.bias', 'cat'),
    'in_proj.weight': ('in_proj_weight', 'stack'), 'out_proj.weight': ('out_proj_weight', 'stack'),
    'out_norm.weight': ('out_norm.weight', 'stack'), 'out_norm.bias': ('out_norm.bias', 'stack'),
}
_LAYER_KEYS = {'fc1.': 'affinity.global_reduce.', 'fc2.': 'affinity.channel_select.'}
_BLOCK_KEYS = {'attn.': 'mixer.', 'mlp.dwconv.dwconv.': 'mlp.dwconv.'}
_CLS_BLOCK_KEYS = {'attn.': 'mixer.', 'norm1.': 'post_norm.'}


def _replace_prefix(k: str, table: Dict[str, str]) -> str:
    for old, new in table.items():
        if k.startswith(old):
            return new + k[len(old):]
    return k


def _remap_official_key(k: str, num_stages: int) -> str:
    """Official key -> ours, except the per-group SS2D tensors (`mamba_g{1..4}`), renamed in place."""
    if k.startswith('patch_embed1.'):
        return 'stem.' + k[len('patch_embed1.'):]
    m = re.match(r'^patch_embed(\d+)\.(proj|norm)\.(.*)$', k)
    if m:  # DownSamples: conv and norm at the v3 downsample's indices 1 and 3
        return f'stages.{int(m.group(1)) - 1}.downsample.{1 if m.group(2) == "proj" else 3}.{m.group(3)}'
    m = re.match(r'^norm(\d+)\.(.*)$', k)
    if m:
        i = int(m.group(1))
        return f'head.norm.{m.group(2)}' if i == num_stages else f'stages.{i - 1}.norm.{m.group(2)}'
    m = re.match(r'^block(\d+)\.(\d+)\.(.*)$', k)
    if m:
        rest = _replace_prefix(m.group(3), _BLOCK_KEYS)
        k = f'stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{rest}'
    elif k.startswith('post_network.0.'):
        k = 'head.cls_block.' + _replace_prefix(k[len('post_network.0.'):], _CLS_BLOCK_KEYS)
    elif k.startswith('head.'):
        return 'head.fc.' + k[len('head.'):]
    elif k.startswith('dist_head.'):
        return 'head.fc_dist.' + k[len('dist_head.'):]
    m = re.match(r'^(.*\.mixer\.)(.*)$', k)
    if m:
        k = m.group(1) + _replace_prefix(m.group(2), _LAYER_KEYS)
    return k


def _merge_groups(groups: Dict[Tuple[str, str], Dict[int, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """{(layer prefix, official name): {group: tensor}} -> our stacked tensors (groups 1..4 in order)."""
    out = {}
    for (prefix, name), parts in groups.items():
        ours, how = _GROUP_TENSORS[name]
        tensors = [parts[g] for g in sorted(parts)]
        out[f'{prefix}ssm.{ours}'] = torch.stack(tensors) if how == 'stack' else torch.cat(tensors)
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: GroupMamba) -> Dict[str, torch.Tensor]:
    """Official GroupMamba checkpoints -> vssm keys.

    The HF releases are bare EMA state dicts; the official train.py saves {'model', 'model_ema', 'optimizer',
    'lr_scheduler', 'scaler', 'epoch', 'max_accuracy', 'config' (a yacs CfgNode)}: the `model` weights are
    taken (`module.` prefixes dropped). The four groups' SS2D tensors are stacked into one GroupedSS2D.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.conv.0.weight' in state_dict and any(k.startswith('stages.') for k in state_dict):
        out = dict(state_dict)  # already ours
    else:
        num_stages = max((int(m.group(1)) for m in map(re.compile(r'^patch_embed(\d+)\.').match, state_dict)
                          if m), default=len(model.stages))
        out, groups = {}, {}
        for k, v in state_dict.items():
            if not torch.is_tensor(v):
                continue
            k = _remap_official_key(k, num_stages)
            m = re.match(r'^(.*\.mixer\.)mamba_g(\d)\.(.*)$', k)
            if m and m.group(3) in _GROUP_TENSORS:
                groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
            else:
                out[k] = v
        out.update(_merge_groups(groups))
    # a model built without the class-token pool or the distillation classifier does not use their weights
    if model.head.cls_block is None:
        out = {k: v for k, v in out.items() if not k.startswith(('head.cls_block.', 'head.norm.'))}
    if model.head.fc_dist is None:
        out = {k: v for k, v in out.items() if not k.startswith('head.fc_dist.')}
    check_state_dict_matches(out, model, ignore=('head.fc.', 'head.fc_dist.', 'stem.conv.0.'))
    return out


def checkpoint_to_official(state_dict: Dict[str, torch.Tensor], model: GroupMamba) -> Dict[str, torch.Tensor]:
    """vssm GroupMamba keys -> the official layout (the inverse of checkpoint_filter_fn)."""
    num_stages = len(model.stages)
    official_name = {ours: (name, how) for name, (ours, how) in _GROUP_TENSORS.items()}
    out = {}
    for k, v in state_dict.items():
        m = re.match(r'^(.*\.mixer\.)ssm\.(.*)$', k)
        if m is None:
            out[_to_official_name(k, num_stages)] = v
            continue
        prefix = _to_official_name(m.group(1) + '_', num_stages)[:-1]  # '...attn.'
        name, how = official_name[m.group(2)]
        for g, part in enumerate(v.chunk(GROUPED_PLAN.num_directions, dim=0), start=1):
            out[f'{prefix}mamba_g{g}.{name}'] = part.squeeze(0) if how == 'stack' else part
    return out


def _to_official_name(k: str, num_stages: int) -> str:
    if k.startswith('stem.'):
        return 'patch_embed1.' + k[len('stem.'):]
    m = re.match(r'^stages\.(\d+)\.downsample\.([13])\.(.*)$', k)
    if m:
        return f'patch_embed{int(m.group(1)) + 1}.{"proj" if m.group(2) == "1" else "norm"}.{m.group(3)}'
    m = re.match(r'^stages\.(\d+)\.norm\.(.*)$', k)
    if m:
        return f'norm{int(m.group(1)) + 1}.{m.group(2)}'
    if k.startswith('head.norm.'):
        return f'norm{num_stages}.' + k[len('head.norm.'):]
    if k.startswith('head.fc.'):
        return 'head.' + k[len('head.fc.'):]
    if k.startswith('head.fc_dist.'):
        return 'dist_head.' + k[len('head.fc_dist.'):]
    inv_layer = {v: o for o, v in _LAYER_KEYS.items()}
    m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.*)$', k)
    if m:
        prefix, rest, table = f'block{int(m.group(1)) + 1}.{m.group(2)}.', m.group(3), _BLOCK_KEYS
    elif k.startswith('head.cls_block.'):
        prefix, rest, table = 'post_network.0.', k[len('head.cls_block.'):], _CLS_BLOCK_KEYS
    else:
        return k
    if rest.startswith('mixer.'):
        return prefix + 'attn.' + _replace_prefix(rest[len('mixer.'):], inv_layer)
    return prefix + _replace_prefix(rest, {v: o for o, v in table.items()})


# ------------------------------------------------------------------------------------------- configs

def _cfg(repo: str = '', filename: str = '', **kwargs) -> Dict:
    return {
        'url': '', 'hf_hub_id': repo, 'hf_hub_filename': filename,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv.0', 'classifier': ('head.fc', 'head.fc_dist'),
        'license': 'mit', 'paper_ids': 'arXiv:2407.13772', 'origin_url': 'https://github.com/Amshaker/GroupMamba',
        **kwargs,
    }


# The HF repos hold the EMA weights as bare state dicts: groupmamba_tiny_ema.pth and groupmamba_small_ema.pth
# were seen in the repo listings; the base file name follows the same pattern but could not be verified.
default_cfgs = generate_default_cfgs({
    'groupmamba_tiny.in1k': _cfg('Abdelrahman-shaker/GroupMamba-Tiny', 'groupmamba_tiny_ema.pth'),
    'groupmamba_small.in1k': _cfg('Abdelrahman-shaker/GroupMamba-Small', 'groupmamba_small_ema.pth'),
    'groupmamba_base.in1k': _cfg('Abdelrahman-shaker/GroupMamba-Base', 'groupmamba_base_ema.pth'),
})


def _create_groupmamba(variant: str, pretrained: bool = False, **kwargs) -> GroupMamba:
    with release_file_globals():  # official training files pickle their yacs config (vssm.serialization)
        return build_model_with_cfg(
            GroupMamba, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
            **kwargs,
        )


# the official train.py trains every size with drop_path_rate 0.05
@register_model
def groupmamba_tiny(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-T: 23.36M params (with the distillation head), 83.3 top-1."""
    args = dict(depths=(3, 4, 9, 3), dims=(64, 128, 348, 448), mlp_ratios=(8, 8, 4, 4), stem_hidden_dim=32,
                drop_path_rate=0.05)
    return _create_groupmamba('groupmamba_tiny', pretrained, **dict(args, **kwargs))


@register_model
def groupmamba_small(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-S: 34.78M params (with the distillation head), 83.9 top-1."""
    args = dict(depths=(3, 4, 16, 3), dims=(64, 128, 348, 512), mlp_ratios=(8, 8, 4, 4), stem_hidden_dim=64,
                drop_path_rate=0.05)
    return _create_groupmamba('groupmamba_small', pretrained, **dict(args, **kwargs))


@register_model
def groupmamba_base(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-B: 57.15M params (with the distillation head), 84.5 top-1."""
    args = dict(depths=(3, 6, 21, 3), dims=(96, 192, 424, 512), mlp_ratios=(8, 8, 4, 4), stem_hidden_dim=64,
                drop_path_rate=0.05)
    return _create_groupmamba('groupmamba_base', pretrained, **dict(args, **kwargs))
