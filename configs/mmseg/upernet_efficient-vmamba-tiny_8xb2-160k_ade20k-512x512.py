# UperNet 160k ADE20K 512x512 with an EfficientVMamba-T backbone, VMamba's segmentation recipe (AdamW lr 6e-5,
# wd 0.01, no decay on norms). The official EfficientVMamba classification weights have no public download
# address: train one with tools/train.py (or fetch the official file) and point `pretrained` at it.
_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'pretrained/efficient_vmamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.EfficientVMamba',
        arch='efficient_vmamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,  # BatchNorm statistics from ImageNet (2 images per GPU)
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[48, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192))
