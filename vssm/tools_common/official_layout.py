"""Our weights -> an official repository's layout (the inverse of a family's checkpoint_filter_fn).

A family module may define ``checkpoint_to_official(state_dict, model) -> state_dict``; otherwise the
registry below is used. Only VMamba has a registered inverse so far: its official key layout is known
exactly (../shared/official_keys). Every inverse is checked by mapping its result forward again.
"""
import re
import sys
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

__all__ = ['inverse_fn', 'to_official', 'vmamba_to_official']


def vmamba_to_official(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """vssm VMamba keys -> MzeroMiko/VMamba keys (the v2/v3 layout every current release uses)."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(r'^stages\.(\d+)\.downsample\.(.*)$', k)
        if m:
            k = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
        else:
            k = re.sub(r'^stages\.(\d+)\.blocks\.', r'layers.\1.blocks.', k)
            k = re.sub(r'^stem\.', 'patch_embed.', k)
            k = re.sub(r'^norm\.', 'classifier.norm.', k)
            k = re.sub(r'^head\.fc\.', 'classifier.head.', k)
        out[k] = v
    return out


_REGISTRY: Dict[str, Callable] = {'vssm.models.vmamba': vmamba_to_official}


def inverse_fn(model: nn.Module) -> Optional[Callable]:
    name = type(model).__module__
    return getattr(sys.modules.get(name), 'checkpoint_to_official', None) or _REGISTRY.get(name)


def to_official(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map our state_dict to the official layout and prove it: the family's filter must map it back exactly."""
    fn = inverse_fn(model)
    if fn is None:
        raise NotImplementedError(
            f'no mapping back to the official layout for {type(model).__module__} ({type(model).__name__}); '
            f'a family adds one as checkpoint_to_official(state_dict, model) in its module')
    official = fn(state_dict, model)
    from .checkpoints import family_filter_fn
    back = family_filter_fn(model)(dict(official), model)
    bad = sorted(set(back) ^ set(state_dict)) or [k for k in state_dict if not torch.equal(back[k], state_dict[k])]
    if bad:
        raise RuntimeError(f'the official-layout mapping does not round-trip for {type(model).__name__}: '
                           f'{len(bad)} keys differ, e.g. {bad[:3]}')
    return official
