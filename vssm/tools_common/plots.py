"""PNG figures for the tools (matplotlib with the Agg backend: no display needed)."""
import csv
from typing import Dict, List, Optional, Sequence

__all__ = ['read_csv', 'plot_training_curves', 'plot_xy_series']


def _pyplot():
    from .._extras import require
    matplotlib = require('matplotlib', 'plot', 'the PNG plots of the tools')
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, newline='') as f:
        return [row for row in csv.DictReader(f)]


def _floats(rows: List[Dict[str, str]], key: str) -> List[float]:
    return [float(r[key]) if r.get(key) not in (None, '') else float('nan') for r in rows]


def plot_training_curves(summary_csv: str, png_path: str, steps_csv: Optional[str] = None, title: str = '') -> str:
    """Loss (train per step and per epoch, eval per epoch) and top-1 / top-5 accuracy per epoch, side by side."""
    plt = _pyplot()
    rows = read_csv(summary_csv)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    if steps_csv:
        steps = read_csv(steps_csv)
        if steps:
            ax_loss.plot(_floats(steps, 'epoch_float'), _floats(steps, 'loss'), lw=0.6, alpha=0.4,
                         color='tab:blue', label='train (step)')
    if rows:
        epochs = [int(r['epoch']) + 1 for r in rows]
        if 'train_loss' in rows[0]:
            ax_loss.plot(epochs, _floats(rows, 'train_loss'), 'o-', color='tab:blue', label='train (epoch)')
        if 'eval_loss' in rows[0]:
            ax_loss.plot(epochs, _floats(rows, 'eval_loss'), 's-', color='tab:orange', label='eval')
        for key, style in (('eval_top1', 'o-'), ('eval_top5', 's--'), ('eval_ema_top1', '^-')):
            if key in rows[0]:
                ax_acc.plot(epochs, _floats(rows, key), style, label=key.replace('eval_', ''))
    ax_loss.set_xlabel('epoch')
    ax_loss.set_ylabel('loss')
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.set_xlabel('epoch')
    ax_acc.set_ylabel('accuracy (%)')
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def plot_xy_series(series: Dict[str, Sequence[Sequence[float]]], png_path: str, xlabel: str, ylabel: str,
                   title: str = '', logx: bool = False, logy: bool = False, size=(7, 5), dpi: int = 100,
                   annotate: bool = False) -> str:
    """One line per name: series[name] = (xs, ys)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, 'o-', label=name)
        if annotate and len(xs) == 1:
            ax.annotate(name, (xs[0], ys[0]), textcoords='offset points', xytext=(4, 4), fontsize=8)
    from matplotlib.ticker import FormatStrFormatter
    if logx:
        ax.set_xscale('log')
        ax.xaxis.set_major_formatter(FormatStrFormatter('%g'))
        ax.xaxis.set_minor_formatter(FormatStrFormatter('%g'))
    if logy:
        ax.set_yscale('log')
        ax.yaxis.set_major_formatter(FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(FormatStrFormatter('%g'))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
