"""Vision Mamba (Vim) and the plain LocalVim model.

Paper: `Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model`
    - https://arxiv.org/abs/2401.09417
Official code and weights: https://github.com/hustvl/Vim

A ViT-shaped token model: patch embed -> class token in the middle of the sequence (N // 2) -> learned
position embedding -> blocks of (RMSNorm -> bidirectional Mamba mixer), residual kept in float32 ->
final RMSNorm -> head on the class token. The mixer (vssm.layers.MultiMamba) scans the token sequence
forwards and backwards through the shared scan engine; both directions always run.

The same class builds LocalVim (LocalMamba's plain model, see localmamba.py): no class token, the mixer
scans the patch grid along four per-layer directions merged by a channel gate, rotary embedding on the
residual stream before every block, mean pooling; LocalVim-T midcls keeps the middle class token (no
rotary embedding) and every grid direction reads it at its middle step (``grid_scan=True``).

Official ``add -> norm -> mixer`` blocks with a running residual are rewritten as pre-norm blocks
``x + drop_path(mixer(norm(x)))`` (the same function, the final add folded into the last block).
Token outputs (output_fmt 'NLC') like timm's VisionTransformer; forward_intermediates gives NCHW maps.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, RmsNormFp32, apply_rot_embed, calculate_drop_path_rates, get_device_dtype, lecun_normal_,
    register_notrace_function, resample_abs_pos_embed, trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..layers import MultiMamba
from ..serialization import release_file_globals
from ._checks import check_input, check_state_dict_matches, unwrap_state_dict

__all__ = ['Vim']

_SEQUENCE_DIRECTIONS = ('h', 'h_flip')  # the only directions of a 1 x L token sequence


class PatchEmbed(nn.Module):
    """Conv patch embedding with a stride (Vim's fine-tuned models overlap patches: kernel 16, stride 8).

    ``dynamic_img_pad`` zero-pads the image to a multiple of the patch size (LocalVim), otherwise the conv
    drops the remainder as the official Vim does.
    """

    def __init__(self, patch_size: int = 16, stride: Optional[int] = None, in_chans: int = 3, embed_dim: int = 192,
                 dynamic_img_pad: bool = False, device=None, dtype=None):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride or patch_size
        if dynamic_img_pad and self.stride != patch_size:
            raise ValueError('dynamic_img_pad needs stride == patch_size')
        self.dynamic_img_pad = dynamic_img_pad
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=self.stride, device=device, dtype=dtype)

    def grid_size(self, H: int, W: int) -> Tuple[int, int]:
        if self.dynamic_img_pad:
            return math.ceil(H / self.patch_size), math.ceil(W / self.patch_size)
        return (H - self.patch_size) // self.stride + 1, (W - self.patch_size) // self.stride + 1

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if self.dynamic_img_pad:
            p = self.patch_size
            x = F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def rope_tables(embed_dim: int, grid: Tuple[int, int], pt_grid: int = 14, theta: float = 10000.,
                device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """LocalVim's rotary embedding (EVA-02 'VisionRotaryEmbeddingFast'): (cos, sin), each (H*W, embed_dim).

    The first half of the channels rotates with the row, the second half with the column; positions are
    scaled to a `pt_grid` grid, frequencies interleaved in pairs (timm's `rot` convention).
    """
    half = embed_dim // 2
    freqs = 1. / theta ** (torch.arange(0, half, 2, device=device)[:half // 2].float() / half)
    H, W = grid
    fh = torch.outer(torch.arange(H, device=device) / H * pt_grid, freqs).repeat_interleave(2, -1)  # (H, half)
    fw = torch.outer(torch.arange(W, device=device) / W * pt_grid, freqs).repeat_interleave(2, -1)  # (W, half)
    f = torch.cat([fh[:, None].expand(H, W, -1), fw[None].expand(H, W, -1)], dim=-1).reshape(H * W, -1)
    return f.cos(), f.sin()


def _resize_grid_table(table: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    """(old_H*old_W, C) table -> (new_H*new_W, C): bicubic without antialias, as the official code resamples
    position embeddings (Vim / DeiT fine-tuning) and LocalVim's position and rotary tables."""
    return resample_abs_pos_embed(table[None], list(new), list(old), num_prefix_tokens=0, antialias=False)[0]


@register_notrace_function  # branches on the input's grid: a leaf for FX tracing
def grid_table(table: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    """A (H*W, C) per-position table for another grid (the table itself when the grid is the same)."""
    if tuple(new) == tuple(old):
        return table
    return _resize_grid_table(table, old, new)


@register_notrace_function  # branches on the input's grid: a leaf for FX tracing
def embed_tokens(x: torch.Tensor, pos_embed: torch.Tensor, cls_token: Optional[torch.Tensor],
                 base_grid: Tuple[int, int], grid: Tuple[int, int]) -> torch.Tensor:
    """Patch tokens (B, H*W, E) + position embedding (stored for `base_grid`, resampled to `grid`), with the
    class token (its own position row, the middle one) inserted at the middle of the sequence."""
    pos = pos_embed
    if cls_token is not None:
        mid0 = (pos.shape[1] - 1) // 2
        pos_cls, pos = pos[:, mid0:mid0 + 1], torch.cat([pos[:, :mid0], pos[:, mid0 + 1:]], dim=1)
    x = x + grid_table(pos[0], base_grid, grid)[None]
    if cls_token is not None:
        mid = x.shape[1] // 2
        cls = cls_token.expand(x.shape[0], -1, -1) + pos_cls
        x = torch.cat([x[:, :mid], cls, x[:, mid:]], dim=1)
    return x


class VimBlock(nn.Module):
    """x + drop_path(mixer(RMSNorm(x))); x may stay float32 while the block runs in the model's dtype."""

    def __init__(self, dim: int, mixer: MultiMamba, drop_path: float = 0., norm_eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        self.norm = RmsNormFp32(dim, eps=norm_eps, device=device, dtype=dtype)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None,
                middle_token: bool = False) -> torch.Tensor:
        h = self.mixer(self.norm(x).to(self.norm.weight.dtype), grid, middle_token)
        return x + self.drop_path(h)


class Vim(nn.Module):
    """Vision Mamba: plain stack of bidirectional Mamba blocks over patch tokens, output_fmt NLC."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            patch_stride: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            directions: Union[Sequence[str], Sequence[Sequence[str]]] = _SEQUENCE_DIRECTIONS,
            direction_gate: bool = False,
            d_state: int = 16,
            expand: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 4,
            conv_bias: bool = True,
            class_token: bool = True,
            grid_scan: Optional[bool] = None,
            rope: bool = False,
            dynamic_img_pad: bool = False,
            norm_eps: float = 1e-5,
            residual_in_fp32: bool = True,
            weight_init: str = 'mamba',
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: training image size (sets the stored position-embedding grid; any size runs).
            patch_size: patch (conv kernel) size.
            patch_stride: patch stride (default = patch_size; 8 for Vim's fine-tuned '+' models).
            in_chans: input channels.
            num_classes: classes (0: no classifier).
            global_pool: 'token' (class token), 'avg' (mean of patch tokens) or '' (all tokens).
            embed_dim: token width E.
            depth: number of blocks.
            directions: scan directions, one list for all blocks or one list per block; with a class token
                the mixer scans the whole 1-D sequence ('h', 'h_flip'), without one it scans the patch grid.
            direction_gate: merge directions with LocalMamba's channel gate (else their mean).
            d_state: SSM state size N.
            expand: mixer inner width / E.
            dt_rank: rank of dt ('auto' = ceil(E / 16)).
            d_conv: causal conv1d size.
            conv_bias: bias on the conv1d.
            class_token: a learned class token inserted in the middle of the sequence.
            grid_scan: the mixer scans the patch grid along `directions` (default: only without a class token).
                With a class token every direction reads it at its middle step (LocalVim-T midcls); otherwise
                the mixer scans the 1-D token sequence ('h', 'h_flip') as Vim does.
            rope: rotary embedding of the residual stream before every block (LocalVim).
            dynamic_img_pad: pad images to a multiple of the patch size (LocalVim).
            norm_eps: RMSNorm epsilon.
            residual_in_fp32: keep the residual stream in float32.
            weight_init: 'mamba' (Vim's init) or 'trunc_normal' (LocalVim's: every Linear trunc_normal .02).
            drop_rate: dropout before the classifier.
            pos_drop_rate: dropout after the position embedding.
            drop_path_rate: stochastic depth, linear over the blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if weight_init not in ('mamba', 'trunc_normal'):
            raise ValueError(f"weight_init must be 'mamba' or 'trunc_normal', got {weight_init!r}")
        per_block = list(directions) if directions and not isinstance(directions[0], str) else [directions] * depth
        if len(per_block) != depth:
            raise ValueError(f'got {len(per_block)} per-block direction lists for depth {depth}')
        if class_token and rope:
            raise ValueError('rope runs on the patch grid: use it without a class token')
        grid_scan = not class_token if grid_scan is None else bool(grid_scan)
        if not class_token and not grid_scan:
            raise ValueError('without a class token the mixer scans the patch grid: grid_scan must not be False')
        if not grid_scan and any(d not in _SEQUENCE_DIRECTIONS for dirs in per_block for d in dirs):
            got = sorted({d for b in per_block for d in b})
            raise ValueError(f'with a class token in the sequence the mixer scans it in 1-D (grid_scan=False): '
                             f'directions must be from {_SEQUENCE_DIRECTIONS}, got {got}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.grid_scan = grid_scan
        self.residual_in_fp32 = residual_in_fp32
        self.weight_init_mode = weight_init
        self.output_fmt = 'NLC'
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, patch_stride, in_chans, embed_dim, dynamic_img_pad, **dd)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid = self.patch_embed.grid_size(*img_size)
        self.min_input_size = patch_size
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid[0] * self.grid[1] + self.num_prefix_tokens,
                                                  embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.rope = rope
        if rope:  # fixed tables, recomputed by init_weights (not part of the checkpoint)
            self.register_buffer('rope_cos', torch.empty(self.grid[0] * self.grid[1], embed_dim, **dd),
                                 persistent=False)
            self.register_buffer('rope_sin', torch.empty(self.grid[0] * self.grid[1], embed_dim, **dd),
                                 persistent=False)

        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            VimBlock(
                embed_dim,
                MultiMamba(embed_dim, dirs, direction_gate=direction_gate, d_state=d_state, expand=expand,
                           dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias, **dd),
                drop_path=dpr[i], norm_eps=norm_eps, **dd,
            )
            for i, dirs in enumerate(per_block)
        ])
        stride = self.patch_embed.stride
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=stride) for i in range(depth)]
        self.norm = RmsNormFp32(embed_dim, eps=norm_eps, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------------------------------ init

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official initialisation (Vim or LocalVim), usable after `to_empty`."""
        if self.pos_embed.is_meta:  # nothing to fill (and meta init ops are slow)
            return
        trunc_normal_(self.pos_embed, std=.02)
        if self.cls_token is not None and self.weight_init_mode == 'trunc_normal':
            nn.init.zeros_(self.cls_token)  # LocalVim midcls leaves its class token at zero
        elif self.cls_token is not None:
            trunc_normal_(self.cls_token, std=.02)
        if self.rope:
            cos, sin = rope_tables(self.embed_dim, self.grid, device=self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)
        depth = len(self.blocks)
        for blk in self.blocks:
            blk.norm.reset_parameters()
            blk.mixer.init_weights(out_proj_scale=1 / math.sqrt(depth))
        self.norm.reset_parameters()
        if self.weight_init_mode == 'trunc_normal':
            # LocalVim applies its ViT init to every Linear (dt_proj included) before rescaling out_proj
            for blk in self.blocks:
                for m in blk.mixer.modules():
                    if isinstance(m, nn.Linear):
                        trunc_normal_(m.weight, std=.02)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
                blk.mixer.out_proj.reset_parameters()
                blk.mixer.out_proj.weight.mul_(1 / math.sqrt(depth))
            self.patch_embed.proj.reset_parameters()
        else:
            lecun_normal_(self.patch_embed.proj.weight)
            nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------------------------- timm API

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        # as the official optimizer setup: embeddings and the per-channel SSM parameters
        names = ['pos_embed', '*.A_log', '*.D']
        return names + (['cls_token'] if self.cls_token is not None else [])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('token', 'avg', ''):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)  # a new module starts in training mode: keep the model's mode

    # -------------------------------------------------------------------------------------- forward

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch tokens (+ middle class token) + position embedding, resampled for another grid."""
        check_input(x, self.in_chans, self.min_input_size, type(self).__name__)
        x, grid = self.patch_embed(x)
        x = embed_tokens(x, self.pos_embed, self.cls_token, self.grid, grid)
        return self.pos_drop(x), grid

    def _rope(self, grid: Tuple[int, int]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if not self.rope:
            return None
        return grid_table(self.rope_cos, self.grid, grid), grid_table(self.rope_sin, self.grid, grid)

    def _run_blocks(self, x: torch.Tensor, grid: Tuple[int, int], blocks: Sequence[nn.Module], take=()):
        """Run `blocks` on the residual stream; also returns the stream after each block index in `take`."""
        # the patch grid (a class token, if any, at every direction's middle step) or the 1-D token sequence
        mixer_grid = grid if self.grid_scan else None
        middle_token = self.grid_scan and self.cls_token is not None
        rope = self._rope(grid)
        if self.residual_in_fp32:
            x = x.float()
        taps = []
        for i, blk in enumerate(blocks):
            if rope is not None:
                x = apply_rot_embed(x, rope[1], rope[0])
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, mixer_grid, middle_token)
            else:
                x = blk(x, mixer_grid, middle_token)
            if i in take:
                taps.append(x)
        return x, taps

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).to(self.patch_embed.proj.weight.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self._embed(x)
        x, _ = self._run_blocks(x, grid, self.blocks)
        return self._final_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, (x.shape[1] - 1) // 2]
        elif self.global_pool == 'avg':
            if self.cls_token is not None:
                mid = (x.shape[1] - 1) // 2
                x = torch.cat([x[:, :mid], x[:, mid + 1:]], dim=1)
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs at `indices` (class token split off), NCHW maps or NLC tokens, as timm's ViT."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, grid = self._embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        x, taps = self._run_blocks(x, grid, blocks, take=set(take_indices))
        dtype = self.patch_embed.proj.weight.dtype
        intermediates, prefix = [], []
        for t in taps:
            t = self._final_norm(t) if norm else t.to(dtype)
            if self.cls_token is not None:
                mid = (t.shape[1] - 1) // 2
                prefix.append(t[:, mid:mid + 1])
                t = torch.cat([t[:, :mid], t[:, mid + 1:]], dim=1)
            if output_fmt == 'NCHW':
                t = t.reshape(B, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append(t)
        if return_prefix_tokens and prefix:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self._final_norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


# --------------------------------------------------------------------------------------- checkpoints

# official Vim mixer names (mamba_ssm bimamba v2) -> ours: direction 0 forward, 1 backward
_VIM_MIXER = {
    'conv1d.': 'dirs.0.conv1d.', 'x_proj.': 'dirs.0.x_proj.', 'dt_proj.': 'dirs.0.dt_proj.',
    'A_log': 'dirs.0.A_log', 'D': 'dirs.0.D',
    'conv1d_b.': 'dirs.1.conv1d.', 'x_proj_b.': 'dirs.1.x_proj.', 'dt_proj_b.': 'dirs.1.dt_proj.',
    'A_b_log': 'dirs.1.A_log', 'D_b': 'dirs.1.D',
}


def _remap_vim_key(k: str) -> str:
    k = k.replace('layers.', 'blocks.', 1) if k.startswith('layers.') else k
    if k.startswith('norm_f.'):
        return 'norm.' + k[len('norm_f.'):]
    head, sep, rest = k.partition('.mixer.')
    if sep:
        for old, new in _VIM_MIXER.items():
            if rest == old or (old.endswith('.') and rest.startswith(old)):
                return head + sep + new + rest[len(old):]
    return k


def resample_pos_embed(pos_embed: torch.Tensor, model: Vim) -> torch.Tensor:
    """A checkpoint's position embedding on the model's grid (middle class token kept in the middle)."""
    n_prefix = model.num_prefix_tokens
    if pos_embed.shape == model.pos_embed.shape:
        return pos_embed
    n_old = pos_embed.shape[1] - n_prefix
    side = int(math.sqrt(n_old))
    if side * side != n_old:
        raise ValueError(f'cannot resample a position embedding of {n_old} patches: not a square grid')
    cls = None
    if n_prefix:
        mid = n_old // 2
        cls, pos_embed = pos_embed[:, mid:mid + 1], torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
    pos_embed = _resize_grid_table(pos_embed[0], (side, side), model.grid)[None]
    if cls is not None:
        mid = pos_embed.shape[1] // 2
        pos_embed = torch.cat([pos_embed[:, :mid], cls, pos_embed[:, mid:]], dim=1)
    return pos_embed


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Vim) -> Dict[str, torch.Tensor]:
    """Official Vim checkpoints (`model` wrapper, `module.` prefix, hustvl/Vim names) -> vssm keys."""
    state_dict = unwrap_state_dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        k = _remap_vim_key(k)
        if k == 'pos_embed':
            v = resample_pos_embed(v, model)
        out[k] = v
    check_state_dict_matches(out, model, ignore=('head.', 'patch_embed.proj.'))
    return out


# ------------------------------------------------------------------------------------------- configs

_HF = 'https://huggingface.co/hustvl/'


def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2401.09417', 'origin_url': 'https://github.com/hustvl/Vim',
        **kwargs,
    }


# Weight files: the official README links the Hugging Face repos; file names as published in them
default_cfgs = generate_default_cfgs({
    'vim_tiny.in1k': _cfg(url=_HF + 'Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth'),
    'vim_small.in1k': _cfg(url=_HF + 'Vim-small-midclstok/resolve/main/vim_s_midclstok_80p5acc.pth'),
    'vim_base.in1k': _cfg(url=_HF + 'Vim-base-midclstok/resolve/main/vim_b_midclstok_81p9acc.pth'),
    'vim_tiny_stride8.in1k': _cfg(url=_HF + 'Vim-tiny-midclstok/resolve/main/vim_t_midclstok_ft_78p3acc.pth'),
    'vim_small_stride8.in1k': _cfg(url=_HF + 'Vim-small-midclstok/resolve/main/vim_s_midclstok_ft_81p6acc.pth'),
})


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    out_indices = kwargs.pop('out_indices', 3)
    with release_file_globals():  # official files pickle configs / args (vssm.serialization)
        return build_model_with_cfg(
            Vim, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
            **kwargs,
        )


@register_model
def vim_tiny(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti (vim_tiny_patch16_224_bimambav2_..._midclstok_div2): 7.1M params, 76.1 top-1."""
    args = dict(embed_dim=192, depth=24, drop_path_rate=0.0)
    return _create_vim('vim_tiny', pretrained, **dict(args, **kwargs))


@register_model
def vim_small(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S (vim_small_patch16_224_bimambav2_..._midclstok_div2): 25.8M params, 80.5 top-1."""
    args = dict(embed_dim=384, depth=24, drop_path_rate=0.05)
    return _create_vim('vim_small', pretrained, **dict(args, **kwargs))


@register_model
def vim_base(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-B (vim_base_patch16_224_bimambav2_..._middle_cls_token_div2): 97.6M params, 81.9 top-1."""
    args = dict(embed_dim=768, depth=24, drop_path_rate=0.1)
    return _create_vim('vim_base', pretrained, **dict(args, **kwargs))


@register_model
def vim_tiny_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti+ (vim_tiny_patch16_stride8_224_...): 16x16 patches at stride 8 (27x27 tokens), 78.3 top-1."""
    args = dict(embed_dim=192, depth=24, patch_stride=8, drop_path_rate=0.0)
    return _create_vim('vim_tiny_stride8', pretrained, **dict(args, **kwargs))


@register_model
def vim_small_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S+ (vim_small_patch16_stride8_224_...): 16x16 patches at stride 8 (27x27 tokens), 81.6 top-1."""
    args = dict(embed_dim=384, depth=24, patch_stride=8, drop_path_rate=0.0)
    return _create_vim('vim_small_stride8', pretrained, **dict(args, **kwargs))
