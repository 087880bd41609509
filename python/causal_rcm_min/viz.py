"""Pictures: GIFs and PNG filmstrips of clips, training curves, metrics by frame index."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()


def _grid(clips: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """(N, F, 3, H, W) -> (F, 3, H', W'): the N clips side by side in a near-square grid."""
    N, F, C, H, W = clips.shape
    cols = int(np.ceil(np.sqrt(N)))
    rows = int(np.ceil(N / cols))
    out = torch.ones(F, C, rows * (H + pad) + pad, cols * (W + pad) + pad)
    for n in range(N):
        r, c = divmod(n, cols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        out[:, :, y:y + H, x:x + W] = clips[n].float().cpu()
    return out


def save_gif(clips: torch.Tensor, path: str, scale: int = 4, fps: int = 6):
    """Animated GIF of clips (N, F, 3, H, W) in [0, 1], laid out in a grid."""
    if clips.dim() != 5:
        raise ValueError(f"clips must be (N, F, 3, H, W), got {tuple(clips.shape)}")
    frames = _to_uint8(_grid(clips)).transpose(0, 2, 3, 1)
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def save_filmstrip(clips: torch.Tensor, path: str, scale: int = 4, pad: int = 1):
    """PNG with one row per clip and one column per frame."""
    if clips.dim() != 5:
        raise ValueError(f"clips must be (N, F, 3, H, W), got {tuple(clips.shape)}")
    N, F, C, H, W = clips.shape
    out = torch.ones(C, N * (H + pad) + pad, F * (W + pad) + pad)
    for n in range(N):
        for f in range(F):
            y, x = pad + n * (H + pad), pad + f * (W + pad)
            out[:, y:y + H, x:x + W] = clips[n, f].float().cpu()
    img = Image.fromarray(_to_uint8(out).transpose(1, 2, 0))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def plot_curves(history: list[dict], path: str, keys=("loss",)):
    """Training curves from logged records (each with "step" and the keys)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in history if key in r]
        if pts:
            ax.plot(*zip(*pts))
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_yscale("log" if key == "loss" and pts and min(p[1] for p in pts) > 0 else "linear")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_by_frame(series: dict[str, dict[str, list[float]]], path: str):
    """One panel per metric, one line per source (e.g. real vs generated), x = frame index."""
    metrics = sorted({m for s in series.values() for m in s})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, s in series.items():
            if metric in s:
                ax.plot(range(len(s[metric])), s[metric], marker="o", ms=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
