# UperNet 160k ADE20K 512x512 with a Vim-Ti backbone: blocks 5, 11, 17, 23 (as Vim's own UperNet) each
# resampled to one pyramid level (strides 4, 8, 16, 32; channels 48/96/192/192), position table at 512x512.
# Recipe: VMamba's segmentation one (AdamW lr 6e-5, wd 0.01, no decay on norms / position embedding / class
# token), not Vim's published 60k layer-decay schedule.
_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'https://huggingface.co/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.Vim',
        arch='vim_tiny',
        img_size=512,
        out_indices=(5, 11, 17, 23),
        scales=(4, 2, 1, 0.5),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[48, 96, 192, 192]),
    auxiliary_head=dict(in_channels=192))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.),
                                                     'cls_token': dict(decay_mult=0.)}))
