"""MobileMamba: a lightweight multi-receptive-field state space network.

Paper: `MobileMamba: Lightweight Multi-Receptive Visual Mamba Network` (CVPR 2025) - https://arxiv.org/abs/2411.15941
Official code: https://github.com/lewandofskee/MobileMamba (model/mobilemamba/mobilemamba.py, MIT)

A four-conv stem (stride 16), three stages of blocks x + (ffn1 . dw1 . mixer . ffn0 . dw0)(x), each part itself
residual, and a BatchNorm + Linear head. The mixer (MRFFI) splits the channels into [global, local, identity]:
the global channels go through a bidirectional (row-major and its reverse, summed) channel-first SS2D plus a
one-level Haar wavelet branch (depthwise conv on the four bands), the local ones through depthwise convs.
Everything is NCHW and Conv-BN: ``timm.utils.reparameterize_model`` folds every BatchNorm (and the identity of
the depthwise residuals) for inference.

B1 / B2 / B4 of the paper are one network at 256 / 384 / 512: here one architecture, ``mobilemamba_b``, with a
pretrained tag per resolution (``mobilemamba_b.in1k_256`` ...), as timm names such variants.
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, LayerNorm2d, SelectAdaptivePool2d, SqueezeExcite, calculate_drop_path_rates, get_device_dtype,
    register_notrace_module, trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.efficientvit_msra import ConvNorm, NormLinear

from ..layers import SS2D
from ..ops import DirectionPlan
from ._checks import check_input, check_state_dict_matches, unwrap_state_dict

__all__ = ['MobileMamba', 'MobileMambaBlock', 'MRFFIMixer', 'WaveletSSMBranch', 'MobileMambaSS2D', 'haar_filters']

# K = 2: row-major and its reverse, summed (the official forward type v052d, "bidi")
MOBILEMAMBA_PLAN = DirectionPlan(('h', 'h_flip'), 'sum')


def _fold_bn(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(x) == x * scale + shift in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class ConvBN(ConvNorm):
    """timm's Conv2d + BatchNorm2d (``conv``, ``bn``); ``fuse()`` keeps the device and dtype."""

    def __init__(self, in_chs: int, out_chs: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
                 bn_weight_init: float = 1., device=None, dtype=None):
        super().__init__(in_chs, out_chs, ks, stride, pad, groups=groups, bn_weight_init=bn_weight_init,
                         device=device, dtype=dtype)
        self.bn_weight_init = bn_weight_init

    @torch.no_grad()
    def init_weights(self) -> None:
        self.conv.reset_parameters()
        self.bn.reset_parameters()
        nn.init.constant_(self.bn.weight, self.bn_weight_init)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        c = self.conv
        scale, shift = _fold_bn(self.bn)
        m = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                      dilation=c.dilation, groups=c.groups, device=c.weight.device, dtype=c.weight.dtype)
        m.weight.copy_(c.weight * scale[:, None, None, None])
        m.bias.copy_(shift)
        return m


