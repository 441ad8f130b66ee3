# UperNet 160k ADE20K 512x512 with a LocalVMamba-T backbone, VMamba's segmentation recipe (AdamW lr 6e-5,
# wd 0.01, no decay on norms). LocalVMamba-T classification weights were never released (only -S): train them
# with tools/train.py and point `pretrained` at the checkpoint; a missing file fails loudly.
_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'pretrained/local_vmamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.LocalVMamba',
        arch='local_vmamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
