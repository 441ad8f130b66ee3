"""Shared blocks built on the scan engine."""
from .ss2d import SS2D, Permute, init_dt_bias, init_ssm_params, project_directions
from .ssd2d import SSD2D
from .grouped_ss2d import GroupedSS2D, GroupedLayerNorm
from .blocks import VSSBlock
from .gates import ChannelGate
from .mamba1d import MultiMamba, DirectionSSM
from .state_fusion import StateFusion, fold_dilated_kernels
