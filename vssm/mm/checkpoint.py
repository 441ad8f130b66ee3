"""Checkpoint files for the mm backbones, and mmengine's loader made to work on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default. Tensor-only files (timm-style checkpoints, our
classification checkpoints) load that way; training checkpoints that pickle Python objects (mmengine's
``meta`` and message hub, the official VMamba files' configs) cannot. mmengine 0.10.7 calls ``torch.load``
without the argument, so it fails on its own checkpoints. ``load_checkpoint_file`` tries the safe load
first and falls back to a full unpickle with a warning; ``patch_mmengine_checkpoint_loader`` routes
mmengine's local and http loaders through it.
"""
import logging
import os
import pickle
from typing import Any, Dict, Optional
from urllib.parse import urlparse

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ['load_checkpoint_file', 'patch_mmengine_checkpoint_loader']


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
    """torch.load a local path or http(s) URL: tensors-only first, full unpickle (with a warning) if needed."""
    if not isinstance(filename, (str, os.PathLike)):
        raise TypeError(f'checkpoint must be a file path or URL, got {type(filename).__name__}')
    filename = os.fspath(filename)
    if filename.startswith(('http://', 'https://')):
        filename = _download(filename, model_dir, progress)
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if 'Unsupported global' in ln] or [type(e).__name__]
        print_log(f'{filename} holds Python objects besides tensors ({lines[0][:160]}); loading it with '
                  f'weights_only=False. Only load checkpoints you trust.', logger='current', level=logging.WARNING)
        return torch.load(filename, map_location=map_location, weights_only=False)


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
