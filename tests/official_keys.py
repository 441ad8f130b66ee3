"""The official state_dict layouts the family tests load, from the key lists gzipped into tests/data (copied from
../shared/official_keys, so the tests need no ../shared): ``<stem>.official_keys.txt.gz``, one key<TAB>shape a line."""
import gzip
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Tuple

import torch

DATA = Path(__file__).resolve().parent / 'data'
BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')

__all__ = ['DATA', 'BN_BUFFERS', 'official_shapes', 'official_state_dict', 'official_param_count']


def official_shapes(stem: str) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of the official state_dict ``stem`` (e.g. 'groupmamba_tiny', 'mobilemamba_b1')."""
    shapes = {}
    for line in gzip.decompress((DATA / f'{stem}.official_keys.txt.gz').read_bytes()).decode().splitlines():
        key, shape = line.split('\t')
        shapes[key] = tuple(int(s) for s in re.findall(r'\d+', shape))
    return shapes


def official_state_dict(stem: str, device=None) -> 'OrderedDict[str, torch.Tensor]':
    """Random tensors with the official keys and shapes (BatchNorm statistics valid: positive variances)."""
    sd = OrderedDict()
    for k, shape in official_shapes(stem).items():
        if k.endswith('num_batches_tracked'):
            sd[k] = torch.tensor(7, device=device)
        elif k.endswith('running_var'):
            sd[k] = torch.rand(shape, device=device) + 0.5
        else:
            sd[k] = torch.randn(shape, device=device)
    return sd


def official_param_count(stem: str) -> int:
    """Parameters of the official definition: every tensor but the BatchNorm buffers."""
    return sum(math.prod(s) for k, s in official_shapes(stem).items() if not k.endswith(BN_BUFFERS))
