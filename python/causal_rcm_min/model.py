"""A small causal video DiT whose attention is ``jfa.attention`` under ``jfa.masks``.

Each frame is cut into patches (4x4 -> 64 tokens at 32x32); tokens carry 3D rotary
positions over (frame, row, column) with absolute frame indices, so a chunk computed
alone in a streaming step sees exactly the positions it had in the full sequence.
Every block is modulated per frame (adaLN-Zero) from that frame's timestep, the scene
condition and that frame's action. One module serves all the attention layouts:

- ``mode="teacher_forcing"``: [clean | noisy] packed, the clean copy at t = 0, both copies
  with identical positions, under ``jfa.masks.teacher_forcing``;
- ``mode="block_causal"``: per-chunk timesteps (diffusion forcing);
- ``mode="full"``: the bidirectional teacher;
- ``forward_chunk``: one chunk against a :class:`KVCache` (rolling window and sink).

Everything is plain differentiable torch plus ``jfa.attention``, so ``torch.func.jvp`` of
the whole model runs the attention op's fused JVP.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import jvp_flash_attn as jfa

from . import pointwise
from .config import DataConfig, ModelConfig
from .data import ACTIONS, NUM_SLOT_VALUES, NUM_SLOTS
from .pointwise import Pointwise

MODES = ("teacher_forcing", "block_causal", "full")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled to 0..1000 so low frequencies still move)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = 1000.0 * t[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], -1)


class RMSNorm(nn.Module):
    """Holds the weight; the norm itself is ``pointwise.rms_norm`` (fused with the rotary)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Rope3D:
    """Rotary angles for (frame, row, column): the head dim is split into three even parts."""

    def __init__(self, head_dim: int, grid: int):
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head dim must be even and >= 6 for 3D RoPE, got {head_dim}")
        space = 2 * (head_dim // 6)
        self.parts = (head_dim - 2 * space, space, space)
        self.grid = grid

    @staticmethod
    def _freqs(n: int, theta: float) -> torch.Tensor:
        return theta ** (-torch.arange(0, n, 2, dtype=torch.float64) / n)

    def angles(self, frames: torch.Tensor) -> torch.Tensor:
        """(len(frames) * grid^2, head_dim / 2) angles for the given absolute frame indices."""
        g = self.grid
        f = frames.to(torch.float64).repeat_interleave(g * g)
        r = torch.arange(g, dtype=torch.float64).repeat_interleave(g).repeat(len(frames))
        c = torch.arange(g, dtype=torch.float64).repeat(g * len(frames))
        dt, dh, dw = self.parts
        return torch.cat([f[:, None] * self._freqs(dt, 10000.0), r[:, None] * self._freqs(dh, 100.0),
                          c[:, None] * self._freqs(dw, 100.0)], -1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim={dim} must be divisible by model.heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // heads)
        self.k_norm = RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin, mask, context=None, pw: Pointwise = pointwise.EAGER):
        """x (B, S, dim); context: cached (k, v) prepended to this call's keys.

        Returns the output and this call's rotated (k, v), which a KV cache stores.
        """
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, -1).unbind(2)
        q, k = pw.qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, cos, sin, v.dtype)
        kv = (k, v)
        if context is not None:
            k, v = torch.cat([context[0], k], 1), torch.cat([context[1], v], 1)
        o = jfa.attention(q, k, v, mask=mask)
        return self.proj(o.reshape(B, S, -1)), kv


