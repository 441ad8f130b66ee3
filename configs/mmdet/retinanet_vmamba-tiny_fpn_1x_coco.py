# RetinaNet 1x with a VMamba-T (s1l8) backbone (stages 1-3 into the FPN, as mmdet's Swin RetinaNet), trained
# with the VMamba detection optimiser (AdamW lr 1e-4, wd 0.05, no decay on norms) instead of SGD.
_base_ = 'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['vssm.mm'], allow_failed_imports=False)

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.VMamba',
        arch='vmamba_tiny_s1l8',
        drop_path_rate=0.2,
        out_indices=(1, 2, 3),  # only what the FPN uses, so every parameter gets a gradient
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0))
