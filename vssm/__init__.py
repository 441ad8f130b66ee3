"""vssm: vision state-space backbones on timm conventions.

Importing vssm registers every model with timm (``timm.create_model('vmamba_tiny_s1l8')``).
It imports neither OpenMMLab nor Triton; ``vssm.mm`` holds the mmdet/mmseg adapters.
"""
from . import ops, layers, models
from .models import *  # noqa: F401,F403

__version__ = '0.1.0'
