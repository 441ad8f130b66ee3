"""Shrink an mm model config to smoke-test size (tests and quick CPU checks; never for training).

``shrink_model_cfg(cfg.model)`` keeps the config's structure (same backbone type, neck, heads, losses,
samplers) but narrows every 256/512/1024-wide layer to `width`, caps proposal and sample counts, shrinks the
backbone through its own constructor arguments (``tiny_backbone_overrides``, or yours), and drops the
pretrained init.
"""
import copy
from typing import Any, Dict

__all__ = ['shrink_model_cfg', 'tiny_backbone_overrides']

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


_SCAN = ('h', 'h_flip', 'w2', 'w7_flip')  # one searched-style direction list for shrunk LocalMamba models


def tiny_backbone_overrides(backbone_cfg: Dict) -> Dict:
    """Constructor arguments that make a vssm backbone config tiny (1-block stages / 2-4 blocks, 16-32 wide)."""
    kind = str(backbone_cfg['type']).split('.')[-1]
    if kind in ('VMamba', 'EfficientVMamba', 'LocalVMamba', 'GroupMamba', 'SpatialMamba'):
        out = dict(depths=(1, 1, 1, 1), dims=16)
        if kind == 'LocalVMamba':
            out['directions'] = [_SCAN] * 4
        return out
    if kind == 'MambaVision':  # one conv block per conv stage, a mixer and an attention block per windowed stage
        return dict(depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 1, 2, 2), window_sizes=(4, 2))
    if kind == 'MobileMamba':  # three stages at strides 16, 32, 64
        return dict(depths=(1, 1, 1), dims=(16, 24, 32))
    if kind in ('Vim', 'LocalVim'):
        taps = len(backbone_cfg.get('out_indices', (-1,)))
        depth = max(2, taps)
        out = dict(embed_dim=32, depth=depth, img_size=64, out_indices=(-1,) if taps == 1 else tuple(range(taps)))
        if kind == 'LocalVim':
            out['directions'] = [_SCAN] * depth
        return out
    raise ValueError(f'no tiny settings for backbone type {backbone_cfg["type"]!r}')


def shrink_model_cfg(model_cfg: Dict, width: int = 32, **backbone_overrides) -> Dict:
    """A copy of a detector / segmentor config at smoke-test size; backbone channels read from a real build.

    backbone_overrides default to ``tiny_backbone_overrides(model_cfg['backbone'])``.
    """
    from mmengine.registry import MODELS

    cfg = copy.deepcopy(model_cfg)
    backbone = cfg['backbone']
    backbone.update(backbone_overrides or tiny_backbone_overrides(backbone))
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