class Block(nn.Module):
    """DiT block with adaLN-Zero modulation, one modulation vector per frame."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c, cos, sin, mask, context=None, pw: Pointwise = pointwise.EAGER):
        """x (B, Fr, T, dim) tokens by frame, c (B, Fr, dim) per-frame conditioning."""
        B, Fr, T, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c))[:, :, None].chunk(6, -1)
        h = pw.modulated_layer_norm(x, shift1, scale1)
        a, kv = self.attn(h.reshape(B, Fr * T, D), cos, sin, mask, context, pw)
        x = pw.gated_add(x, gate1, a.view(B, Fr, T, D))
        x = pw.gated_add(x, gate2, self.mlp(pw.modulated_layer_norm(x, shift2, scale2)))
        return x, kv


class KVCache:
    """Per-chunk, per-layer rotated keys and values for streaming.

    Keeps only the chunks that a later chunk can still see: with ``window`` W (chunks,
    counting the query's own) and ``sink`` K, chunk c stays while c < K or c > b - W for
    the next query chunk b; older chunks are dropped (a rolling cache).
    """

    def __init__(self, window: int | None = None, sink: int = 0):
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if sink < 0:
            raise ValueError(f"sink must be >= 0, got {sink}")
        self.window, self.sink = window, sink
        self.chunks: dict[int, list] = {}    # chunk index -> [(k, v) per layer]
        self.num_chunks = 0                  # chunks written so far
        self.next_frame = 0                  # absolute index of the next frame

    def visible(self) -> list[int]:
        return sorted(self.chunks)

    def context(self, layer: int):
        if not self.chunks:
            return None
        kvs = [self.chunks[c][layer] for c in self.visible()]
        return torch.cat([k for k, _ in kvs], 1), torch.cat([v for _, v in kvs], 1)

    def sizes(self) -> list[int]:
        return [self.chunks[c][0][0].shape[1] for c in self.visible()]

    def append(self, kvs: list, frames: int):
        self.chunks[self.num_chunks] = kvs
        self.num_chunks += 1
        self.next_frame += frames
        if self.window is not None:
            b = self.num_chunks   # the next query chunk
            self.chunks = {c: kv for c, kv in self.chunks.items() if c < self.sink or c > b - self.window}


class CausalVideoDiT(nn.Module):
    def __init__(self, cfg: ModelConfig, data: DataConfig):
        super().__init__()
        if data.image_size % cfg.patch_size:
            raise ValueError(f"data.image_size={data.image_size} must be divisible by "
                             f"model.patch_size={cfg.patch_size}")
        self.cfg, self.data_cfg = cfg, data
        self.patch = cfg.patch_size
        self.grid = data.image_size // cfg.patch_size
        self.tokens_per_frame = self.grid * self.grid
        dim = cfg.dim
        self.rope = Rope3D(dim // cfg.heads, self.grid)
        self.x_in = nn.Linear(3 * self.patch ** 2, dim)
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.cond_embed = nn.Embedding(NUM_SLOTS * NUM_SLOT_VALUES, dim)
        self.null_cond = nn.Parameter(torch.zeros(dim))
        # MeanFlow students take a second time r <= t; its gap t - r is embedded by a
        # branch whose last layer starts at zero, so a teacher's weights load unchanged.
        self.r_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if cfg.two_times else None
        if self.r_mlp is not None:
            nn.init.zeros_(self.r_mlp[2].weight)
            nn.init.zeros_(self.r_mlp[2].bias)
        self.action_embed = nn.Embedding(len(ACTIONS), dim) if data.action_mode else None
        self.blocks = nn.ModuleList(Block(dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(dim, 2 * dim)
        self.x_out = nn.Linear(dim, 3 * self.patch ** 2)
        for layer in (self.ada_out, self.x_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self._masks = {}
        self.fused = False   # a flag, not the compiled functions: deepcopy (EMA, targets) copies it

    def fuse_pointwise(self, on: bool = True) -> "CausalVideoDiT":
        """Run the norms, rotary and residual gates as compiled fused kernels (GPU only; see
        pointwise.py). Not for forward-mode AD: TF-sCM and TF-MeanFlow keep the eager pieces."""
        self.fused = on and next(self.parameters()).is_cuda
        return self

    # ---- pieces ---------------------------------------------------------------------
    def pattern(self, num_frames: int) -> "jfa.masks.FramePattern":
        return jfa.masks.FramePattern(self.tokens_per_frame, num_frames, self.cfg.frames_per_chunk,
                                      self.cfg.first_chunk_frames)

    def mask(self, mode: str, num_frames: int, zero_clean_tangent: bool = False):
        key = (mode, num_frames, zero_clean_tangent)
        if zero_clean_tangent:
            if mode != "teacher_forcing":
                raise ValueError("zero_clean_tangent applies to teacher_forcing mode only")
            if key not in self._masks:
                n = self.pattern(num_frames).num_tokens
                self._masks[key] = self.mask(mode, num_frames).with_zero_tangents([(0, n)], [(0, n)])
            return self._masks[key]
        if key not in self._masks:
            p, w, s = self.pattern(num_frames), self.cfg.window, self.cfg.sink
            if mode == "teacher_forcing":
                m = jfa.masks.teacher_forcing(p, window=w, sink=s)
            elif mode == "block_causal":
                m = jfa.masks.block_causal(p, window=w, sink=s)
            elif mode == "full":
                m = jfa.masks.full(p.num_tokens, p.num_tokens)
            else:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            self._masks[key] = m
        return self._masks[key]

    def patchify(self, x):
        """(B, Fr, 3, H, W) -> (B, Fr, T, 3 p p)."""
        B, Fr, C, H, W = x.shape
        p, g = self.patch, self.grid
        return x.reshape(B, Fr, C, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, Fr, g * g, C * p * p)

    def unpatchify(self, x):
        B, Fr = x.shape[:2]
        p, g = self.patch, self.grid
        return x.reshape(B, Fr, g, g, 3, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Fr, 3, g * p, g * p)

    def condition(self, t, cond, actions, r=None):
        """Per-frame conditioning (B, Fr, dim) from timesteps (B, Fr), scene cond (B, 6), actions (B, Fr),
        and for a two-time (MeanFlow) model the second times r (B, Fr)."""
        B, Fr = t.shape
        if cond.shape != (B, NUM_SLOTS):
            raise ValueError(f"cond must have shape ({B}, {NUM_SLOTS}), got {tuple(cond.shape)}")
        is_null = cond[:, 0] < 0
        slots = torch.arange(NUM_SLOTS, device=cond.device) * NUM_SLOT_VALUES
        scene = self.cond_embed(slots + cond.clamp(min=0)).sum(1)
        scene = torch.where(is_null[:, None], self.null_cond.to(scene.dtype), scene)
        c = self.t_mlp(timestep_embedding(t, self.cfg.dim).to(scene.dtype)) + scene[:, None]
        if self.r_mlp is not None:
            gap = t - (t if r is None else r)
            c = c + self.r_mlp(timestep_embedding(gap, self.cfg.dim).to(scene.dtype))
        elif r is not None:
            raise ValueError("r given but the model was built without model.two_times")
        if self.action_embed is not None:
            if actions is None or actions.shape != (B, Fr):
                raise ValueError(f"actions must have shape ({B}, {Fr}) in action mode, got "
                                 f"{None if actions is None else tuple(actions.shape)}")
            c = c + self.action_embed(actions)
        elif actions is not None:
            raise ValueError("actions given but the model was built without data.action_mode")
        return c

    def rope_for(self, first_frame: int, num_frames: int, dtype, device):
        ang = self.rope.angles(torch.arange(first_frame, first_frame + num_frames)).to(device)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    def head(self, x, c):
        shift, scale = self.ada_out(F.silu(c))[:, :, None].chunk(2, -1)
        return self.unpatchify(self.x_out(self.norm_out(x) * (1 + scale) + shift))

    def _check(self, name, x, t):
        if x.dim() != 5 or x.shape[2:] != (3, self.data_cfg.image_size, self.data_cfg.image_size):
            raise ValueError(f"{name} must be (B, frames, 3, {self.data_cfg.image_size}, "
                             f"{self.data_cfg.image_size}), got {tuple(x.shape)}")
        if t.shape != x.shape[:2]:
            raise ValueError(f"t must have shape {tuple(x.shape[:2])} (one time per frame), got {tuple(t.shape)}")

    # ---- entry points ---------------------------------------------------------------
    def forward(self, x, t, cond, actions=None, mode: str = "block_causal", clean=None, clean_t=None, r=None,
                zero_clean_tangent: bool = False):
        """Velocity for x (B, Fr, 3, H, W) at per-frame times t (B, Fr).

        With ``mode="teacher_forcing"``, ``clean`` (B, Fr, 3, H, W) is the context copy,
        encoded at ``clean_t`` (default t = 0; a noisy-context student passes the time its
        sampler caches) with the same positions and conditions as x. ``r`` (B, Fr) is the
        second time of a two-time (MeanFlow) model; the output is then the average
        velocity over [r, t]. ``zero_clean_tangent`` promises the attention op that the
        clean copy carries no tangent (a JVP speed hint; results are unchanged).
        """
        self._check("x", x, t)
        B, Fr = t.shape
        if mode == "teacher_forcing":
            if clean is None or clean.shape != x.shape:
                raise ValueError(f"clean must have the shape of x {tuple(x.shape)} in teacher_forcing mode")
            if clean_t is None:
                clean_t = torch.zeros_like(t)
            elif clean_t.shape != t.shape:
                raise ValueError(f"clean_t must have shape {tuple(t.shape)}, got {tuple(clean_t.shape)}")
            tokens = self.x_in(self.patchify(torch.cat([clean, x], 1)))
            c = self.condition(torch.cat([clean_t, t], 1), cond,
                               None if actions is None else torch.cat([actions, actions], 1),
                               None if r is None else torch.cat([clean_t, r], 1))
            cos, sin = self.rope_for(0, Fr, tokens.dtype, tokens.device)
            cos, sin = torch.cat([cos, cos]), torch.cat([sin, sin])
        elif mode in ("block_causal", "full"):
            if clean is not None or clean_t is not None:
                raise ValueError(f"clean and clean_t are only used in teacher_forcing mode, not {mode!r}")
            tokens = self.x_in(self.patchify(x))
            c = self.condition(t, cond, actions, r)
            cos, sin = self.rope_for(0, Fr, tokens.dtype, tokens.device)
        else:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        mask = self.mask(mode, Fr, zero_clean_tangent)
        for block in self.blocks:
            tokens, _ = block(tokens, c, cos, sin, mask, pw=pointwise.pieces(self.fused))
        out = self.head(tokens, c)
        return out[:, Fr:] if mode == "teacher_forcing" else out

    def forward_chunk(self, x, t, cond, actions, cache: KVCache, write: bool, r=None):
        """Velocity for one chunk x (B, f, 3, H, W) attending to ``cache`` and itself.

        The chunk's frames are numbered from ``cache.next_frame``. With ``write`` its
        keys/values are appended to the cache as the next chunk. ``r``: as in ``forward``.
        """
        self._check("x", x, t)
        B, Fr = t.shape
        tokens = self.x_in(self.patchify(x))
        c = self.condition(t, cond, actions, r)
        cos, sin = self.rope_for(cache.next_frame, Fr, tokens.dtype, tokens.device)
        n = Fr * self.tokens_per_frame
        sizes = cache.sizes()
        mask = jfa.masks.from_segments([n], sizes + [n], [[1] * (len(sizes) + 1)])
        kvs = []
        for i, block in enumerate(self.blocks):
            tokens, kv = block(tokens, c, cos, sin, mask, cache.context(i), pointwise.pieces(self.fused))
            kvs.append(kv)
        if write:
            cache.append(kvs, Fr)
        return self.head(tokens, c)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.window, self.cfg.sink)
