# UperNet 160k ADE20K 512x512 with a Spatial-Mamba-T backbone: the official recipe is Swin-T's UperNet 160k
# (AdamW lr 6e-5, wd 0.01), the one the VMamba base config uses; drop path 0.2 as the official config. Published:
# 48.6 / 49.4 mIoU (SS / MS), 57M params. The official classification weights are Google Drive files: download
# spatialmamba_tiny's checkpoint and point `pretrained` at it; a missing file fails loudly.
_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'pretrained/spatial_mamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.SpatialMamba',
        arch='spatial_mamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
