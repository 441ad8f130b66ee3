"""VMamba: Visual State Space Model.

Paper: `VMamba: Visual State Space Model` - https://arxiv.org/abs/2401.10166
Official code and weights: https://github.com/MzeroMiko/VMamba

Channel-last (NHWC) internally like the official code; the SS2D mixer comes from vssm.layers and its
4-direction scan from vssm.ops. Official checkpoints load through ``checkpoint_filter_fn``.
"""
import re
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, calculate_drop_path_rates, register_notrace_module, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ..layers import Permute, SS2D, SSD2D, VSSBlock
from ..serialization import release_file_globals
from ._checks import check_state_dict_matches, unwrap_state_dict
from ._hierarchical import HierarchicalModelMixin

__all__ = ['VMamba']


@register_notrace_module  # the layout choice reads sizes: a leaf for timm's FX tracer
class LayoutConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and values) that hands oneDNN the input layout it runs fastest on CPU.

    Channels-last when the map is at least as large as the weight: the output is then NHWC memory that
    the Permute + LayerNorm after it read without a copy, and oneDNN's channels-last kernel is several
    times faster on the 3-channel image. Contiguous NCHW when the map is smaller than the weight (late
    downsamples at small batch): a channels-last input would make oneDNN reorder the whole weight on every
    call (10.6 MB for VMamba-T's last downsample). Other devices get the input as it is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eager only: under torch.compile / torch.export the compiler picks layouts, and a branch on the batch
        # size would specialise an exported dynamic batch
        if x.device.type == 'cpu' and not torch.compiler.is_compiling():
            small = x.numel() < self.weight.numel()
            x = x.contiguous(memory_format=torch.contiguous_format if small else torch.channels_last)
        return super().forward(x)


def _stem_v1(in_chans: int, dim: int, patch_size: int, norm_eps: float, dd) -> nn.Sequential:
    # indices as the official v1 stem: 0 conv, 1 permute, 2 norm
    return nn.Sequential(
        LayoutConv2d(in_chans, dim, patch_size, stride=patch_size, **dd),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim, eps=norm_eps, **dd),
    )


def _stem_v2(in_chans: int, dim: int, norm_eps: float, dd) -> nn.Sequential:
    # indices as the official v2 stem: 0 conv, 2 norm, 5 conv, 7 norm
    return nn.Sequential(
        LayoutConv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim // 2, eps=norm_eps, **dd),
        Permute(0, 3, 1, 2),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim, eps=norm_eps, **dd),
    )


@register_notrace_module  # pads odd maps (a branch on the shape): one leaf for timm's FX feature extraction
class PatchMerging(nn.Module):
    """v1 downsample: 2x2 neighbours concatenated (official order), LayerNorm(4C), Linear 4C -> out."""

    def __init__(self, dim: int, out_dim: int, norm_eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False, **dd)
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = nn.functional.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def _downsample_v3(dim: int, out_dim: int, norm_eps: float, dd) -> nn.Sequential:
    # indices as the official v3 downsample: 1 conv, 3 norm
    return nn.Sequential(
        Permute(0, 3, 1, 2),
        LayoutConv2d(dim, out_dim, 3, stride=2, padding=1, **dd),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(out_dim, eps=norm_eps, **dd),
    )


