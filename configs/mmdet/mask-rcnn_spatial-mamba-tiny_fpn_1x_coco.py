# Mask R-CNN 1x with a Spatial-Mamba-T backbone: the official recipe is Swin-T's Mask R-CNN 1x (AdamW lr 1e-4,
# wd 0.05), the one the VMamba base config uses; drop path 0.2 as the official config. Published: 47.6 box /
# 42.9 mask AP, 46M params. The official classification weights are Google Drive files (no address a loader can
# fetch): download spatialmamba_tiny's checkpoint and point `pretrained` at it; a missing file fails loudly.
_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'pretrained/spatial_mamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.SpatialMamba',
        arch='spatial_mamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
