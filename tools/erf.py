#!/usr/bin/env python3
"""Effective receptive field (ERF) maps, the analysis the VMamba paper shows, as a PNG for any model(s).

    # one model, random init, random images (quick look)
    python tools/erf.py --model vmamba_tiny_s1l8 --img-size 512 --num-images 8 --output erf.png
    # trained weights (official release or ours), real images from a folder, the paper's 1024x1024
    python tools/erf.py --model vmamba_tiny_s1l8 convnext_tiny --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth \
        none --data-dir /data/imagenet/val --num-images 50 --output erf_tiny.png

Method (RepLKNet's, used by VMamba): for each image, the sum over channels of the (ReLU'd) feature at the centre
pixel of the chosen stage (default: the last) is back-propagated to the input; the ReLU'd input gradient, summed
over colour channels, is averaged over the images. The map is shown log-scaled: log10(1 + 1000 * g / max g) / 3.
Also reported: the high-contribution area ratio at t = 20 / 30 / 50 / 99 % (the smallest centred square that
holds t of the total contribution, as a fraction of the image area).
"""
import argparse
import csv
import glob
import math
import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import timm  # noqa: E402
import vssm  # noqa: F401,E402
from timm.utils import ParseKwargs  # noqa: E402

IMG_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.JPEG')
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='effective receptive field maps (PNG) for timm / vssm models')
    p.add_argument('--model', '-m', nargs='+', required=True, help='one or more model names (one panel each)')
    p.add_argument('--checkpoint', nargs='*', default=[],
                   help="weights per model (official or ours; 'none' = random init); one path applies to all")
    p.add_argument('--pretrained', action='store_true', default=False, help="timm's pretrained weights (download)")
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--data-dir', default=None, help='folder of images (searched recursively); default: random')
    p.add_argument('--num-images', type=int, default=50)
    p.add_argument('-b', '--batch-size', type=int, default=1)
    p.add_argument('--img-size', type=int, default=1024, help='input side (the paper uses 1024)')
    p.add_argument('--stage', type=int, default=-1, help='feature stage index for forward_intermediates')
    p.add_argument('--device', default=None)
    p.add_argument('--num-threads', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--output', default='erf.png', help='PNG path; raw maps go beside it as .npy, metrics as .csv')
    p.add_argument('--dpi', type=int, default=100)
    p.add_argument('--panel-size', type=float, default=4.0, help='inches per panel')
    return p


# ----------------------------------------------------------------------------------------------- inputs

def image_batches(model, args, device) -> Iterator[torch.Tensor]:
    """Normalised (B, 3, S, S) batches: images from --data-dir resized and centre-cropped, or Gaussian noise."""
    n, b = args.num_images, args.batch_size
    if args.data_dir is None:
        g = torch.Generator().manual_seed(args.seed)
        for start in range(0, n, b):
            yield torch.randn(min(b, n - start), 3, args.img_size, args.img_size, generator=g).to(device)
        return
    from PIL import Image
    from timm.data import resolve_data_config
    from torchvision import transforms
    files = sorted(f for f in glob.glob(os.path.join(args.data_dir, '**', '*'), recursive=True) if f.endswith(IMG_EXTS))
    if not files:
        raise FileNotFoundError(f'no images ({", ".join(IMG_EXTS)}) under {args.data_dir}')
    cfg = resolve_data_config({}, model=model)
    tf = transforms.Compose([transforms.Resize(args.img_size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(args.img_size), transforms.ToTensor(),
                             transforms.Normalize(cfg['mean'], cfg['std'])])
    files = files[:n]
    for start in range(0, len(files), b):
        yield torch.stack([tf(Image.open(f).convert('RGB')) for f in files[start:start + b]]).to(device)


# ------------------------------------------------------------------------------------------------- ERF

def stage_features(model, x: torch.Tensor, stage: int) -> torch.Tensor:
    """NCHW feature map of one stage (forward_intermediates), or the final features when there is none."""
    if hasattr(model, 'forward_intermediates'):
        n = len(getattr(model, 'feature_info', [])) or None
        idx = stage % n if n else stage
        feats = model.forward_intermediates(x, indices=[idx], intermediates_only=True, output_fmt='NCHW')
        return feats[0]
    f = model.forward_features(x)
    if f.dim() == 4 and getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        f = f.permute(0, 3, 1, 2)
    if f.dim() != 4:
        raise ValueError(f'{type(model).__name__} gives {tuple(f.shape)} features and no forward_intermediates; '
                         f'an ERF needs a spatial (NCHW) map')
    return f


def erf_map(model, batches: Iterator[torch.Tensor], stage: int = -1) -> (np.ndarray, int):
    """Mean over images of the ReLU'd input gradient of the centre feature, summed over colour channels."""
    total, count = None, 0
    for x in batches:
        x = x.detach().requires_grad_(True)
        f = stage_features(model, x, stage)
        centre = torch.relu(f[:, :, f.shape[2] // 2, f.shape[3] // 2]).sum()
        if centre.item() == 0:  # all centre features ReLU'd away: fall back to their magnitude
            centre = f[:, :, f.shape[2] // 2, f.shape[3] // 2].abs().sum()
        (grad,) = torch.autograd.grad(centre, x)
        g = torch.relu(grad).sum(dim=(0, 1)).double().cpu()
        total = g if total is None else total + g
        count += x.shape[0]
    if total is None:
        raise ValueError('no images to compute the ERF on')
    return (total / count).numpy(), count


def area_ratios(g: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, float]:
    """Smallest centred square holding t of the total contribution, as a fraction of the image area."""
    h, w = g.shape
    total = g.sum()
    out = {}
    cy, cx = h // 2, w // 2
    for t in thresholds:
        ratio = 1.0
        if total > 0:
            for r in range(0, max(h, w)):
                win = g[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
                if win.sum() >= t * total:
                    ratio = win.size / g.size
                    break
        out[f'area_ratio_t{int(t * 100)}'] = ratio
    return out


def log_scaled(g: np.ndarray) -> np.ndarray:
    m = g / g.max() if g.max() > 0 else g
    return np.log10(1 + 1000 * m) / 3


def render(maps: Dict[str, np.ndarray], path: str, panel: float = 4.0, dpi: int = 100, suptitle: str = '') -> str:
    from vssm._extras import require
    matplotlib = require('matplotlib', 'plot', 'tools/erf.py (PNG maps)')
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(panel * n, panel), dpi=dpi, squeeze=False)
    for ax, (title, g) in zip(axes[0], maps.items()):
        im = ax.imshow(log_scaled(g), cmap='RdYlGn', vmin=0, vmax=1, interpolation='nearest')
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ main

def load_model(name: str, checkpoint: Optional[str], args, device):
    model = timm.create_model(name, pretrained=args.pretrained, **args.model_kwargs)
    note = 'pretrained' if args.pretrained else 'random init'
    if checkpoint and checkpoint.lower() != 'none':
        from vssm.tools_common.checkpoints import load_weights
        load_weights(model, checkpoint)
        note = os.path.basename(checkpoint)
    return model.to(device).eval(), note


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = build_parser().parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    ckpts = args.checkpoint or [None]
    if len(ckpts) == 1:
        ckpts = ckpts * len(args.model)
    if len(ckpts) != len(args.model):
        raise SystemExit(f'--checkpoint: give one path (for all models) or one per model ({len(args.model)}), '
                         f'got {len(ckpts)}')
    maps, rows = {}, []
    stem = os.path.splitext(args.output)[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    for name, ckpt in zip(args.model, ckpts):
        torch.manual_seed(args.seed)
        model, note = load_model(name, ckpt, args, device)
        g, count = erf_map(model, image_batches(model, args, device), args.stage)
        metrics = area_ratios(g)
        src = 'images' if args.data_dir else 'random inputs'
        maps[f'{name} ({note})\n{count} {src}, {args.img_size}px, stage {args.stage}'] = g
        np.save(f'{stem}_{name}.npy', g)
        rows.append(dict(model=name, weights=note, images=count, img_size=args.img_size, stage=args.stage, **metrics))
        print(f'{name}: ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
    render(maps, args.output, panel=args.panel_size, dpi=args.dpi)
    with open(f'{stem}.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f'wrote {args.output}')
    return rows


if __name__ == '__main__':
    main()
