# UperNet 160k ADE20K 512x512 with a MambaVision-T backbone: the shared Swin-T recipe of the VMamba config (AdamW
# lr 6e-5, wd 0.01, no decay on norms). Published (MambaVision README): 46.0 mIoU. Drop path 0.2 is the
# classification default (the official config's value was not verified). The backbone starts from NVIDIA's 1K
# release (CheckpointSaver .pth.tar; weights CC-BY-NC-SA-4.0, non-commercial).
_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'https://huggingface.co/nvidia/MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vssm.MambaVision',
        arch='mambavision_tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,  # the stem's and conv stages' BatchNorm statistics from ImageNet (2 images per GPU)
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
