"""scikit-learn's handwritten digits (1797 8x8 grey images, 10 classes) as a small RGB image set.

The data ship inside the scikit-learn wheel, so the default training job needs no download. Images are
upsampled (bilinear) to `img_size`, repeated to 3 channels and normalised; a fixed seeded permutation
splits them into train and validation (80/20 by default), the same on every machine and every rank.
"""
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ['DigitsDataset', 'digits_split', 'DIGITS_MEAN', 'DIGITS_STD']

# pixel statistics of the upsampled set (rounded); the images are mostly dark background
DIGITS_MEAN = (0.30, 0.30, 0.30)
DIGITS_STD = (0.40, 0.40, 0.40)
NUM_CLASSES = 10


def digits_split(split: str, val_fraction: float = 0.2, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(images in [0, 1] as (n, 8, 8) float32, labels (n,) int64) of one split."""
    if split not in ('train', 'val', 'validation', 'all'):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
    from .._extras import require
    # the data file is inside the sklearn package
    datasets = require('sklearn.datasets', 'data', 'the embedded digits set (tools/train.py with no data)')
    data = datasets.load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    if split == 'all':
        return images, labels
    order = np.random.RandomState(seed).permutation(len(labels))
    n_val = int(round(len(labels) * val_fraction))
    idx = order[n_val:] if split == 'train' else order[:n_val]
    return images[idx], labels[idx]


class DigitsDataset(Dataset):
    """The digits split as normalised (3, img_size, img_size) float tensors with int labels.

    Args:
        split: 'train', 'val' or 'all'.
        img_size: output side length (the 8x8 originals are upsampled).
        augment: random affine jitter (rotation, shift, scale) on training images; draws from torch's
            global RNG, so a seeded run (and DataLoader workers, which timm/torch seed from it) repeats.
        num_samples: keep only the first `num_samples` images of the split (quick runs, tests).
        val_fraction, seed: the fixed train/val split.
    """

    def __init__(
            self,
            split: str = 'train',
            img_size: int = 32,
            augment: bool = False,
            num_samples: Optional[int] = None,
            val_fraction: float = 0.2,
            seed: int = 0,
            mean: Tuple[float, ...] = DIGITS_MEAN,
            std: Tuple[float, ...] = DIGITS_STD,
    ):
        images, labels = digits_split(split, val_fraction, seed)
        if num_samples is not None:
            if num_samples <= 0:
                raise ValueError(f'num_samples must be positive, got {num_samples}')
            images, labels = images[:num_samples], labels[:num_samples]
        x = torch.from_numpy(images)[:, None]
        x = F.interpolate(x, size=(img_size, img_size), mode='bilinear', align_corners=False).clamp_(0, 1)
        x = (x.expand(-1, 3, -1, -1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        self.images = x.contiguous()
        self.targets = torch.from_numpy(labels)
        self.num_classes = NUM_CLASSES
        self.img_size = img_size
        self.transform = None
        if augment:
            from torchvision.transforms import v2
            # no flips: a mirrored digit is another (or no) digit
            self.transform = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
