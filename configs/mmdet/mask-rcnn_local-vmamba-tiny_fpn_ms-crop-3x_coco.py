# Mask R-CNN 3x multi-scale with a LocalVMamba-T backbone (see the 1x config about the checkpoint).
_base_ = './mask-rcnn_vmamba-tiny_fpn_ms-crop-3x_coco.py'

pretrained = 'pretrained/local_vmamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.LocalVMamba',
        arch='local_vmamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
