"""The timm model API shared by the hierarchical, channel-last families (VMamba, EfficientVMamba, LocalVMamba).

A subclass provides ``stem`` (NCHW image -> a map in ``stage_format``), ``stages`` (nn.Sequential of stages with a
``grad_checkpointing`` flag), ``norm`` (final norm over channels), ``head`` (timm ClassifierHead),
``feature_info``, ``num_features``, ``in_chans`` and ``min_input_size``. ``stage_format`` is the layout the stages
work in: 'NHWC' (the channel-last families) or 'NCHW' (MambaVision).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models._features import feature_take_indices

from ._checks import check_input

__all__ = ['HierarchicalModelMixin']


class HierarchicalModelMixin:
    stage_format: str = 'NHWC'

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False):
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        # the head reads num_features channels (fewer after pruning); set here rather than through reset()'s
        # in_features, which timm < 1.0.31 lacks (reset_other is a no-op for a ClassifierHead)
        self.head.in_features = self.num_features
        self.head.reset(num_classes, global_pool, **dd)
        self.head.train(self.training)  # new modules start in training mode: keep the model's mode
        self.head_hidden_size = self.num_features

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs at `indices` (NCHW by default; NHWC on request); the final norm only on the last."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        check_input(x, self.in_chans, self.min_input_size, type(self).__name__)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                feat = self.norm(x) if norm and feat_idx == last_idx else x
                if output_fmt != self.stage_format:
                    feat = feat.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else feat.permute(0, 2, 3, 1)
                intermediates.append(feat)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.min_input_size, type(self).__name__)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
