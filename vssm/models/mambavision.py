"""MambaVision: a hybrid Mamba-Transformer vision backbone.

Paper: `MambaVision: A Hybrid Mamba-Transformer Vision Backbone` (CVPR 2025) - https://arxiv.org/abs/2407.08083
Official code: https://github.com/NVlabs/MambaVision (NVIDIA Source Code License-NC)
Weights: Hugging Face repos ``nvidia/MambaVision-*`` (CC-BY-NC-SA-4.0, the cards say "nvclv1"): non-commercial
use only. ``pretrained=True`` downloads NVIDIA's files from NVIDIA's repos; nothing is re-hosted.

Written from the paper and the facts recorded in the vssm issue (no official code copied). A BatchNorm conv
stem, two stages of residual conv blocks, then two stages that pad the map to whole windows once, run every
block on the windows (the first half of each stage a Mamba mixer, the rest self-attention), and crop back;
3x3 stride-2 convs between stages; BatchNorm + average pool + Linear head. NCHW features.

The mixer is a one-direction Mamba-1 scan (d_state 8) on the x half of the channels, with its own
non-causal conv on the z half concatenated (not gated) after the scan; its scan goes through the engine's
``plan_selective_scan`` with a one-direction row-major plan. Window sizes own no parameters: the 256 and
512 px fine-tuned weights differ from the 224 ones only there, and each pretrained tag builds its own.
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    Attention, ClassifierHead, ConvNormAct, DropPath, LayerScale, Mlp, calculate_drop_path_rates,
    register_notrace_function, register_notrace_module, trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from ..ops import DirectionPlan, plan_selective_scan
from ..serialization import release_file_globals
from ._checks import check_state_dict_matches
from ._hierarchical import HierarchicalModelMixin

__all__ = ['MambaVision', 'MambaVisionMixer', 'MambaVisionBlock', 'ConvBlock', 'MambaVisionStage',
           'window_partition', 'window_reverse']

NUM_CONV_STAGES = 2  # stages 1-2 are conv blocks, the later ones windowed mixer / attention blocks
ROW_MAJOR = DirectionPlan(('h',), 'sum')  # one direction, the window's token order


def _float32_or_wider(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


@register_notrace_module  # its scan index depends on the sequence length: one leaf for timm's FX tracer
class MambaVisionMixer(nn.Module):
    """The MambaVision token mixer (expand 1), tokens (B, L, C) in and out.

    in_proj C -> C (x and z, C/2 each); x: depthwise 'same' conv1d -> SiLU -> selective scan (no gate);
    z: its own depthwise conv1d -> SiLU; out_proj(cat[scan(x), z]). Δ = softplus(dt_proj(dt) + dt_proj.bias):
    the official mixer adds dt_proj's bias inside the Linear and again as the scan's delta bias, so the scan
    here gets the rank-R factor dt with dt_proj.weight (Δ formed inside the scan) and a delta bias of 2 * bias.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 8,
            d_conv: int = 3,
            dt_rank: Union[int, str] = 'auto',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % 2:
            raise ValueError(f'MambaVisionMixer splits its channels into x and z halves: dim must be even, got {dim}')
        if d_conv % 2 == 0:
            raise ValueError(f"the mixer's 'same' conv1d pads symmetrically: d_conv must be odd, got {d_conv}")
        half = dim // 2
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.in_proj = nn.Linear(dim, dim, bias=False, **dd)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False, **dd)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False, **dd)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(half, d_state, **dd))
        self.D = nn.Parameter(torch.empty(half, **dd))
        self.out_proj = nn.Linear(dim, dim, bias=False, **dd)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """S4D-real A (log 1..N per channel), D = 1, default convs; the model's init then sets every Linear
        (dt_proj included: the official model overwrites Mamba's dt init) to trunc_normal(.02) with zero bias."""
        if self.A_log.is_meta:
            return
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_log))
        self.D.fill_(1.0)
        for m in (self.conv1d_x, self.conv1d_z, self.in_proj, self.x_proj, self.dt_proj, self.out_proj):
            m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bt, L, _ = x.shape
        N, R = self.d_state, self.dt_rank
        xs, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, C/2, L) each
        xs = F.silu(self.conv1d_x(xs))
        z = F.silu(self.conv1d_z(z))
        x_dbl = self.x_proj(xs.transpose(1, 2))  # (B, L, R + 2N)
        dt, Bs, Cs = torch.split(x_dbl.transpose(1, 2).unsqueeze(1), [R, N, N], dim=2)  # (B, 1, *, L)
        y = plan_selective_scan(
            xs, dt, -torch.exp(_float32_or_wider(self.A_log)), Bs, Cs, _float32_or_wider(self.D),
            delta_bias=2 * _float32_or_wider(self.dt_proj.bias),  # the bias counted twice, as the official mixer
            index=ROW_MAJOR.index(1, L, x.device), length=L, merge='sum', delta_softplus=True,
            delta_weight=self.dt_proj.weight.unsqueeze(0),
        )
        return self.out_proj(torch.cat([y, z.to(y.dtype)], dim=1).transpose(1, 2))