class VMambaStage(nn.Module):
    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            downsample: Optional[str],
            drop_path_rates: List[float],
            block_fn: Callable,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if downsample == 'v1':
            self.downsample = PatchMerging(dim, out_dim, norm_eps=norm_eps, **dd)
        elif downsample == 'v3':
            self.downsample = _downsample_v3(dim, out_dim, norm_eps, dd)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[block_fn(out_dim, drop_path=dpr, **dd) for dpr in drop_path_rates[:depth]])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class VMamba(HierarchicalModelMixin, nn.Module):
    """VMamba: a hierarchy of VSS blocks (SS2D mixer + MLP), channel-last features, output_fmt NHWC."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (2, 2, 9, 2),
            dims: Union[int, Tuple[int, ...]] = 96,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = False,
            ssm_act_layer: str = 'silu',
            gate: bool = False,
            mlp_ratio: float = 4.0,
            mlp_act_layer: str = 'gelu',
            stem: str = 'v2',
            patch_size: int = 4,
            downsample: str = 'v3',
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            ssm_mode: str = 'selective',
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
            d_state: SSM state size N (1 for the s1/s2 models, 16 for vanilla v0).
            ssm_ratio: SS2D inner width / dim.
            dt_rank: delta projection rank ('auto' = ceil(dim / 16)).
            d_conv: SS2D depthwise conv size.
            conv_bias: bias on the SS2D conv (v0 only).
            ssm_act_layer: activation inside SS2D.
            gate: SS2D z-gate (v0); the s1/s2 models are "noz".
            mlp_ratio: MLP hidden ratio (0 = no MLP, v0).
            mlp_act_layer: MLP activation.
            stem: 'v1' (patch conv + norm) or 'v2' (two 3x3 s2 convs).
            patch_size: stride of the v1 stem.
            downsample: 'v1' (patch merging) or 'v3' (3x3 s2 conv + norm).
            norm_eps: LayerNorm epsilon.
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear over all blocks.
            ssm_mode: 'selective' (SS2D, Mamba-1) or 'ssd' (SSD2D, Mamba-2: the m2 models; dt_rank is then
                the number of heads per direction).
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

        if stem == 'v1':
            self.stem = _stem_v1(in_chans, dims[0], patch_size, norm_eps, dd)
            stride = patch_size
        elif stem == 'v2':
            self.stem = _stem_v2(in_chans, dims[0], norm_eps, dd)
            stride = 4
        else:
            raise ValueError(f"stem must be 'v1' or 'v2', got {stem!r}")
        if downsample not in ('v1', 'v3'):
            raise ValueError(f"downsample must be 'v1' or 'v3', got {downsample!r}")

        block_fn = partial(
            VSSBlock, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
            ssm_act_layer=ssm_act_layer, gate=gate, mlp_ratio=mlp_ratio, mlp_act_layer=mlp_act_layer,
            norm_eps=norm_eps, ssm_mode=ssm_mode,
        )
        dp_flat = calculate_drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks
        dp_rates = [dp_flat[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
        self.feature_info = []
        stages = []
        prev_dim = dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                stride *= 2
            stages.append(VMambaStage(
                prev_dim, dim, depth, downsample if i > 0 else None, dp_rates[i], block_fn, norm_eps=norm_eps, **dd,
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
        """Official initialisation (Linear trunc_normal .02, LayerNorm 1/0, SS2D's own), works after to_empty."""
        if next(self.parameters()).is_meta:  # nothing to fill, and init ops on meta are slow
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.Conv2d)):
                m.reset_parameters()
        for m in self.modules():
            if isinstance(m, (SS2D, SSD2D)):
                m.init_weights()

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        # per-channel SSM parameters, as the official optimizer setup excludes them
        return ['*.A_logs', '*.Ds', '*.dt_projs_bias']

# --------------------------------------------------------------------------------------- checkpoints

def _remap_official_key(k: str) -> Optional[str]:
    """Official VMamba (v0 legacy, v0, v2/v3) key -> ours; None to drop."""
    # legacy vanilla names
    k = k.replace('patch_embed.proj.', 'patch_embed.0.').replace('patch_embed.norm.', 'patch_embed.2.')
    k = re.sub(r'\.ln_1\.', '.norm.', k)
    k = k.replace('.self_attention.', '.op.')
    if k.startswith('norm.'):
        k = 'classifier.' + k
    elif k.startswith('head.') and not k.startswith('head.fc.'):
        k = 'classifier.' + k
    # official layout -> ours
    k = k.replace('patch_embed.', 'stem.', 1) if k.startswith('patch_embed.') else k
    m = re.match(r'^layers\.(\d+)\.downsample\.(.*)$', k)
    if m:
        return f'stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}'
    k = re.sub(r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.', k)
    k = k.replace('.op.conv2d.1.', '.op.conv2d.')  # m0 (m2 models): conv2d is (Permute, Conv2d, Permute)
    k = k.replace('classifier.norm.', 'norm.').replace('classifier.head.', 'head.fc.')
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VMamba) -> Dict[str, torch.Tensor]:
    """Official VMamba checkpoints (any release layout, `model` wrapper, `module.` prefix) -> vssm keys."""
    state_dict = unwrap_state_dict(state_dict)
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

_RELEASE = 'https://github.com/MzeroMiko/VMamba/releases/download/'


