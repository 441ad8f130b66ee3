"""Shrink an mm model config to smoke-test size (tests and quick CPU checks; never for training).

``shrink_model_cfg(cfg.model, depths=(1, 1, 1, 1), dims=16)`` keeps the config's structure (same backbone
type, neck, heads, losses, samplers) but narrows every 256/512/1024-wide layer to `width`, caps proposal and
sample counts, shrinks the backbone through its own constructor arguments, and drops the pretrained init.
"""
import copy
from typing import Any, Dict

__all__ = ['shrink_model_cfg']

_WIDTH_KEYS = ('in_channels', 'out_channels', 'feat_channels', 'conv_out_channels', 'fc_out_channels', 'channels')
_CAPS = {'nms_pre': 64, 'max_per_img': 32, 'num': 16}


def _shrink(node: Any, width: int) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _WIDTH_KEYS and isinstance(v, int) and v in (256, 512, 1024):
                out[k] = width
            elif k in _CAPS and isinstance(v, int) and not isinstance(v, bool):
                out[k] = min(v, _CAPS[k])
            else:
                out[k] = _shrink(v, width)
        return type(node)(out)
    if isinstance(node, (list, tuple)):
        return type(node)(_shrink(v, width) for v in node)
    return node


def shrink_model_cfg(model_cfg: Dict, width: int = 32, **backbone_overrides) -> Dict:
    """A copy of a detector / segmentor config at smoke-test size; backbone channels read from a real build."""
    from mmengine.registry import MODELS

    cfg = copy.deepcopy(model_cfg)
    backbone = cfg['backbone']
    backbone.update(backbone_overrides)
    backbone['init_cfg'] = None
    channels = list(MODELS.build(copy.deepcopy(backbone)).channels)
    backbone_cfg = cfg.pop('backbone')
    cfg = _shrink(cfg, width)
    cfg['backbone'] = backbone_cfg
    if 'neck' in cfg:  # FPN
        cfg['neck']['in_channels'] = channels
    if 'decode_head' in cfg:  # UperNet / FCN heads index the backbone outputs
        cfg['decode_head']['in_channels'] = channels
        aux = cfg.get('auxiliary_head')
        for head in aux if isinstance(aux, list) else [aux] if aux else []:
            head['in_channels'] = channels[head.get('in_index', -1)]
    return cfg
