"""Shared base of the mm backbones: a timm model wrapped as an mmengine BaseModule.

Weights are loaded by the backbone itself (``init_cfg=dict(type='Pretrained', checkpoint=...)`` or
``pretrained=...``): the file goes through the family's ``checkpoint_filter_fn`` (official layouts) and
must cover every weight of the backbone, otherwise loading raises. mmengine's own PretrainedInit would
load with ``strict=False`` and only warn, which trains from scratch unnoticed.
"""
import fnmatch
import logging
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from timm.models import is_model, model_entrypoint
from torch.nn.modules.batchnorm import _BatchNorm

from ..models._checks import unwrap_state_dict
from .checkpoint import load_checkpoint_file

__all__ = ['TimmBackboneBase', 'HierarchicalBackbone']

StateDict = Dict[str, torch.Tensor]


def _strip(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


class TimmBackboneBase(BaseModule):
    """Holds a timm model of one vssm family and loads checkpoints into it, loudly.

    Subclasses set ``family_module`` / ``arch_pattern`` (the timm entrypoints they accept) and
    ``filter_fn_name`` (the family's official-checkpoint key map), and build ``self.body`` (a timm
    FeatureGetterNet around the model) plus their own layers.
    """
    family_module: str = ''
    arch_pattern: str = '*'  # timm names this backbone accepts (fnmatch)
    default_arch: str = ''  # the timm model built when a config gives no arch
    filter_fn_name: str = 'checkpoint_filter_fn'  # the family module's official-checkpoint key map
    model_attr_prefix: str = 'body.model.'  # where the timm model's weights live in this module's state_dict

    def __init__(self, arch: Optional[str], model_kwargs: Dict, pretrained: Optional[str], init_cfg):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give either pretrained=... or init_cfg=..., not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        arch = arch or self.default_arch
        self._check_arch(arch)
        self.arch = arch
        self.model_kwargs = dict(model_kwargs)

    def _check_arch(self, arch: str) -> None:
        import vssm.models  # noqa: F401  registers the timm entrypoints
        if not is_model(arch):
            raise ValueError(f'{type(self).__name__}: unknown timm model {arch!r}')
        module = model_entrypoint(arch).__module__
        if module != self.family_module or not fnmatch.fnmatch(arch, self.arch_pattern):
            raise ValueError(f'{type(self).__name__} wraps {self.arch_pattern} models of {self.family_module}, '
                             f'not {arch!r} ({module}): use that family\'s backbone type')

    # ------------------------------------------------------------------ weights

    def _reference_model(self) -> nn.Module:
        """The full classification model on `meta`: what the family's checkpoint_filter_fn checks against."""
        return timm.create_model(self.arch, pretrained=False, device='meta', **self.model_kwargs)

    def _filter_fn(self) -> Callable[[StateDict, nn.Module], StateDict]:
        return getattr(sys.modules[self.family_module], self.filter_fn_name)

    def _timm_model(self) -> nn.Module:
        return self.body.model

    def _extra_state_prefixes(self) -> Tuple[str, ...]:
        """Prefixes of this module's own (non-timm) weights that a checkpoint may also carry."""
        return ('outnorm',)

    def _pretrained_cfg(self) -> Optional[Dict]:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        if len(pretrained) > 1:
            raise ValueError(f'more than one Pretrained init_cfg: {pretrained}')
        if pretrained and len(cfgs) > 1:
            raise ValueError('Pretrained cannot be combined with other init_cfg entries for a vssm backbone')
        return pretrained[0] if pretrained else None

    def init_weights(self) -> None:
        cfg = self._pretrained_cfg()
        if cfg is None:
            super().init_weights()  # timm already initialised the model in its constructor
            return
        if 'checkpoint' not in cfg or not cfg['checkpoint']:
            raise ValueError(f"Pretrained init_cfg needs a 'checkpoint' path or URL, got {cfg}")
        self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'))
        self._is_init = True

    def _split_checkpoint(self, checkpoint: Dict, prefix: Optional[str]) -> Tuple[StateDict, StateDict, bool]:
        """-> (timm-model weights, this module's own weights, already in our layout?)."""
        sd = unwrap_state_dict(checkpoint)
        if prefix:
            sd = _strip(sd, prefix)
            if not sd:
                raise ValueError(f'no weights under prefix {prefix!r} in the checkpoint')
        elif any(k.startswith('backbone.') for k in sd):  # a whole mmdet / mmseg model: take its backbone
            sd = _strip(sd, 'backbone.')
        own_prefixes = self._extra_state_prefixes()
        own = {k: v for k, v in sd.items() if own_prefixes and k.startswith(own_prefixes)}
        sd = {k: v for k, v in sd.items() if k not in own}
        ours = bool(self.model_attr_prefix) and any(k.startswith(self.model_attr_prefix) for k in sd)
        if ours:  # saved from this adapter (e.g. a vssm detector checkpoint)
            sd = _strip(sd, self.model_attr_prefix)
        return sd, own, ours

    @torch.no_grad()
    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None) -> None:
        """Load a classification checkpoint (ours or official) or a vssm mm checkpoint; raise if incomplete."""
        raw = load_checkpoint_file(checkpoint)
        sd, own, ours = self._split_checkpoint(raw, prefix)
        model = self._timm_model()
        if not ours:
            try:
                sd = self._filter_fn()(sd, self._reference_model())
            except (ValueError, KeyError) as e:
                raise ValueError(f'{type(self).__name__}({self.arch}): cannot load {checkpoint}: {e}') from e
        expected = model.state_dict()
        missing = sorted(k for k in expected if k not in sd)
        wrong = [f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}'
                 for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
        if missing or wrong:
            lines = [f'{type(self).__name__}({self.arch}): {checkpoint} does not initialise the backbone']
            if missing:
                lines.append(f'{len(missing)} weights missing, e.g. {missing[:5]}')
            if wrong:
                lines.append(f'{len(wrong)} shape mismatches, e.g. {wrong[:3]}')
            raise ValueError('\n'.join(lines))
        model.load_state_dict({k: sd[k] for k in expected}, strict=True)
        unused = sorted(set(sd) - set(expected))
        own_loaded = self._load_own_state(own)
        fresh = sorted(k for k, _ in self.named_parameters()
                       if not k.startswith(self.model_attr_prefix) and k not in own_loaded)
        print_log(f'{type(self).__name__}({self.arch}): loaded {len(expected)} tensors from {checkpoint}; '
                  f'unused {len(unused)} (e.g. {unused[:4]}); newly initialised: {fresh}',
                  logger='current')

    def _load_own_state(self, own: StateDict) -> List[str]:
        """Load this module's own weights found in the checkpoint (all or nothing); return the keys loaded."""
        if not own:
            return []
        mine = {k: v for k, v in self.state_dict().items() if not k.startswith(self.model_attr_prefix)}
        if set(own) != set(mine) or any(own[k].shape != mine[k].shape for k in own):
            print_log(f'{type(self).__name__}: checkpoint weights for {sorted(own)[:4]}... do not match this '
                      f'backbone\'s out_indices / sizes; those layers keep their fresh init', logger='current',
                      level=logging.WARNING)
            return []
        self.load_state_dict(own, strict=False)
        return list(own)

    # ------------------------------------------------------------------ freezing

    frozen_stages: int = -1
    norm_eval: bool = False

    def _frozen_parts(self) -> List[Union[nn.Module, nn.Parameter]]:
        """Modules / parameters that frozen_stages keeps fixed (and modules in eval mode)."""
        return []

    def _freeze_stages(self) -> None:
        for part in self._frozen_parts():
            if isinstance(part, nn.Parameter):
                part.requires_grad = False
                continue
            part.eval()
            for p in part.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


