# RetinaNet 1x with a MobileMamba-B1 backbone (the paper's RetinaNet row), VMamba's detection optimiser (AdamW
# lr 1e-4, wd 0.05, no decay on norms). MobileMamba's maps start at stride 16: the FPN takes strides 16, 32, 64
# and adds two levels (128, 256); the anchors follow those strides. The official detector adds a stride-8 level
# with a transposed conv in its own neck (EfficientViTFPN, not in mmdet) and trains with lr 2e-4: this config
# is not the paper's recipe. The official weights are on Google Drive only: download MobileMamba_B1's
# net_E.pth (or the trainer checkpoint) to the path below.
_base_ = './retinanet_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'pretrained/mobilemamba_b1_net_E.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.MobileMamba',
        arch='mobilemamba_b',
        drop_path_rate=0.03,
        out_indices=(0, 1, 2),
        norm_eval=True,  # BatchNorm everywhere: keep the ImageNet statistics, as the official detector
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[200, 376, 448]),
    bbox_head=dict(anchor_generator=dict(strides=[16, 32, 64, 128, 256])))
