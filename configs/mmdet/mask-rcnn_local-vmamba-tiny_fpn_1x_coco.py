# Mask R-CNN 1x with a LocalVMamba-T backbone, VMamba's detection recipe (AdamW lr 1e-4, wd 0.05, no decay on
# norms). LocalVMamba-T classification weights were never released (only -S): train them with tools/train.py
# and point `pretrained` at the checkpoint; a missing file fails loudly.
_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

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