class HierarchicalBackbone(TimmBackboneBase):
    """A hierarchical vssm model (stem + stages) as a backbone: NCHW maps at `out_indices`, each LayerNorm'ed.

    Args:
        arch: timm model name of the family (e.g. 'vmamba_tiny_s1l8'); None: the subclass's ``default_arch``.
        out_indices: stages whose outputs are returned (strides 4, 8, 16, 32 for 0..3).
        frozen_stages: -1 trains everything; 0 freezes the stem; k > 0 also freezes stages 0..k-1 and
            their output norms.
        norm_eval: keep BatchNorm layers in eval mode while training (families with BN).
        out_norm: add a LayerNorm over channels on each output (``outnorm{i}``, as the official backbones).
        with_cp: gradient checkpointing of the stages.
        pretrained: checkpoint path / URL (shorthand for init_cfg=dict(type='Pretrained', checkpoint=...)).
        init_cfg: mmengine init config; 'Pretrained' loads through the family's checkpoint_filter_fn and
            raises when a backbone weight is missing.
        **model_kwargs: passed to the timm constructor (depths, dims, drop_path_rate, ...); unknown names
            raise TypeError there.
    """
    def __init__(
            self,
            arch: Optional[str] = None,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            out_norm: bool = True,
            with_cp: bool = False,
            pretrained: Optional[str] = None,
            init_cfg=None,
            **model_kwargs,
    ):
        super().__init__(arch, model_kwargs, pretrained, init_cfg)
        self.body = timm.create_model(
            self.arch, pretrained=False, features_only=True, out_indices=tuple(out_indices), **model_kwargs)
        self.out_indices = tuple(self.body.out_indices)
        num_stages = len(self.body.model.stages)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.channels = tuple(self.body.feature_info.channels())
        self.strides = tuple(self.body.feature_info.reduction())
        self.out_norm = out_norm
        if out_norm:
            for idx, ch in zip(self.out_indices, self.channels):
                self.add_module(f'outnorm{idx}', LayerNorm2d(ch))
        if with_cp:
            self.body.model.set_grad_checkpointing(True)
        self._freeze_stages()

    def _frozen_parts(self) -> List[Union[nn.Module, nn.Parameter]]:
        if self.frozen_stages < 0:
            return []
        mods = [self.body.model.stem]
        for i in range(self.frozen_stages):
            mods.append(self.body.model.stages[i])
            if hasattr(self, f'outnorm{i}'):
                mods.append(getattr(self, f'outnorm{i}'))
        return mods

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = self.body(x)
        if self.out_norm:
            feats = [getattr(self, f'outnorm{i}')(f) for i, f in zip(self.out_indices, feats)]
        return tuple(f.contiguous() for f in feats)
