"""The scan layers of a real model: every plan_selective_scan call of one forward, recorded, not hand-copied.

    layers = model_scan_layers('vmamba_tiny_s1l8', img_size=224)
    for layer in layers: print(layer.label, layer.count, layer.shape)

A forward at batch 1 on the ``meta`` device (shapes only, no compute) records each call's ScanShape (vssm/ops/cost.py); identical calls are merged
with a count (the per-image totals), and ``at_batch`` gives the shape at another batch size.
"""
import dataclasses
from dataclasses import dataclass
from typing import List, Tuple, Union

import torch

from ..ops.cost import ScanShape
from ..ops.plans import describe_index
from ..ops.scan import record_scan_shapes

__all__ = ['ScanLayer', 'model_scan_layers']


@dataclass(frozen=True)
class ScanLayer:
    model: str
    label: str  # 'layer <i>' in call order, with the plan's map size
    shape: ScanShape  # at batch 1
    count: int  # calls of this shape per forward
    directions: Tuple[str, ...]  # the plan's direction names (empty if the index was not made by build_index)

    def at_batch(self, batch: int) -> ScanShape:
        return dataclasses.replace(self.shape, batch=batch)


def model_scan_layers(model: Union[str, torch.nn.Module], img_size: Union[int, Tuple[int, int]] = 224,
                      in_chans: int = 3) -> List[ScanLayer]:
    """Distinct scan calls of one eval forward at batch 1 (in call order), with their counts."""
    import timm
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = timm.create_model(model, pretrained=False, num_classes=0, device='meta')
    device = next(model.parameters()).device
    H, W = (img_size, img_size) if isinstance(img_size, int) else img_size
    model.eval()
    with torch.no_grad(), record_scan_shapes() as calls:
        model(torch.zeros(1, in_chans, H, W, device=device))
    layers: List[ScanLayer] = []
    for shape in calls:
        described = describe_index(shape.index_map) if shape.index_map is not None else None
        directions = described[0] if described else ()
        hw = (described[1], described[2]) if described else (1, shape.length)
        shape = dataclasses.replace(shape, plan=directions, hw=hw, index_map=None)
        for i, seen in enumerate(layers):
            if seen.shape == shape:
                layers[i] = dataclasses.replace(seen, count=seen.count + 1)
                break
        else:
            label = f'layer {len(layers)} {hw[0]}x{hw[1]}'
            layers.append(ScanLayer(name, label, shape, 1, directions))
    return layers