class MambaVisionBlock(nn.Module):
    """x + drop_path(ls1(mixer(norm1(x)))), then x + drop_path(ls2(MLP(norm2(x)))); tokens (B, L, C).

    The mixer is MambaVisionMixer or multi-head self-attention (biased qkv and proj, default scale, no
    positional bias); layer scale (``ls1``/``ls2``, the official ``gamma_1``/``gamma_2``) only when given."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attention: bool,
            mlp_ratio: float = 4.0,
            layer_scale: Optional[float] = None,
            drop_path: float = 0.,
            d_state: int = 8,
            d_conv: int = 3,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = nn.LayerNorm(dim, **dd)
        if attention:
            self.mixer = Attention(dim, num_heads=num_heads, qkv_bias=True, **dd)
        else:
            self.mixer = MambaVisionMixer(dim, d_state=d_state, d_conv=d_conv, **dd)
        self.ls1 = LayerScale(dim, layer_scale, **dd) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.ls2 = LayerScale(dim, layer_scale, **dd) if layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class ConvBlock(nn.Module):
    """x + drop_path(BN(conv3x3(GELU_tanh(BN(conv3x3(x)))))); NCHW. The convs carry biases (as the official)."""

    def __init__(self, dim: int, drop_path: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, **dd)
        self.norm1 = nn.BatchNorm2d(dim, **dd)
        self.act1 = nn.GELU(approximate='tanh')
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, **dd)
        self.norm2 = nn.BatchNorm2d(dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x))))))


@register_notrace_function  # reads the map size
def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * windows, window_size**2, C): zero-padded right and bottom to whole windows; windows
    row-major, tokens row-major inside each window."""
    B, C, H, W = x.shape
    x = F.pad(x, (0, (-W) % window_size, 0, (-H) % window_size))
    Hp, Wp = x.shape[2], x.shape[3]
    x = x.view(B, C, Hp // window_size, window_size, Wp // window_size, window_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window_size * window_size, C)


@register_notrace_function  # reads the map size
def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """The inverse of window_partition for an (H, W) map: merge the windows and crop the padding."""
    Hp, Wp = H + (-H) % window_size, W + (-W) % window_size
    C = windows.shape[-1]
    x = windows.view(-1, Hp // window_size, Wp // window_size, window_size, window_size, C)
    x = x.permute(0, 5, 1, 3, 2, 4).reshape(-1, C, Hp, Wp)
    return x[:, :, :H, :W].contiguous()


class MambaVisionStage(nn.Module):
    """(downsample) -> blocks; NCHW in and out. With a window size the map is padded and split into windows
    once for the whole stage: every block runs on the padded windows (no mask), then they are merged and cropped."""

    def __init__(self, downsample: nn.Module, blocks: List[nn.Module], window_size: Optional[int] = None):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.window_size = window_size
        self.grad_checkpointing = False

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.window_size is None:
            return self._blocks(x)
        H, W = x.shape[2], x.shape[3]
        return window_reverse(self._blocks(window_partition(x, self.window_size)), self.window_size, H, W)


class MambaVision(HierarchicalModelMixin, nn.Module):
    """MambaVision: conv stem, two conv stages, two windowed Mamba-mixer + attention stages; NCHW features."""
    stage_format = 'NCHW'

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (1, 3, 8, 4),
            dim: int = 80,
            in_dim: int = 32,
            num_heads: Tuple[int, ...] = (2, 4, 8, 16),
            window_sizes: Tuple[int, ...] = (14, 7),
            mlp_ratio: float = 4.0,
            layer_scale: Optional[float] = None,
            d_state: int = 8,
            d_conv: int = 3,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: input image channels.
            num_classes: classifier classes (0 for no classifier).
            global_pool: classifier pooling ('avg' as the official model; '' for none).
            depths: blocks per stage; the first two stages are conv blocks.
            dim: width of the first stage (doubled per stage).
            in_dim: width of the stem's first conv.
            num_heads: attention heads per stage (the conv stages' entries are unused, as in the official).
            window_sizes: window size of each windowed stage (stages 3, 4, ...); they own no parameters.
            mlp_ratio: MLP hidden ratio of the windowed stages' blocks.
            layer_scale: layer-scale init of the windowed stages' blocks (1e-5 for B/L/L2/L3); None: no layer scale.
            d_state: SSM state size of the mixers.
            d_conv: the mixers' depthwise conv1d size (odd: 'same' padding).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear over all blocks, conv blocks included.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(depths)
        if num_stages <= NUM_CONV_STAGES:
            raise ValueError(f'MambaVision has {NUM_CONV_STAGES} conv stages then windowed stages: depths {depths} '
                             f'needs more than {NUM_CONV_STAGES} entries')
        if len(num_heads) != num_stages:
            raise ValueError(f'num_heads {num_heads} needs one entry per stage ({num_stages})')
        if len(window_sizes) != num_stages - NUM_CONV_STAGES:
            raise ValueError(f'window_sizes {window_sizes} needs one entry per windowed stage '
                             f'({num_stages - NUM_CONV_STAGES}: stages {NUM_CONV_STAGES + 1}..{num_stages})')
        dims = [dim * 2 ** i for i in range(num_stages)]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_fmt = 'NCHW'
        self.min_input_size = 2 ** (num_stages + 1)
        self.layer_scale = layer_scale

        bn_stem = dict(eps=1e-4)
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, in_dim, 3, stride=2, padding=1, norm_kwargs=bn_stem, **dd),
            ConvNormAct(in_dim, dims[0], 3, stride=2, padding=1, norm_kwargs=bn_stem, **dd),
        )
        dp_flat = calculate_drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks
        self.feature_info = []
        stages = []
        for i, depth in enumerate(depths):
            rates = dp_flat[sum(depths[:i]):sum(depths[:i + 1])]
            downsample = nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1, bias=False, **dd) if i > 0 \
                else nn.Identity()
            if i < NUM_CONV_STAGES:
                blocks = [ConvBlock(dims[i], drop_path=r, **dd) for r in rates]
                window = None
            else:
                num_mixers = (depth + 1) // 2  # the first ceil(depth / 2) blocks mix with Mamba, the rest attend
                blocks = [MambaVisionBlock(
                    dims[i], num_heads[i], attention=j >= num_mixers, mlp_ratio=mlp_ratio, layer_scale=layer_scale,
                    drop_path=r, d_state=d_state, d_conv=d_conv, **dd) for j, r in enumerate(rates)]
                window = window_sizes[i - NUM_CONV_STAGES]
            stages.append(MambaVisionStage(downsample, blocks, window))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.BatchNorm2d(dims[-1], **dd)
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official init: Linear trunc_normal(.02) with zero bias, LayerNorm / BatchNorm 1 / 0, convs at
        PyTorch's default, the mixers' A and D; works after to_empty."""
        if next(self.parameters()).is_meta:  # nothing to fill, and init ops on meta are slow
            return
        for m in self.modules():
            if isinstance(m, MambaVisionMixer):
                m.init_weights()
            elif isinstance(m, LayerScale):
                m.gamma.fill_(self.layer_scale)
            elif isinstance(m, (nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d)):
                m.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        # as the official training: timm decays every parameter of 2+ dims (A_log included), not the 1-D ones
        return []


# --------------------------------------------------------------------------------------- checkpoints

def _unwrap_checkpoint(checkpoint) -> Dict[str, torch.Tensor]:
    """The weights in an official file: `state_dict` of a timm CheckpointSaver .pth.tar (as the official
    loader; `state_dict_ema` only when there is no `state_dict`), else `model`, else the bare dict; without
    `module.` (DDP) and `model.` (the HF transformers wrapper's safetensors) prefixes."""
    sd = checkpoint
    if isinstance(sd, dict):
        for key in ('state_dict', 'model', 'state_dict_ema'):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict):
        raise TypeError(f'expected a MambaVision checkpoint (a dict of tensors, or one under state_dict / model), '
                        f'got {type(sd).__name__}')
    for prefix in ('module.', 'model.'):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# official key prefix -> ours, first match wins
