"""Loading and converting weights for any timm-registered model, through its family's checkpoint_filter_fn."""
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ..serialization import load_checkpoint_file

__all__ = ['family_filter_fn', 'read_state_dict', 'map_state_dict', 'load_weights', 'MappingReport']


def family_filter_fn(model: nn.Module) -> Optional[Callable]:
    """The checkpoint filter (official layout -> ours) of the module that registers the model.

    Modules name it `checkpoint_filter_fn`, or `<prefix>_checkpoint_filter_fn` when they hold several families
    (LocalMamba: local_vim_..., local_vmamba_...): the prefix the model name starts with wins.
    """
    import timm
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    names = [timm.models.model_entrypoint(arch).__module__] if arch and timm.is_model(arch) else []
    names.append(type(model).__module__)
    for module_name in names:
        module = sys.modules.get(module_name)
        fns = {n: getattr(module, n) for n in dir(module) if n.endswith('checkpoint_filter_fn')
               and callable(getattr(module, n))}
        prefixed = sorted((n for n in fns if arch and n != 'checkpoint_filter_fn'
                           and arch.startswith(n[:-len('checkpoint_filter_fn')].rstrip('_'))), key=len)
        if prefixed:
            return fns[prefixed[-1]]
        if 'checkpoint_filter_fn' in fns:
            return fns['checkpoint_filter_fn']
    return None


def read_state_dict(path: str, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: training checkpoints (`state_dict`, `model`, EMA on request), bare dicts, or
    .safetensors; pickles load with weights_only=True (official release objects mapped by vssm.serialization)."""
    ckpt = load_checkpoint_file(path, map_location='cpu')
    if not isinstance(ckpt, dict):
        raise TypeError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}')
    # EMA weights: timm / VMamba / Vim name them state_dict_ema / model_ema, LocalMamba's CheckpointManager ema_model,
    # MobileMamba's trainer net_E (its weights: net)
    keys = ('state_dict_ema', 'model_ema', 'ema_model', 'net_E', 'state_dict', 'model', 'net') if use_ema \
        else ('state_dict', 'model', 'net')
    for key in keys:
        if isinstance(ckpt.get(key), dict) and ckpt[key]:
            ckpt = ckpt[key]
            break
    else:
        if use_ema:
            raise KeyError(f'{path}: no EMA weights (state_dict_ema / model_ema / ema_model / net_E) in this '
                           f'checkpoint')
    sd = {k: v for k, v in ckpt.items() if torch.is_tensor(v)}
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    if not sd:
        raise ValueError(f'{path}: no tensors found; is it a model checkpoint?')
    return sd


@dataclass
class MappingReport:
    """What a conversion / load did: counts and the keys that did not find a home."""
    source_keys: int = 0
    mapped_keys: int = 0
    loaded_keys: int = 0
    # source tensors whose storage no mapped tensor shares: dropped by the filter (or rebuilt, e.g. stacked)
    unmapped_source_keys: List[str] = field(default_factory=list)
    missing_keys: List[str] = field(default_factory=list)  # model keys with no checkpoint value
    unexpected_keys: List[str] = field(default_factory=list)  # mapped keys the model does not have
    reinitialised_keys: List[str] = field(default_factory=list)  # classifier keys left new (other num_classes)
    filter_fn: str = ''

    def lines(self) -> List[str]:
        out = [f'filter: {self.filter_fn or "none (keys used as they are)"}',
               f'source tensors: {self.source_keys}; after mapping: {self.mapped_keys}; loaded: {self.loaded_keys}']
        for name in ('unmapped_source_keys', 'missing_keys', 'unexpected_keys', 'reinitialised_keys'):
            keys = getattr(self, name)
            if keys:
                shown = ', '.join(keys[:8]) + (f', ... (+{len(keys) - 8})' if len(keys) > 8 else '')
                out.append(f'{name.replace("_", " ")}: {len(keys)}: {shown}')
        return out

    def __str__(self) -> str:
        return '\n'.join(self.lines())


def map_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> (Dict[str, torch.Tensor], MappingReport):
    """Run the family's filter fn (official layout -> ours) when the keys are not already the model's."""
    report = MappingReport(source_keys=len(state_dict))
    own = model.state_dict()
    if set(state_dict) <= set(own) and len(set(state_dict) & set(own)) >= len(own) // 2:
        mapped = dict(state_dict)  # already in our layout
    else:
        fn = family_filter_fn(model)
        if fn is None:
            mapped = dict(state_dict)
        else:
            report.filter_fn = f'{fn.__module__}.{fn.__name__}'
            mapped = fn(state_dict, model)
    report.mapped_keys = len(mapped)
    kept = {_storage(v) for v in mapped.values() if torch.is_tensor(v)}
    report.unmapped_source_keys = sorted(k for k, v in state_dict.items() if _storage(v) not in kept)
    return mapped, report


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr() if t.numel() else id(t)


def _classifier_prefixes(model: nn.Module) -> List[str]:
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    names = cfg.get('classifier', 'head')
    return [names] if isinstance(names, str) else list(names)


def load_weights(model: nn.Module, path: str, use_ema: bool = False, strict: bool = True) -> MappingReport:
    """Load a checkpoint (ours or an official release) into `model`; a classifier of another size is left new.

    Fine-tuning with a different num_classes keeps everything but the classifier. With strict=True any other
    missing or unexpected key is an error that lists them.
    """
    sd = read_state_dict(path, use_ema=use_ema)
    mapped, report = map_state_dict(sd, model)
    own = model.state_dict()
    heads = tuple(p + '.' for p in _classifier_prefixes(model))
    for k in list(mapped):
        if k in own and mapped[k].shape != own[k].shape and k.startswith(heads):
            report.reinitialised_keys.append(k)
            del mapped[k]
    wrong = [f'{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}'
             for k in mapped if k in own and mapped[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f'{path} does not fit {type(model).__name__}: {len(wrong)} tensors differ in shape, '
                         f'e.g. ' + '; '.join(wrong[:3]))
    result = model.load_state_dict(mapped, strict=False)
    report.missing_keys = [k for k in result.missing_keys if not k.startswith(heads)]
    report.reinitialised_keys += [k for k in result.missing_keys if k.startswith(heads) and k not in report.reinitialised_keys]
    report.unexpected_keys = list(result.unexpected_keys)
    report.loaded_keys = len(mapped) - len(report.unexpected_keys)
    if strict and (report.missing_keys or report.unexpected_keys):
        raise ValueError(f'{path} does not fit {type(model).__name__}:\n{report}')
    return report
