# RetinaNet 1x with a LocalVMamba-T backbone (see the Mask R-CNN 1x config about the checkpoint).
_base_ = './retinanet_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'pretrained/local_vmamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.LocalVMamba',
        arch='local_vmamba_tiny',
        drop_path_rate=0.2,
        out_indices=(1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
