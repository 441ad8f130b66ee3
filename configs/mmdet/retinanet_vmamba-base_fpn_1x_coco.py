# RetinaNet 1x with VMamba-B (s2l15).
_base_ = './retinanet_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    backbone=dict(
        arch='vmamba_base_s2l15',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024]))
