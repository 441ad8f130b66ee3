# Mask R-CNN 3x (36 epochs) with multi-scale training and DETR-style random crops, VMamba-T (s1l8) backbone:
# mmdet's Swin-T 3x recipe (AdamW lr 1e-4, wd 0.05, no decay on norms). Published: 48.8 box / 43.7 mask AP.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['vssm.mm'], allow_failed_imports=False)

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.VMamba',
        arch='vmamba_tiny_s1l8',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.0))
