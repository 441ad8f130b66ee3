"""Checkpoint files for the mm backbones, and mmengine's loader made to work on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 calls ``torch.load`` without the
argument, so it fails on its own checkpoints: besides tensors they pickle the message hub's ``HistoryBuffer``
objects (numpy arrays, and the buffer's statistics methods as ``getattr(HistoryBuffer, name)``).
``load_checkpoint_file`` reads every file with ``weights_only=True`` (vssm.serialization: the official
classification releases' yacs configs and argparse args mapped to inert stand-ins, .safetensors too), and
for mmengine's own files also allowlists HistoryBuffer, the numpy array and scalar rebuilders, and a getattr
that only returns HistoryBuffer's registered statistics methods. Nothing loads with ``weights_only=False``.
``patch_mmengine_checkpoint_loader`` routes mmengine's local and http loaders through it.
"""
import os
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ..serialization import load_checkpoint_file as _load_file

__all__ = ['load_checkpoint_file', 'patch_mmengine_checkpoint_loader', 'MMENGINE_GLOBALS']


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stand-in for the ``builtins.getattr`` that pickles HistoryBuffer's statistics methods: only those."""
    # the four built in (registered by the first HistoryBuffer made) and any registered since
    if obj is HistoryBuffer and name in {'min', 'max', 'current', 'mean', *HistoryBuffer._statistics_methods}:
        return getattr(HistoryBuffer, name)
    raise ValueError(f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics methods load')


def _numpy_globals() -> List[Tuple[Any, str]]:
    """numpy's array / scalar rebuilders, under both the numpy 2 (numpy._core) and numpy 1 (numpy.core) names."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct, scalar
    # a dtype is rebuilt by numpy.dtype(...) and then given its state, which needs its concrete class allowlisted
    dtype_classes = {type(np.dtype(c)) for c in np.typecodes['All']}
    return [(np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype')] + [
        (fn, f'{mod}.multiarray.{fn.__name__}')
        for fn in (_reconstruct, scalar) for mod in ('numpy._core', 'numpy.core')
    ] + [(c, f'{c.__module__}.{c.__qualname__}') for c in sorted(dtype_classes, key=str)]


MMENGINE_GLOBALS: List[Tuple[Any, str]] = [
    (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
    (_history_buffer_getattr, 'builtins.getattr'),
]


def _download(url: str, model_dir: Optional[str] = None, progress: bool = True) -> str:
    """Fetch a URL once into torch hub's checkpoint cache and return the local path."""
    model_dir = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, os.path.basename(urlparse(url).path))
    if not os.path.isfile(path):
        torch.hub.download_url_to_file(url, path, progress=progress)
    return path


def load_checkpoint_file(filename: str, map_location: Any = 'cpu', model_dir: Optional[str] = None,
                         progress: bool = True) -> Dict[str, Any]:
    """Load a local path or http(s) URL with torch.load(weights_only=True) (or safetensors); see the module doc."""
    if not isinstance(filename, (str, os.PathLike)):
        raise TypeError(f'checkpoint must be a file path or URL, got {type(filename).__name__}')
    filename = os.fspath(filename)
    if filename.startswith(('http://', 'https://')):
        filename = _download(filename, model_dir, progress)
    filename = os.path.expanduser(filename)
    with torch.serialization.safe_globals(MMENGINE_GLOBALS + _numpy_globals()):
        return _load_file(filename, map_location=map_location)


def _mmengine_local(filename, map_location):
    return load_checkpoint_file(filename, map_location)


def _mmengine_http(filename, map_location=None, model_dir=None, progress=True):
    return load_checkpoint_file(filename, map_location, model_dir=model_dir, progress=progress)


def patch_mmengine_checkpoint_loader() -> None:
    """Make mmengine's CheckpointLoader (load_from, resume, PretrainedInit) load through load_checkpoint_file.

    Idempotent. Applied by ``import vssm.mm``; affects local paths and http(s) URLs only.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=_mmengine_local, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=_mmengine_http, force=True)
