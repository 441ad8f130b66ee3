# UperNet 160k ADE20K 512x512 with a LocalVim-T backbone: blocks 4, 9, 14, 19 each resampled to one pyramid
# level (strides 4, 8, 16, 32; channels 48/96/192/192), position table at 512x512. VMamba's segmentation
# recipe (AdamW lr 6e-5, wd 0.01, no decay on norms / position embedding).
_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_tiny.ckpt'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.LocalVim',
        arch='local_vim_tiny',
        img_size=512,
        out_indices=(4, 9, 14, 19),
        scales=(4, 2, 1, 0.5),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[48, 96, 192, 192]),
    auxiliary_head=dict(in_channels=192))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.)}))
