"""Reading checkpoint files without running pickled code: ``torch.load(weights_only=True)`` with the few Python
objects that official release and training files pickle mapped to inert stand-ins, and ``.safetensors``.

What the families' official training scripts save besides tensors, ints, floats, strings, lists and dicts
(read from their save calls):

- VMamba (MzeroMiko/VMamba classification/utils/utils.py ``save_checkpoint_ema``) and EfficientVMamba
  (TerryPei/EfficientVMamba, the same Swin-derived script): ``config``, a ``yacs.config.CfgNode``, next to
  model, model_ema, optimizer, lr_scheduler and scaler state dicts, ``max_accuracy`` and ``epoch``.
- Vim (hustvl/Vim vim/main.py, DeiT-style): ``args``, an ``argparse.Namespace``, next to model, model_ema,
  optimizer, lr_scheduler, scaler (a state dict or the string 'none') and epoch. timm's own checkpoints
  (tools/train.py) pickle the same.
- LocalMamba (hunto/LocalMamba lib/utils/misc.py ``CheckpointManager`` and tools/convert_ckpt.py): only
  state dicts, ints and None; its release files are ``{'state_dict': ...}``.

The weights_only unpickler only rebuilds allowlisted globals. ``argparse.Namespace`` is a plain attribute
bag, so it is allowlisted as itself; a ``CfgNode`` loads as an ``OrderedDict`` of its entries (its yacs
flags land in the dict's ``__dict__``), so yacs need not be installed and none of its code runs. Nothing
here ever loads with ``weights_only=False``.
"""
import argparse
import contextlib
import os
import pickle
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Tuple, Union

import torch

__all__ = ['RELEASE_FILE_GLOBALS', 'release_file_globals', 'load_checkpoint_file', 'is_safetensors']


class CfgNodeStandIn:
    """Stand-in for ``yacs.config.CfgNode`` (a dict subclass): unpickles as an OrderedDict of its entries.

    The weights_only unpickler fills only exact dict / OrderedDict instances and sets the pickled attribute
    state through ``__dict__``, which an OrderedDict has and a plain dict lacks.
    """

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


# (object, pickled name) pairs: the named form keeps each entry distinct from a bare-class entry that other
# code (timm's loader allowlists argparse.Namespace itself) adds and removes around its own loads
RELEASE_FILE_GLOBALS: List[Tuple[Any, str]] = [
    (argparse.Namespace, 'argparse.Namespace'),
    (CfgNodeStandIn, 'yacs.config.CfgNode'),
]


@contextlib.contextmanager
def release_file_globals() -> Iterator[None]:
    """Within this block torch.load(weights_only=True) also reads the official release / training files."""
    with torch.serialization.safe_globals(RELEASE_FILE_GLOBALS):
        yield


def is_safetensors(path: Union[str, os.PathLike]) -> bool:
    return os.fspath(path).endswith('.safetensors')


def load_checkpoint_file(path: Union[str, os.PathLike], map_location: Any = 'cpu') -> Dict[str, Any]:
    """A checkpoint file's contents: .safetensors as a dict of tensors, else torch.load(weights_only=True)
    with the release-file stand-ins; a file that pickles anything else is refused with the names it needs."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if is_safetensors(path):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, (str, torch.device)) else 'cpu'
        return load_file(path, device=str(device))
    try:
        with release_file_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 (a legacy or damaged file: the torch error says enough)
            names = []
        allowed = {name for _, name in RELEASE_FILE_GLOBALS}
        names = [n for n in names if n not in allowed]
        raise pickle.UnpicklingError(
            f'{path} pickles Python objects that vssm does not load{": " + ", ".join(names) if names else ""}. '
            f'vssm reads checkpoints with torch.load(weights_only=True) only (release-file objects it maps: '
            f'{", ".join(sorted(allowed))}). Save the weights alone (model.state_dict()) or convert the file '
            f'with tools/convert_checkpoint.py.\n{e}') from e
