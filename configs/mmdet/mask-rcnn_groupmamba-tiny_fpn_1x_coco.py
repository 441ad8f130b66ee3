# Mask R-CNN 1x with a GroupMamba-T backbone, VMamba's detection recipe (AdamW lr 1e-4, wd 0.05, no decay on
# norms): the official repository ships no detection code, so the recipe and drop path (VMamba-T's 0.2) are not
# GroupMamba's own. The backbone starts from the official HF release (EMA weights, bare state dict).
_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'https://huggingface.co/Abdelrahman-shaker/GroupMamba-Tiny/resolve/main/groupmamba_tiny_ema.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.GroupMamba',
        arch='groupmamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,  # the stem's BatchNorm statistics from ImageNet, as mmdet's ResNet configs
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 348, 448]))
