# Mask R-CNN 1x with a Vim-Ti backbone through a ViTDet-style simple feature pyramid (last block, strides
# 4..32, channels 48/96/192/192) into mmdet's FPN; VMamba's detection recipe (AdamW lr 1e-4, wd 0.05, no decay
# on norms, position embedding or class token). Vim published dense results with other recipes (Cascade
# Mask R-CNN in detectron2); this config is not a reproduction of those numbers.
_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'https://huggingface.co/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.Vim',
        arch='vim_tiny',
        img_size=(800, 1216),  # position table laid out for mmdet's 1333x800 resize (padded to 32)
        out_indices=(-1,),
        scales=(4, 2, 1, 0.5),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 192]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.),
                                                     'cls_token': dict(decay_mult=0.)}))