_KEY_PREFIXES = (
    ('patch_embed.conv_down.0.', 'stem.0.conv.'),
    ('patch_embed.conv_down.1.', 'stem.0.bn.'),
    ('patch_embed.conv_down.3.', 'stem.1.conv.'),
    ('patch_embed.conv_down.4.', 'stem.1.bn.'),
    ('head.', 'head.fc.'),
)


def _remap_official_key(k: str) -> str:
    for old, new in _KEY_PREFIXES:
        if k.startswith(old):
            return new + k[len(old):]
    parts = k.split('.')
    if parts[0] != 'levels':
        return k
    i = int(parts[1])
    if parts[2] == 'downsample':  # levels.i.downsample.reduction.0.weight: the conv that opens stage i + 1
        return f'stages.{i + 1}.downsample.' + parts[-1]
    rest = '.'.join(parts[2:]).replace('.gamma_1', '.ls1.gamma').replace('.gamma_2', '.ls2.gamma')
    return f'stages.{i}.{rest}'


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MambaVision) -> Dict[str, torch.Tensor]:
    """Official MambaVision checkpoints -> vssm keys (the three layouts of NVIDIA's HF repos: CheckpointSaver
    .pth.tar, `model.`-prefixed safetensors, bare dict); vssm state dicts pass through."""
    state_dict = _unwrap_checkpoint(state_dict)
    if not any(k.startswith('stages.') for k in state_dict):
        state_dict = {_remap_official_key(k): v for k, v in state_dict.items() if torch.is_tensor(v)}
    check_state_dict_matches(state_dict, model, ignore=('head.fc.', 'stem.0.conv.'))
    return state_dict


