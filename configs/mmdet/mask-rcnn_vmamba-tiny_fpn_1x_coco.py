# Mask R-CNN 1x (12 epochs, 8 GPUs x 2 images) with a VMamba-T (s1l8) backbone, as VMamba published it:
# mmdet's Swin-T recipe (AdamW lr 1e-4, wd 0.05, no decay on norms) with the backbone swapped.
# Published: 47.3 box AP / 42.7 mask AP.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
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

# no weight decay on any normalisation layer (by type), on top of the base's name-based 'norm' key
optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.0))
