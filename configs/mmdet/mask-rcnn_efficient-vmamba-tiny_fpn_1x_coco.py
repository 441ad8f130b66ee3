# Mask R-CNN 1x with an EfficientVMamba-T backbone, VMamba's detection recipe (AdamW lr 1e-4, wd 0.05, no decay
# on norms). The official EfficientVMamba classification weights have no public download address: train one
# with tools/train.py (or fetch the official file) and point `pretrained` at it; a missing file fails loudly.
_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'pretrained/efficient_vmamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.EfficientVMamba',
        arch='efficient_vmamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,  # BatchNorm statistics from ImageNet, as mmdet's ResNet configs
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 384]))