# ------------------------------------------------------------------------------------------- configs

_LICENSE = 'nvclv1: NVIDIA Source Code License-NC (code), CC-BY-NC-SA-4.0 (weights); non-commercial use only'
_HF = 'https://huggingface.co/'


def _cfg(repo: str = '', filename: str = '', **kwargs) -> Dict:
    return {
        'url': f'{_HF}{repo}/resolve/main/{filename}' if repo else '', 'hf_hub_id': repo,
        'hf_hub_filename': filename,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 1.0, 'crop_mode': 'center', 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc',
        'license': _LICENSE, 'paper_ids': 'arXiv:2407.08083', 'origin_url': 'https://github.com/NVlabs/MambaVision',
        **kwargs,
    }


_512 = dict(input_size=(3, 512, 512), pool_size=(16, 16), crop_pct=0.93, crop_mode='squash')
default_cfgs = generate_default_cfgs({
    'mambavision_tiny.in1k': _cfg('nvidia/MambaVision-T-1K', 'mambavision_tiny_1k.pth.tar'),
    'mambavision_tiny2.in1k': _cfg('nvidia/MambaVision-T2-1K', 'mambavision_tiny2_1k.pth.tar', crop_pct=0.98),
    'mambavision_small.in1k': _cfg('nvidia/MambaVision-S-1K', 'mambavision_small_1k.pth.tar', crop_pct=0.93),
    'mambavision_base.in1k': _cfg('nvidia/MambaVision-B-1K', 'mambavision_base_1k.pth.tar'),
    'mambavision_base.in21k_ft_in1k': _cfg('nvidia/MambaVision-B-21K', 'mambavision_base_21k.pth.tar'),
    'mambavision_large.in1k': _cfg('nvidia/MambaVision-L-1K', 'mambavision_large_1k.pth.tar'),
    'mambavision_large.in21k_ft_in1k': _cfg('nvidia/MambaVision-L-21K', 'mambavision_large_21k.pth.tar'),
    'mambavision_large2.in1k': _cfg('nvidia/MambaVision-L2-1K', 'mambavision_large2_1k.pth.tar'),
    'mambavision_large2.in21k_ft_in1k_512': _cfg(
        'nvidia/MambaVision-L2-512-21K', 'mambavision_L2_21k_240m_512.pth.tar', **_512),
    'mambavision_large3.in21k_ft_in1k_256': _cfg(
        'nvidia/MambaVision-L3-256-21K', 'mambavision_L3_21k_740m_256.pth.tar', input_size=(3, 256, 256),
        pool_size=(8, 8)),
    'mambavision_large3.in21k_ft_in1k_512': _cfg(
        'nvidia/MambaVision-L3-512-21K', 'mambavision_L3_21k_740m_512.pth.tar', **_512),
})