class BNLinear(NormLinear):
    """timm's BatchNorm1d + Linear head (``bn``, ``linear``); ``fuse()`` keeps the device and dtype."""

    @torch.no_grad()
    def init_weights(self) -> None:
        self.bn.reset_parameters()
        trunc_normal_(self.linear.weight, std=.02)
        nn.init.zeros_(self.linear.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        lin = self.linear
        scale, shift = _fold_bn(self.bn)
        m = nn.Linear(lin.in_features, lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype)
        m.weight.copy_(lin.weight * scale[None, :])
        m.bias.copy_(lin.weight @ shift + (lin.bias if lin.bias is not None else 0))
        return nn.Sequential(self.drop, m) if self.drop.p > 0 else m


class Residual(nn.Module):
    """x + m(x) (the official wrapper: ``m`` keeps its key prefix)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """A depthwise Conv-BN with its identity folded into the kernel centre; anything else is kept (and
        reparameterize_model then fuses inside it)."""
        m = self.m
        if not isinstance(m, ConvBN):
            return self
        c = m.conv
        k = c.kernel_size
        if not (c.groups == c.in_channels == c.out_channels and c.stride == (1, 1) and k[0] % 2 and k[1] % 2
                and c.padding == (k[0] // 2, k[1] // 2)):
            return self
        conv = m.fuse()
        conv.weight[:, 0, k[0] // 2, k[1] // 2] += 1
        return conv


class FFN(nn.Module):
    """1x1 Conv-BN (hidden) -> ReLU -> 1x1 Conv-BN (BN weight 0: the residual starts as identity)."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.pw1 = ConvBN(dim, hidden, **dd)
        self.act = nn.ReLU()
        self.pw2 = ConvBN(hidden, dim, bn_weight_init=0., **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class MobileMambaSS2D(SS2D):
    """The channel-first SS2D of MobileMamba (official forward type v052d): Conv-BN in/out projections, a
    depthwise 3x3 conv with bias, SiLU, a K = 2 scan (row-major + its reverse, summed), LayerNorm2d, SiLU(z) gate.

    The scan is what the official GPU kernel computes: each sample's two directions summed. The official CPU
    fallback (CrossMergeF with scans=2) instead sums the forward direction over the whole batch; it equals the
    GPU result only at batch 1, and is not followed here.
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, d_conv: int = 3, device=None,
                 dtype=None):
        super().__init__(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv, conv_bias=True, gate=True,
                         plan=MOBILEMAMBA_PLAN, device=device, dtype=dtype)
        dd = {'device': device, 'dtype': dtype}
        # channel-first projections and norm in place of SS2D's channel-last Linear / LayerNorm
        self.in_proj = ConvBN(dim, 2 * self.d_inner, **dd)
        self.out_norm = LayerNorm2d(self.d_inner, eps=1e-5, **dd)  # nn.LayerNorm default, as official
        self.out_proj = ConvBN(self.d_inner, dim, **dd)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official "v2" init: A_logs 0 (A = -1), Ds 1, dt weight and bias 0.1 * U[0, 1), x_proj as nn.Linear."""
        if self.A_logs.is_meta:
            return
        nn.init.uniform_(self.x_proj_weight, -1 / math.sqrt(self.d_inner), 1 / math.sqrt(self.d_inner))
        self.A_logs.zero_()
        self.Ds.fill_(1.0)
        self.dt_projs_weight.uniform_(0, 0.1)
        self.dt_projs_bias.uniform_(0, 0.1)
        self.conv2d.reset_parameters()
        self.out_norm.reset_parameters()
        for m in (self.in_proj, self.out_proj):
            if isinstance(m, ConvBN):
                m.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=1)
        x = self.act(self.conv2d(x))
        y = self.out_norm(self.ssm(x)) * self.act(z)
        return self.out_proj(y)


# pywt's 'db1' (Haar) taps: dec_lo = rec_lo = [s, s]; dec_hi reversed = rec_hi = [s, -s]
_HAAR_TAP = 0.7071067811865476


def haar_filters(channels: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One-level Haar analysis / synthesis filters (4C, 1, 2, 2), channel-major and band-minor (LL, LH, HL, HH),
    bit-for-bit as the official code builds them from pywt's taps in float32 (both banks are equal for db1)."""
    lo = torch.tensor([_HAAR_TAP, _HAAR_TAP], dtype=torch.float32, device=device)
    hi = torch.tensor([_HAAR_TAP, -_HAAR_TAP], dtype=torch.float32, device=device)
    bands = torch.stack([lo[None] * lo[:, None], lo[None] * hi[:, None], hi[None] * lo[:, None],
                         hi[None] * hi[:, None]])
    filters = bands[:, None].repeat(channels, 1, 1, 1)
    return filters, filters.clone()


@register_notrace_module  # shape-dependent padding and scan plans: one leaf for timm's FX feature extraction
class WaveletSSMBranch(nn.Module):
    """The global branch: base_scale * SS2D(x) + IWT(wavelet_scale * DWConv_k(WT(x))).

    The SS2D sees the full-resolution map; the four Haar bands (4C channels) share one depthwise k x k conv.
    Odd sizes are zero-padded right / bottom for the transform and cropped back. The fixed filters are
    persistent buffers ``wt_filter`` / ``iwt_filter`` (the official state dict holds them).
    """

    def __init__(self, dim: int, kernel_size: int, d_state: int = 1, ssm_ratio: float = 2.0, device=None,
                 dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dim = dim
        wt, iwt = haar_filters(dim, device=device)
        self.register_buffer('wt_filter', wt.to(dtype or torch.get_default_dtype()))
        self.register_buffer('iwt_filter', iwt.to(dtype or torch.get_default_dtype()))
        self.ssm = MobileMambaSS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, **dd)
        self.base_scale = nn.Parameter(torch.ones(1, dim, 1, 1, **dd))
        self.wavelet_conv = nn.Conv2d(4 * dim, 4 * dim, kernel_size, padding=kernel_size // 2, groups=4 * dim,
                                      bias=False, **dd)
        self.wavelet_scale = nn.Parameter(torch.full((1, 4 * dim, 1, 1), 0.1, **dd))

    @torch.no_grad()
    def init_weights(self) -> None:
        wt, iwt = haar_filters(self.dim, device=self.wt_filter.device)
        self.wt_filter.copy_(wt)
        self.iwt_filter.copy_(iwt)
        self.ssm.init_weights()
        self.base_scale.fill_(1.0)
        self.wavelet_conv.reset_parameters()
        self.wavelet_scale.fill_(0.1)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Inference: fold base_scale into the SS2D's out_proj BatchNorm and wavelet_scale into the depthwise
        wavelet conv (both are per-channel scales right after them); the two multiplies disappear."""
        if self.base_scale is None:
            return
        out_proj = self.ssm.out_proj
        scale = self.base_scale.flatten()
        if isinstance(out_proj, ConvBN):
            out_proj.bn.weight.mul_(scale)
            out_proj.bn.bias.mul_(scale)
        else:  # already a fused conv
            out_proj.weight.mul_(scale[:, None, None, None])
            out_proj.bias.mul_(scale)
        self.wavelet_conv.weight.mul_(self.wavelet_scale.view(-1, 1, 1, 1))
        del self.base_scale, self.wavelet_scale
        self.base_scale = self.wavelet_scale = None

    def wavelet(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % 2 or W % 2:
            x = F.pad(x, (0, W % 2, 0, H % 2))
        bands = F.conv2d(x, self.wt_filter, stride=2, groups=self.dim)  # (B, 4C, H/2, W/2)
        bands = self.wavelet_conv(bands)
        if self.wavelet_scale is not None:
            bands = bands * self.wavelet_scale
        return F.conv_transpose2d(bands, self.iwt_filter, stride=2, groups=self.dim)[..., :H, :W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ssm(x)
        if self.base_scale is not None:
            y = y * self.base_scale
        return y + self.wavelet(x)


def split_channels(dim: int, global_ratio: float, local_ratio: float) -> Tuple[int, int, int]:
    """(global, local, identity) channels as the official module splits them: global rounded to the nearest
    multiple of 16 (ties up), local what is left if the ratio would overflow."""
    g = int(global_ratio * dim)
    lower = g // 16 * 16
    g = lower if g - lower < lower + 16 - g else lower + 16
    local = int(local_ratio * dim)
    if g + local > dim:
        local = dim - g
    if g < 0 or local < 0 or g > dim:
        raise ValueError(f'cannot split {dim} channels with global_ratio {global_ratio}, local_ratio {local_ratio}')
    return g, local, dim - g - local


class MRFFIMixer(nn.Module):
    """Multi-receptive-field feature interaction: [global | local | identity] channels, concat -> ReLU -> Conv-BN
    (BN weight 0). Local: depthwise k x k Conv-BN -> ReLU -> depthwise 1x1 Conv-BN."""

    def __init__(self, dim: int, kernel_size: int, global_ratio: float, local_ratio: float, d_state: int = 1,
                 ssm_ratio: float = 2.0, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.split = split_channels(dim, global_ratio, local_ratio)
        g, loc, _ = self.split
        self.global_op = WaveletSSMBranch(g, kernel_size, d_state=d_state, ssm_ratio=ssm_ratio, **dd) if g \
            else nn.Identity()
        self.local_op = nn.Sequential(
            ConvBN(loc, loc, kernel_size, pad=kernel_size // 2, groups=loc, **dd),
            nn.ReLU(),
            ConvBN(loc, loc, 1, groups=loc, **dd),
        ) if loc else nn.Identity()
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(dim, dim, bn_weight_init=0., **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg, xl, xi = torch.split(x, self.split, dim=1)
        return self.proj(torch.cat([self.global_op(xg), self.local_op(xl), xi], dim=1))


class MobileMambaBlock(nn.Module):
    """x + drop_path((ffn1 . dw1 . mixer . ffn0 . dw0)(x)), each part residual; the dw convs' BN weights start at 0."""

    def __init__(self, dim: int, kernel_size: int, global_ratio: float, local_ratio: float, d_state: int = 1,
                 ssm_ratio: float = 2.0, drop_path: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dw0 = Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0., **dd))
        self.ffn0 = Residual(FFN(dim, 2 * dim, **dd))
        self.mixer = Residual(MRFFIMixer(dim, kernel_size, global_ratio, local_ratio, d_state=d_state,
                                         ssm_ratio=ssm_ratio, **dd))
        self.dw1 = Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0., **dd))
        self.ffn1 = Residual(FFN(dim, 2 * dim, **dd))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x))))))


