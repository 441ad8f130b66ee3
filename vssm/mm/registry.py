"""The `vssm` registry scope: configs name our backbones `type='vssm.VMamba'` from mmdet or mmseg.

A child of mmengine's root MODELS registry, so mmdet's and mmseg's registries (also children of that root)
find it by its scope prefix; one registration serves both libraries.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='vssm')