def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc',
        'license': 'mit', 'paper_ids': 'arXiv:2401.10166', 'origin_url': 'https://github.com/MzeroMiko/VMamba',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vmamba_tiny_s1l8.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'),
    'vmamba_small_s1l20.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth'),
    'vmamba_base_s1l20.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth'),
    'vmamba_tiny_s2l5.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth'),
    'vmamba_small_s2l15.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'),
    'vmamba_base_s2l15.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'),
    'vmamba_tiny_v0.in1k': _cfg(url=_RELEASE + '%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth'),
    'vmamba_small_v0.in1k': _cfg(url=_RELEASE + '%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth'),
    'vmamba_base_v0.in1k': _cfg(url=_RELEASE + '%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth'),
    # Mamba-2 (SSD) models: defined by the official code, never released (no weights, no accuracy)
    'vmamba_tiny_m2': _cfg(),
    'vmamba_small_m2': _cfg(),
    'vmamba_base_m2': _cfg(),
})


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    with release_file_globals():  # official files pickle configs / args (vssm.serialization)
        return build_model_with_cfg(
            VMamba, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
            **kwargs,
        )


_V2 = dict(d_state=1, dt_rank='auto', d_conv=3, conv_bias=False, gate=False, mlp_ratio=4.0, stem='v2',
           downsample='v3')
# m2: VMamba's Mamba-2 models (forward type m0_noz): SSD mixer, 64 states, heads = ceil(dim / 16), head dim 16
_M2 = dict(_V2, d_state=64, ssm_mode='ssd')
_V0 = dict(d_state=16, ssm_ratio=2.0, dt_rank='auto', d_conv=3, conv_bias=True, gate=True, mlp_ratio=0.0,
           stem='v1', downsample='v1')


@register_model
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T (s1l8, vssm1_tiny_0230s): 30.2M params, 4.9 GFLOPs, 82.6 top-1."""
    args = dict(depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2, **_V2)
    return _create_vmamba('vmamba_tiny_s1l8', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S (s1l20): 49.0M params, 8.6 GFLOPs, 83.3 top-1."""
    args = dict(depths=(2, 2, 20, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.3, **_V2)
    return _create_vmamba('vmamba_small_s1l20', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B (s1l20): 86.6M params, 15.2 GFLOPs, 83.8 top-1."""
    args = dict(depths=(2, 2, 20, 2), dims=128, ssm_ratio=1.0, drop_path_rate=0.5, **_V2)
    return _create_vmamba('vmamba_base_s1l20', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T (s2l5, vssm1_tiny_0230): 30.7M params, 4.9 GFLOPs, 82.5 top-1."""
    args = dict(depths=(2, 2, 5, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.2, **_V2)
    return _create_vmamba('vmamba_tiny_s2l5', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S (s2l15, vssm1_small_0229): 50.1M params, 8.7 GFLOPs, 83.6 top-1."""
    args = dict(depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3, **_V2)
    return _create_vmamba('vmamba_small_s2l15', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B (s2l15, vssm1_base_0229): 88.6M params, 15.4 GFLOPs, 83.9 top-1."""
    args = dict(depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6, **_V2)
    return _create_vmamba('vmamba_base_s2l15', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_tiny_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-T (v0): 22.9M params, 5.6 GFLOPs, 82.2 top-1."""
    args = dict(depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.2, **_V0)
    return _create_vmamba('vmamba_tiny_v0', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-S (v0): 44.4M params, 11.2 GFLOPs, 83.5 top-1."""
    args = dict(depths=(2, 2, 27, 2), dims=96, drop_path_rate=0.3, **_V0)
    return _create_vmamba('vmamba_small_v0', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-B (v0): 76.3M params, 18.0 GFLOPs, 83.7 top-1."""
    args = dict(depths=(2, 2, 27, 2), dims=128, drop_path_rate=0.6, **_V0)
    return _create_vmamba('vmamba_base_v0', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_tiny_m2(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T with the Mamba-2 SSD mixer (m2): 25.3M params; no released weights."""
    args = dict(depths=(2, 2, 4, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2, **_M2)
    return _create_vmamba('vmamba_tiny_m2', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small_m2(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S with the Mamba-2 SSD mixer (m2): 39.1M params; no released weights."""
    args = dict(depths=(2, 2, 12, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.3, **_M2)
    return _create_vmamba('vmamba_small_m2', pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base_m2(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B with the Mamba-2 SSD mixer (m2): 67.5M params; no released weights."""
    args = dict(depths=(2, 2, 12, 2), dims=128, ssm_ratio=1.0, drop_path_rate=0.3, **_M2)
    return _create_vmamba('vmamba_base_m2', pretrained, **dict(args, **kwargs))
