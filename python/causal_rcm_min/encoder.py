"""The Fréchet feature encoder: a small 3D CNN trained here on the sprite world.

With no pretrained video network to download, features come from a network trained
to read the scene: each colour's shape and its whole trajectory. Its pooled features
therefore move when generated clips get shapes, colours or motion wrong. Trained
once per data config and cached with that config.
"""
from __future__ import annotations

import os
from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .config import DataConfig, EvalConfig
from .data import NUM_SLOT_VALUES, NUM_SLOTS, sample_clips, to_model

FEATURE_DIM = 128


class ClipEncoder(nn.Module):
    def __init__(self, data: DataConfig, width: int):
        super().__init__()
        self.data_cfg = data
        w = width
        self.net = nn.Sequential(
            nn.Conv3d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv3d(w, 2 * w, 3, stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(2 * w, 4 * w, 3, stride=(2, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(4 * w, 4 * w, 3, stride=(2, 2, 2), padding=1), nn.GELU(),
        )
        self.feat = nn.Linear(4 * w, FEATURE_DIM)
        self.slot_head = nn.Linear(FEATURE_DIM, NUM_SLOTS * NUM_SLOT_VALUES)
        self.track_head = nn.Linear(FEATURE_DIM, NUM_SLOTS * data.num_frames * 2)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, F, 3, H, W) in [0, 1] -> (B, FEATURE_DIM)."""
        h = self.net(to_model(frames).permute(0, 2, 1, 3, 4))
        return self.feat(h.mean((2, 3, 4)))

    def forward(self, frames):
        f = self.features(frames)
        B = f.shape[0]
        return (self.slot_head(F.gelu(f)).view(B, NUM_SLOTS, NUM_SLOT_VALUES),
                self.track_head(F.gelu(f)).view(B, NUM_SLOTS, self.data_cfg.num_frames, 2))


def _targets(clips, data: DataConfig):
    """Per-colour tracks (B, 6, F, 2) normalised to [-1, 1], and which colours exist."""
    B = clips.cond.shape[0]
    tracks = torch.zeros(B, NUM_SLOTS, data.num_frames, 2, device=clips.cond.device)
    for n in range(clips.present.shape[1]):
        rows = clips.present[:, n].nonzero()[:, 0]
        tracks[rows, clips.colours[rows, n]] = clips.positions[rows, n] / data.image_size * 2 - 1
    return tracks, clips.cond > 0


def train_encoder(data: DataConfig, cfg: EvalConfig, device, seed: int = 777, log=None) -> ClipEncoder:
    torch.manual_seed(seed)
    enc = ClipEncoder(data, cfg.encoder_width).to(device)
    opt = torch.optim.AdamW(enc.parameters(), lr=cfg.encoder_lr)
    for step in tqdm(range(cfg.encoder_steps), desc="encoder", disable=log is None, leave=False):
        clips = sample_clips(cfg.encoder_batch, data, seed=10_000_000 + seed * 100_000 + step, device=device)
        logits, tracks = enc(clips.frames)
        target, exists = _targets(clips, data)
        loss = F.cross_entropy(logits.flatten(0, 1), clips.cond.flatten()) + \
            ((tracks - target) ** 2 * exists[..., None, None]).mean() * 10
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and (step % 100 == 0 or step == cfg.encoder_steps - 1):
            log.log(step, encoder_loss=loss.item())
    return enc.eval()


def load_or_train(path: str, data: DataConfig, cfg: EvalConfig, device, log=None) -> ClipEncoder:
    """The cached encoder at ``path`` if it was trained for this data config, else train and cache it.

    The caller's RNG streams are left as they were, so a training stage that scores itself
    draws the same numbers whether or not the encoder was cached.
    """
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        return _load_or_train(path, data, cfg, device, log)


def _load_or_train(path: str, data: DataConfig, cfg: EvalConfig, device, log) -> ClipEncoder:
    if os.path.exists(path):
        state = torch.load(path, map_location=device, weights_only=False)
        if state["data"] == asdict(data) and state["width"] == cfg.encoder_width:
            enc = ClipEncoder(data, cfg.encoder_width).to(device)
            enc.load_state_dict(state["model"])
            return enc.eval()
        if log is not None:
            log.info(f"encoder cache {path} was trained for another data config; retraining")
    enc = train_encoder(data, cfg, device, log=log)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"data": asdict(data), "width": cfg.encoder_width, "model": enc.state_dict()}, path)
    return enc


@torch.no_grad()
def clip_features(enc: ClipEncoder, frames: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([enc.features(frames[i:i + batch]) for i in range(0, frames.shape[0], batch)])
