# Mask R-CNN 1x with VMamba-S (s2l15); drop path as the official config.
_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(
        arch='vmamba_small_s2l15',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
