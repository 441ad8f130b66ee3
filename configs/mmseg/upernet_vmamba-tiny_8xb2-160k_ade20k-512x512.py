# UperNet 160k iterations at 512x512 on ADE20K (8 GPUs x 2 images) with a VMamba-T (s1l8) backbone, as VMamba
# published it: mmseg's Swin-T recipe (AdamW lr 6e-5, wd 0.01, no decay on norms, poly LR after 1500 warmup
# iterations) with the backbone swapped. Published: 47.9 (SS) / 48.8 (MS) mIoU.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['vssm.mm'], allow_failed_imports=False)

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.VMamba',
        arch='vmamba_tiny_s1l8',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.0))
