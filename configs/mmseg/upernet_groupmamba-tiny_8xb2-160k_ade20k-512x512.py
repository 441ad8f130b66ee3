# UperNet 160k ADE20K 512x512 with a GroupMamba-T backbone, VMamba's segmentation recipe (AdamW lr 6e-5, wd 0.01,
# no decay on norms): the official repository ships no segmentation code, so the recipe and drop path
# (VMamba-T's 0.2) are not GroupMamba's own. The backbone starts from the official HF release (EMA weights).
_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'https://huggingface.co/Abdelrahman-shaker/GroupMamba-Tiny/resolve/main/groupmamba_tiny_ema.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.GroupMamba',
        arch='groupmamba_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,  # the stem's BatchNorm statistics from ImageNet (2 images per GPU)
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 348, 448]),
    auxiliary_head=dict(in_channels=348))
