# Cascade Mask R-CNN 3x (36 epochs, multi-scale training with DETR-style random crops) with a MambaVision-T
# backbone, the downstream detector of the MambaVision paper: the shared Swin-T 3x recipe of the VMamba config
# (AdamW lr 1e-4, wd 0.05, no decay on norms) with mmdet's own Cascade Mask R-CNN heads in place of Mask R-CNN's
# (the paper's exact head variant and drop path were not verified; 0.2 is the classification default).
# The backbone starts from NVIDIA's 1K release (CheckpointSaver .pth.tar; weights CC-BY-NC-SA-4.0, non-commercial).
_base_ = './mask-rcnn_vmamba-tiny_fpn_ms-crop-3x_coco.py'
from mmengine.hub import get_config  # noqa: E402

cascade = get_config('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py').model

pretrained = 'https://huggingface.co/nvidia/MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar'
model = dict(
    type='CascadeRCNN',
    backbone=dict(
        _delete_=True,
        type='vssm.MambaVision',
        arch='mambavision_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,  # the stem's and conv stages' BatchNorm statistics from ImageNet, as mmdet's ResNet configs
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[80, 160, 320, 640]),
    roi_head=dict(_delete_=True, **cascade.roi_head),
    train_cfg=dict(rcnn=cascade.train_cfg.rcnn))
del get_config, cascade
