"""The workloads of docs/design/benchmarks.md, W1-W8, at full size or shrunk by ``scale``.

Full size is Wan2.1 480p: 1560 tokens per latent frame, 21 frames, bf16, B=1, H=12,
D=128. ``scale`` multiplies the tokens per frame (at least 1 token), keeping frames,
chunks, windows, sinks, heads and head dims, so a shrunk workload has the same mask
structure and the same kernel shapes, only shorter; it is how CPU smoke runs and the
pre-timing correctness check (``check_scale``) get small masks of the same structure.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

if __package__ in (None, ""):  # run as a script: make the package `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: F401  (makes jvp_flash_attn importable from a checkout)
from jvp_flash_attn import masks

TOKENS_PER_FRAME = 1560
FRAMES = 21
FRAMES_PER_CHUNK = 3
LONG_FRAMES = 63          # W5
WINDOW, SINK = 3, 1       # W5, in chunks


@dataclass(frozen=True)
class Recipe:
    """How a builder mask is made: the builder's name and arguments. ``build()`` gives our mask;
    a peer that takes a mask function (FlexAttention) writes its own from the same recipe, as
    its users would (bench/flex.py), instead of reading our segment tables."""

    builder: str                               # full, block_causal, teacher_forcing, kv_cache
    pattern: masks.FramePattern | None = None  # all but full
    window: int | None = None
    sink: int = 0
    query_chunk: int | None = None             # kv_cache
    size: tuple[int, int] | None = None        # full: (sq, sk)

    def build(self) -> masks.SegmentMask:
        if self.builder == "full":
            return masks.full(*self.size)
        if self.builder == "kv_cache":
            return masks.kv_cache(self.pattern, self.query_chunk, self.window, self.sink)
        if self.builder in ("block_causal", "teacher_forcing"):
            return getattr(masks, self.builder)(self.pattern, window=self.window, sink=self.sink)
        raise ValueError(f"unknown builder {self.builder!r}")


@dataclass(frozen=True)
class Workload:
    """(id, mask recipe, B, H, Dqk, Dv); ``build(tokens_per_frame)`` returns the recipe."""

    id: str
    description: str
    build: Callable[[int], Recipe]
    batch: int = 1
    heads: int = 12
    d_qk: int = 128
    d_v: int = 128
    dtype: torch.dtype = torch.bfloat16
    clean_half: bool = False  # teacher forcing: the first half (clean copy) has zero tangents

    def tokens_per_frame(self, scale: float = 1.0) -> int:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        return max(1, round(TOKENS_PER_FRAME * scale))

    def recipe(self, scale: float = 1.0) -> Recipe:
        return self.build(self.tokens_per_frame(scale))

    def mask(self, scale: float = 1.0) -> masks.SegmentMask:
        return self.recipe(scale).build()

    def zero_tangent_ranges(self, mask: masks.SegmentMask):
        """(q_ranges, k_ranges) whose tangents are zero in a distillation step, or None.
        For teacher forcing that is the clean half, queries and keys (docs/design/masks.md)."""
        if not self.clean_half:
            return None
        return ((0, mask.sq // 2),), ((0, mask.sk // 2),)


def _pattern(tpf: int, frames: int = FRAMES, frames_per_chunk: int = 1) -> masks.FramePattern:
    return masks.FramePattern(tokens_per_frame=tpf, num_frames=frames, frames_per_chunk=frames_per_chunk)


def _w7(tpf: int) -> Recipe:
    p = _pattern(tpf, frames_per_chunk=FRAMES_PER_CHUNK)
    return Recipe("kv_cache", p, query_chunk=p.num_chunks - 1)


WORKLOADS: dict[str, Workload] = {w.id: w for w in (
    Workload("W1", "teacher_forcing, frame-wise",
             lambda t: Recipe("teacher_forcing", _pattern(t)), clean_half=True),
    Workload("W2", "teacher_forcing, chunk-wise (3 frames)",
             lambda t: Recipe("teacher_forcing", _pattern(t, frames_per_chunk=FRAMES_PER_CHUNK)),
             clean_half=True),
    Workload("W3", "block_causal, frame-wise",
             lambda t: Recipe("block_causal", _pattern(t))),
    Workload("W4", "block_causal, chunk-wise (3 frames)",
             lambda t: Recipe("block_causal", _pattern(t, frames_per_chunk=FRAMES_PER_CHUNK))),
    Workload("W5", "block_causal chunk-wise, window 3 + sink 1, 63 frames",
             lambda t: Recipe("block_causal", _pattern(t, LONG_FRAMES, FRAMES_PER_CHUNK), window=WINDOW, sink=SINK)),
    Workload("W6", "full (bidirectional teacher)",
             lambda t: Recipe("full", size=(t * FRAMES, t * FRAMES))),
    Workload("W7", "kv_cache, last chunk of W4", _w7),
    Workload("W8", "W3 with H=16, D=64",
             lambda t: Recipe("block_causal", _pattern(t)), heads=16, d_qk=64, d_v=64),
)}


def select(ids: str | None) -> list[Workload]:
    """'W1,W3' -> those workloads (all when None or 'all'); unknown ids raise ValueError."""
    if ids is None or ids.strip().lower() == "all":
        return list(WORKLOADS.values())
    out = []
    for i in (s.strip().upper() for s in ids.split(",") if s.strip()):
        if i not in WORKLOADS:
            raise ValueError(f"--workloads: unknown id {i!r}; known: {', '.join(WORKLOADS)}")
        out.append(WORKLOADS[i])
    return out


def describe(scale: float = 1.0) -> str:
    lines = [f"{'id':<3} {'Sq':>7} {'Sk':>7} {'B':>2} {'H':>3} {'D':>4} {'density':>8}  mask"]
    for w in WORKLOADS.values():
        m = w.mask(scale)
        lines.append(f"{w.id:<3} {m.sq:>7} {m.sk:>7} {w.batch:>2} {w.heads:>3} {w.d_qk:>4} "
                     f"{m.num_pairs / (m.sq * m.sk):>8.3f}  {w.description}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print the benchmark workloads W1-W8.")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of 1560 tokens per frame")
    print(describe(ap.parse_args().scale))