# window sizes of stages 3 and 4 each tag's weights were trained with (the stage maps at its resolution);
# tags not listed use the 224 px windows
DEFAULT_WINDOW_SIZES = (14, 7)
TAG_WINDOW_SIZES = {
    'in21k_ft_in1k_256': (16, 8),
    'in21k_ft_in1k_512': (32, 16),
}


def window_sizes_for(variant: str, pretrained_cfg=None) -> Tuple[int, ...]:
    """The windows of a variant's pretrained tag (a tag string, cfg dict or PretrainedCfg; None: the default tag)."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg)
    return TAG_WINDOW_SIZES.get(cfg.tag, DEFAULT_WINDOW_SIZES)


def _create_mambavision(variant: str, pretrained: bool = False, **kwargs) -> MambaVision:
    if kwargs.get('window_sizes') is None:  # the windows of the weights being built (timm passes the tag)
        kwargs['window_sizes'] = window_sizes_for(variant, kwargs.get('pretrained_cfg'))
    with release_file_globals():  # CheckpointSaver files pickle their argparse args (vssm.serialization)
        return build_model_with_cfg(
            MambaVision, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
            **kwargs,
        )


@register_model
def mambavision_tiny(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-T: 31.8M params, 4.4 GFLOPs, 82.3 top-1."""
    args = dict(depths=(1, 3, 8, 4), dim=80, in_dim=32, num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_mambavision('mambavision_tiny', pretrained, **dict(args, **kwargs))


@register_model
def mambavision_tiny2(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-T2: 35.1M params, 5.1 GFLOPs, 82.7 top-1."""
    args = dict(depths=(1, 3, 11, 4), dim=80, in_dim=32, num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_mambavision('mambavision_tiny2', pretrained, **dict(args, **kwargs))


@register_model
def mambavision_small(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-S: 50.1M params, 7.5 GFLOPs, 83.3 top-1."""
    args = dict(depths=(3, 3, 7, 5), dim=96, in_dim=64, num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_mambavision('mambavision_small', pretrained, **dict(args, **kwargs))


@register_model
def mambavision_base(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-B: 97.7M params, 15.0 GFLOPs, 84.2 top-1 (84.9 fine-tuned from 21K)."""
    args = dict(depths=(3, 3, 10, 5), dim=128, in_dim=64, num_heads=(2, 4, 8, 16), layer_scale=1e-5,
                drop_path_rate=0.3)
    return _create_mambavision('mambavision_base', pretrained, **dict(args, **kwargs))


@register_model
def mambavision_large(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L: 227.9M params, 34.9 GFLOPs, 85.0 top-1 (86.1 fine-tuned from 21K)."""
    args = dict(depths=(3, 3, 10, 5), dim=196, in_dim=64, num_heads=(4, 8, 16, 32), layer_scale=1e-5,
                drop_path_rate=0.3)
    return _create_mambavision('mambavision_large', pretrained, **dict(args, **kwargs))


@register_model
def mambavision_large2(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L2: 241.5M params, 37.5 GFLOPs, 85.3 top-1 (87.3 at 512 px fine-tuned from 21K)."""
    args = dict(depths=(3, 3, 12, 5), dim=196, in_dim=64, num_heads=(4, 8, 16, 32), layer_scale=1e-5,
                drop_path_rate=0.3)
    return _create_mambavision('mambavision_large2', pretrained, **dict(args, **kwargs))


@register_model
def mambavision_large3(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L3 (21K fine-tuned only): 739.6M params, 87.3 top-1 at 256 px, 88.1 at 512 px."""
    args = dict(depths=(3, 3, 20, 10), dim=256, in_dim=64, num_heads=(4, 8, 16, 32), layer_scale=1e-5,
                drop_path_rate=0.5)
    return _create_mambavision('mambavision_large3', pretrained, **dict(args, **kwargs))