class PatchMerging(nn.Module):
    """1x1 Conv-BN to 4x width -> ReLU -> depthwise 3x3 stride-2 Conv-BN -> ReLU -> SE(0.25) -> 1x1 Conv-BN."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = 4 * dim
        self.conv1 = ConvBN(dim, hidden, **dd)
        self.act = nn.ReLU()
        self.conv2 = ConvBN(hidden, hidden, 3, 2, 1, groups=hidden, **dd)
        self.se = SqueezeExcite(hidden, .25, **dd)
        self.conv3 = ConvBN(hidden, out_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


def _dw_ffn(dim: int, dd: Dict) -> nn.Sequential:
    """Residual depthwise 3x3 Conv-BN, then residual FFN (around the patch merging)."""
    return nn.Sequential(Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim, **dd)), Residual(FFN(dim, 2 * dim, **dd)))


def _downsample(dim: int, out_dim: int, dd: Dict) -> nn.Sequential:
    return nn.Sequential(_dw_ffn(dim, dd), PatchMerging(dim, out_dim, **dd), _dw_ffn(out_dim, dd))


class MobileMambaStage(nn.Module):
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


class MobileMamba(nn.Module):
    """MobileMamba: Conv-BN stem to stride 16, three stages (strides 16, 32, 64), average pool, BN + Linear."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            dims: Tuple[int, ...] = (192, 384, 448),
            depths: Tuple[int, ...] = (1, 2, 2),
            global_ratios: Tuple[float, ...] = (0.8, 0.7, 0.6),
            local_ratios: Tuple[float, ...] = (0.2, 0.2, 0.3),
            kernel_sizes: Tuple[int, ...] = (7, 5, 3),
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: input image channels.
            num_classes: classifier classes (0 for no classifier).
            global_pool: timm pool type before the head ('avg'; '' keeps the map).
            dims: stage widths (the first divisible by 8: the stem runs at 1/8, 1/4, 1/2 of it).
            depths: MobileMamba blocks per stage.
            global_ratios / local_ratios: share of each stage's channels for the global (SS2D + wavelet) and
                local (depthwise conv) branches; the rest pass unchanged.
            kernel_sizes: the local and wavelet depthwise kernel size per stage.
            d_state: SSM state size N.
            ssm_ratio: SS2D inner width / global channels.
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth over the blocks' outer residuals, linear over all blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        n = len(depths)
        if not len(dims) == len(global_ratios) == len(local_ratios) == len(kernel_sizes) == n:
            raise ValueError(f'dims {dims}, depths {depths}, global_ratios {global_ratios}, local_ratios '
                             f'{local_ratios} and kernel_sizes {kernel_sizes} need one entry per stage')
        if dims[0] % 8:
            raise ValueError(f'the stem widens to dims[0] / 8, / 4, / 2: dims[0] must be a multiple of 8, got '
                             f'{dims[0]}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.min_input_size = 2 ** (n + 3)
        e = dims[0]
        self.stem = nn.Sequential(
            ConvBN(in_chans, e // 8, 3, 2, 1, **dd), nn.ReLU(),
            ConvBN(e // 8, e // 4, 3, 2, 1, **dd), nn.ReLU(),
            ConvBN(e // 4, e // 2, 3, 2, 1, **dd), nn.ReLU(),
            ConvBN(e // 2, e, 3, 2, 1, **dd),
        )
        rates = calculate_drop_path_rates(drop_path_rate, sum(depths))
        self.feature_info = []
        stages = []
        stride = 16
        for i, depth in enumerate(depths):
            if i > 0:
                stride *= 2
            dpr = rates[sum(depths[:i]):sum(depths[:i + 1])]
            blocks = [MobileMambaBlock(dims[i], kernel_sizes[i], global_ratios[i], local_ratios[i], d_state=d_state,
                                       ssm_ratio=ssm_ratio, drop_path=r, **dd) for r in dpr]
            stages.append(MobileMambaStage(_downsample(dims[i - 1], dims[i], dd) if i else nn.Identity(), blocks))
            self.feature_info.append(dict(num_chs=dims[i], reduction=stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head = BNLinear(self.num_features, num_classes, drop=drop_rate, **dd) if num_classes > 0 \
            else nn.Identity()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Each module's own initialisation as in the official code (also after to_empty)."""
        for m in self.modules():
            if isinstance(m, (ConvBN, BNLinear, WaveletSSMBranch)):
                m.init_weights()
            elif isinstance(m, SqueezeExcite):
                m.fc1.reset_parameters()
                m.fc2.reset_parameters()

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()  # the official optimizer skips 1-D tensors and biases only, as timm does by default

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.linear if isinstance(self.head, BNLinear) else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_hidden_size = self.num_features
        self.head = BNLinear(self.num_features, num_classes, drop=self.drop_rate, **dd) if num_classes > 0 \
            else nn.Identity()
        self.head.train(self.training)
        self.global_pool.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs at `indices` (NCHW; there is no final norm)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"MobileMamba gives NCHW features, got output_fmt={output_fmt!r}")
        check_input(x, self.in_chans, self.min_input_size, type(self).__name__)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.min_input_size, type(self).__name__)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------- checkpoints

# official name piece -> ours (applied in order to every key)
_RENAMES = (
    ('.mixer.m.attn.', '.mixer.m.'),  # the official MobileMambaBlockWindow wrapper holds nothing else
    ('.global_atten.', '.ssm.'),
    ('.base_scale.weight', '.base_scale'),
    ('.wavelet_convs.0.', '.wavelet_conv.'),
    ('.wavelet_scale.0.weight', '.wavelet_scale'),
    ('.local_op.dwconv3x3.weight', '.local_op.0.conv.weight'),
    ('.local_op.bn1.', '.local_op.0.bn.'),
    ('.local_op.dwconv1x1.weight', '.local_op.2.conv.weight'),
    ('.local_op.bn2.', '.local_op.2.bn.'),
    ('.c.weight', '.conv.weight'),  # Conv2d_BN's conv
    ('head.l.', 'head.linear.'),
)


def _remap_official_key(k: str) -> str:
    """blocks{i}.{j} -> stages (stage i > 1: j < 3 are the downsample's parts, then the blocks); module names."""
    if k.startswith('patch_embed.'):
        k = 'stem.' + k[len('patch_embed.'):]
    elif k.startswith('blocks'):
        stage_num, rest = k[len('blocks'):].split('.', 1)
        i = int(stage_num) - 1
        idx, rest = rest.split('.', 1)
        idx = int(idx)
        if i == 0:
            k = f'stages.0.blocks.{idx}.{rest}'
        elif idx < 3:  # dw + FFN, patch merging, dw + FFN
            k = f'stages.{i}.downsample.{idx}.{rest}'
        else:
            k = f'stages.{i}.blocks.{idx - 3}.{rest}'
    for old, new in _RENAMES:
        k = k.replace(old, new)
    return k


def checkpoint_filter_fn(state_dict: Dict, model: MobileMamba) -> Dict[str, torch.Tensor]:
    """Official MobileMamba checkpoints -> vssm keys.

    The official trainer saves {'net', 'net_E' (its EMA copy, or None), 'optimizer', 'scheduler', ...} and the
    bare ``net.pth`` / ``net_E.pth``. From a trainer file the EMA weights (``net_E``) are taken when present, as
    timm prefers EMA weights; the official README's test loads ``net`` (pass that bare dict to get it). Released
    weights are unfused (Conv-BN), as this model is; fuse after loading with timm's reparameterize_model.
    """
    if isinstance(state_dict, dict) and ('net' in state_dict or 'net_E' in state_dict):
        state_dict = state_dict.get('net_E') if state_dict.get('net_E') is not None else state_dict.get('net')
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('stages.') for k in state_dict):
        out = dict(state_dict)  # already ours
    else:
        out = {_remap_official_key(k): v for k, v in state_dict.items() if torch.is_tensor(v)}
    if not isinstance(model.head, BNLinear):
        out = {k: v for k, v in out.items() if not k.startswith('head.')}
    check_state_dict_matches(out, model, ignore=('head.linear.', 'stem.0.conv.'))
    return out


# ------------------------------------------------------------------------------------------- configs

def _cfg(size: int, **kwargs) -> Dict:
    pool = math.ceil(size / 64)
    return {
        # the official weights are on Google Drive only (no URL timm can fetch): load a local file with
        # pretrained_cfg_overlay=dict(file='net_E.pth')
        'url': '',
        'num_classes': 1000, 'input_size': (3, size, size), 'pool_size': (pool, pool),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.linear',
        'license': 'mit', 'paper_ids': 'arXiv:2411.15941',
        'origin_url': 'https://github.com/lewandofskee/MobileMamba',
        **kwargs,
    }


# `.in1k`: the 300-epoch recipe; `.in1k_kd` (the paper's dagger): 1000 epochs with KD from TResNet-L-v2, same
# architecture and keys. Top-1 of each in `notes`.
default_cfgs = generate_default_cfgs({
    'mobilemamba_t2.in1k': _cfg(192, notes=('top-1 71.5',)),
    'mobilemamba_t2.in1k_kd': _cfg(192, notes=('top-1 76.9',)),
    'mobilemamba_t4.in1k': _cfg(192, notes=('top-1 76.1',)),
    'mobilemamba_t4.in1k_kd': _cfg(192, notes=('top-1 78.9',)),
    'mobilemamba_s6.in1k': _cfg(224, notes=('top-1 78.0',)),
    'mobilemamba_s6.in1k_kd': _cfg(224, notes=('top-1 80.7',)),
    'mobilemamba_b.in1k_256': _cfg(256, notes=('B1, top-1 79.9',)),
    'mobilemamba_b.in1k_kd_256': _cfg(256, notes=('B1, top-1 82.2',)),
    'mobilemamba_b.in1k_384': _cfg(384, notes=('B2, top-1 81.6',)),
    'mobilemamba_b.in1k_kd_384': _cfg(384, notes=('B2, top-1 83.3',)),
    'mobilemamba_b.in1k_512': _cfg(512, notes=('B4, top-1 82.5',)),
    'mobilemamba_b.in1k_kd_512': _cfg(512, notes=('B4, top-1 83.6',)),
})


def _create_mobilemamba(variant: str, pretrained: bool = False, **kwargs) -> MobileMamba:
    given = [kwargs.get('pretrained_cfg_overlay'), kwargs.get('pretrained_cfg')]
    if pretrained and not any(isinstance(c, dict) and (c.get('file') or c.get('state_dict')) for c in given):
        raise ValueError(f'{variant}: the official MobileMamba weights are on Google Drive only (no URL timm can '
                         f'fetch); download net_E.pth / net.pth and pass pretrained_cfg_overlay=dict(file=...)')
    return build_model_with_cfg(
        MobileMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2), feature_cls='getter'),
        **kwargs,
    )


_COMMON = dict(global_ratios=(0.8, 0.7, 0.6), local_ratios=(0.2, 0.2, 0.3), kernel_sizes=(7, 5, 3), ssm_ratio=2.0)


@register_model
def mobilemamba_t2(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-T2 (192 px): 8.84M params (official count, Haar filters included), 255M FLOPs, 71.5 / 76.9 top-1."""
    args = dict(dims=(144, 272, 368), depths=(1, 2, 2), **_COMMON)
    return _create_mobilemamba('mobilemamba_t2', pretrained, **dict(args, **kwargs))


@register_model
def mobilemamba_t4(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-T4 (192 px): 14.18M params, 413M FLOPs, 76.1 / 78.9 top-1."""
    args = dict(dims=(176, 368, 448), depths=(1, 2, 2), **_COMMON)
    return _create_mobilemamba('mobilemamba_t4', pretrained, **dict(args, **kwargs))


@register_model
def mobilemamba_s6(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-S6 (224 px): 15.04M params, 652M FLOPs, 78.0 / 80.7 top-1."""
    args = dict(dims=(192, 384, 448), depths=(1, 2, 2), **_COMMON)
    return _create_mobilemamba('mobilemamba_s6', pretrained, **dict(args, **kwargs))


@register_model
def mobilemamba_b(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-B1 / B2 / B4, one network: tags in1k_256 / _384 / _512 (1.08G / 2.43G / 4.31G FLOPs; 79.9 /
    81.6 / 82.5 top-1, 82.2 / 83.3 / 83.6 with KD). 17.12M params."""
    args = dict(dims=(200, 376, 448), depths=(2, 3, 2), drop_path_rate=0.03, **_COMMON)
    return _create_mobilemamba('mobilemamba_b', pretrained, **dict(args, **kwargs))
