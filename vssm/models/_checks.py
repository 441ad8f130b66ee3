"""Input and checkpoint validation shared by every family: clear errors instead of deep failures."""
from typing import Dict, Iterable

import torch
from timm.layers import register_notrace_function

__all__ = ['check_input', 'unwrap_state_dict', 'check_state_dict_matches']


@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int, min_size: int, model_name: str) -> None:
    """An NCHW image batch with the model's channel count, at least `min_size` pixels on each side."""
    if x.dim() != 4:
        raise ValueError(f'{model_name} expects an NCHW image batch (4 dims), got shape {tuple(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(f'{model_name} expects {in_chans} input channels (NCHW), got {x.shape[1]} '
                         f'in a tensor of shape {tuple(x.shape)}')
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f'{model_name} needs an image of at least {min_size}x{min_size} pixels (its total '
                         f'stride), got {x.shape[2]}x{x.shape[3]}')


def unwrap_state_dict(checkpoint) -> Dict[str, torch.Tensor]:
    """Take the weights out of a training checkpoint (`model`, `state_dict` wrappers; `module.` prefixes)."""
    sd = checkpoint
    for key in ('model', 'state_dict', 'model_state'):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise TypeError(f'expected a state_dict (a dict of tensors), got {type(sd).__name__}')
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


def check_state_dict_matches(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module,
                             ignore: Iterable[str] = ()) -> None:
    """Raise one readable error when a (mapped) checkpoint is for another model.

    Keys under `ignore` prefixes (classifier, first conv) are left to timm, which adapts them for a new
    num_classes or in_chans.
    """
    ignore = tuple(ignore)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(ignore)}
    given = {k: v.shape for k, v in state_dict.items() if not k.startswith(ignore) and torch.is_tensor(v)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [(k, tuple(given[k]), tuple(expected[k])) for k in sorted(set(given) & set(expected))
             if given[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return
    name = getattr(model, 'default_cfg', {}).get('architecture', type(model).__name__)
    lines = [f'checkpoint does not match {name}; was it saved from another model or size?']
    if wrong:
        lines.append(f'{len(wrong)} tensors differ in shape, e.g. ' + '; '.join(
            f'{k}: checkpoint {g} vs model {e}' for k, g, e in wrong[:3]))
    if missing:
        lines.append(f'{len(missing)} keys missing, e.g. {missing[:3]}')
    if unexpected:
        lines.append(f'{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}')
    raise ValueError('\n'.join(lines))
