"""A procedural video world: sprites that move with constant velocity and bounce off walls.

Everything follows from a seed, so the world is an infinite, exactly known data set:
frames come with the states that made them (positions, velocities, shapes, colours,
actions), which is what lets evaluate.py score physics and condition adherence
without any downloaded model.

Conventions: positions are sprite centroids in pixels, x to the right and y down,
pixel (i, j) has its centre at (j + 0.5, i + 0.5). Frames are RGB in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import DataConfig

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
ACTIONS = ("none", "up", "down", "left", "right")
PALETTE = torch.tensor([
    [0.92, 0.16, 0.14], [0.18, 0.80, 0.22], [0.22, 0.36, 0.96],
    [0.96, 0.86, 0.12], [0.86, 0.22, 0.86], [0.12, 0.86, 0.88],
])
# Unit acceleration of each action (dx, dy); y grows downward.
ACTION_DIRECTIONS = torch.tensor([[0.0, 0.0], [0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
NUM_SLOTS = len(COLOURS)          # the condition has one slot per colour
NUM_SLOT_VALUES = len(SHAPES) + 1  # 0 = colour absent, 1 + shape index otherwise
NULL = -1                          # every slot NULL: the unconditional (CFG) condition
SQUARE_HALF_SIDE = 0.75            # in units of sprite_radius, so the three areas differ
BOUNDING_RADIUS = (1.0, SQUARE_HALF_SIDE * math.sqrt(2.0), 1.0)  # per shape, units of radius


@dataclass
class Clips:
    """A batch of clips and the ground truth that produced them.

    frames (B, F, 3, H, W) in [0, 1]; positions, velocities (B, N, F, 2) per sprite slot;
    shapes, colours (B, N) with -1 for absent slots; present (B, N) bool; cond (B, 6)
    long, one slot per colour; actions (B, F) long (all 0 = none outside action mode),
    actions[:, f] is the action that moved the agent (sprite 0) into frame f.
    """
    frames: torch.Tensor
    positions: torch.Tensor
    velocities: torch.Tensor
    shapes: torch.Tensor
    colours: torch.Tensor
    present: torch.Tensor
    cond: torch.Tensor
    actions: torch.Tensor

    def to(self, device) -> "Clips":
        return Clips(**{k: v.to(device) for k, v in self.__dict__.items()})

    def slice(self, start: int, end: int) -> "Clips":
        return Clips(**{k: v[start:end] for k, v in self.__dict__.items()})


def to_model(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels to the model's [-1, 1] space."""
    return frames * 2.0 - 1.0


def from_model(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def null_cond(batch: int, device=None) -> torch.Tensor:
    return torch.full((batch, NUM_SLOTS), NULL, dtype=torch.long, device=device)


def background(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The fixed backdrop (3, H, W): a dark vertical gradient, known to the detector."""
    y = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size
    top = torch.tensor([0.10, 0.10, 0.16], device=device, dtype=dtype)
    bottom = torch.tensor([0.24, 0.20, 0.26], device=device, dtype=dtype)
    col = top[:, None] + (bottom - top)[:, None] * y[None, :]          # (3, H)
    return col[:, :, None].expand(3, size, size).contiguous()


def bounds(cfg: DataConfig) -> tuple[float, float]:
    """Range of a centroid that keeps every shape, with its anti-aliased rim, inside the frame.

    The half-pixel margin covers the rim at the triangle's apex, where the half-plane
    distance underestimates the true distance.
    """
    margin = cfg.sprite_radius + 0.5
    return margin, cfg.image_size - margin


def simulate(p0, v0, accel, lo: float, hi: float, vmax: float | None = None):
    """Step the motion law along one axis: v += a (clamped to vmax), p += v, reflect at walls.

    p0, v0: (...,); accel: (..., F) where accel[..., 0] is ignored (frame 0 is the start).
    Returns positions and velocities (..., F). Used both to make data and to fit
    detected trajectories, so the metric and the world share one definition.
    """
    if hi <= lo:
        raise ValueError(f"bounds must satisfy lo < hi, got lo={lo}, hi={hi}")
    ps, vs = [p0], [v0]
    p, v = p0, v0
    for f in range(1, accel.shape[-1]):
        v = v + accel[..., f]
        if vmax is not None:
            v = v.clamp(-vmax, vmax)
        p = p + v
        below, above = p < lo, p > hi
        p = torch.where(below, 2 * lo - p, torch.where(above, 2 * hi - p, p))
        v = torch.where(below | above, -v, v)
        ps.append(p)
        vs.append(v)
    return torch.stack(ps, -1), torch.stack(vs, -1)


def coverage(shape: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: int, radius: float):
    """Anti-aliased coverage (..., H, W) of shapes (...,) centred at (cx, cy).

    Coverage is clamp(0.5 - signed distance, 0, 1): symmetric shapes keep their centroid
    exactly, which is what makes sub-pixel detection possible.
    """
    grid = torch.arange(size, device=cx.device, dtype=cx.dtype) + 0.5
    dx = grid[None, :] - cx[..., None, None]
    dy = grid[:, None] - cy[..., None, None]
    circle = torch.sqrt(dx * dx + dy * dy) - radius
    square = torch.maximum(dx.abs(), dy.abs()) - SQUARE_HALF_SIDE * radius
    s3 = math.sqrt(3.0) / 2.0   # equilateral triangle, apex up, centroid at (cx, cy)
    triangle = torch.maximum(torch.maximum(dy, s3 * dx - 0.5 * dy), -s3 * dx - 0.5 * dy) - 0.5 * radius
    shape = shape[..., None, None]
    sdf = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    return (0.5 - sdf).clamp(0.0, 1.0)


def render(positions, shapes, colours, present, size: int, radius: float):
    """Paint sprites over the background in slot order: (B, N, F, 2) -> (B, F, 3, H, W)."""
    B, N, F, _ = positions.shape
    dtype = positions.dtype
    frames = background(size, positions.device, dtype).expand(B, F, 3, size, size).clone()
    palette = PALETTE.to(positions.device, dtype)
    for n in range(N):
        cov = coverage(shapes[:, n, None].expand(B, F).clamp(min=0), positions[:, n, :, 0],
                       positions[:, n, :, 1], size, radius)                    # (B, F, H, W)
        cov = cov * present[:, n, None, None, None].to(dtype)
        col = palette[colours[:, n].clamp(min=0)][:, None, :, None, None]       # (B, 1, 3, 1, 1)
        frames = frames * (1 - cov[:, :, None]) + col * cov[:, :, None]
    return frames


def _motion(shapes, present, cfg: DataConfig, g: torch.Generator):
    """Draw initial states and actions for scenes (CPU) and simulate them; flag overlaps."""
    n, N = shapes.shape
    F = cfg.num_frames
    lo, hi = bounds(cfg)
    p0 = lo + (hi - lo) * torch.rand(n, N, 2, generator=g)
    angle = 2 * math.pi * torch.rand(n, N, generator=g)
    speed = cfg.min_speed + (cfg.max_speed - cfg.min_speed) * torch.rand(n, N, generator=g)
    v0 = torch.stack([speed * torch.cos(angle), speed * torch.sin(angle)], -1)
    actions = torch.zeros(n, F, dtype=torch.long)
    accel = torch.zeros(n, N, 2, F)
    vmax = None
    if cfg.action_mode:
        # Sticky random actions: a new draw with probability 1/2 each frame, "none" most often.
        probs = torch.tensor([0.4, 0.15, 0.15, 0.15, 0.15])
        fresh = torch.multinomial(probs, n * F, replacement=True, generator=g).view(n, F)
        keep = torch.rand(n, F, generator=g) < 0.5
        for f in range(1, F):
            actions[:, f] = torch.where(keep[:, f], actions[:, f - 1], fresh[:, f])
        accel[:, 0] = cfg.accel * ACTION_DIRECTIONS[actions].permute(0, 2, 1)
        vmax = cfg.agent_max_speed
    pos, vel = simulate(p0, v0, accel, lo, hi, vmax)
    pos, vel = pos.permute(0, 1, 3, 2), vel.permute(0, 1, 3, 2)              # (n, N, F, 2)
    # No two sprites ever overlap: the detector then sees every sprite whole.
    reach = torch.tensor(BOUNDING_RADIUS)[shapes] * cfg.sprite_radius        # (n, N)
    dist = (pos[:, :, None] - pos[:, None, :]).norm(dim=-1).amin(-1)          # (n, N, N)
    both = present[:, :, None] & present[:, None, :] & ~torch.eye(N, dtype=torch.bool)
    ok = ~(both & (dist <= reach[:, :, None] + reach[:, None, :] + 0.5)).any(-1).any(-1)
    return ok, pos, vel, actions


def sample_clips(batch: int, cfg: DataConfig, seed: int, device="cpu") -> Clips:
    """``batch`` clips made from ``seed``; the same seed gives the same clips on any device.

    Scene contents (count, shapes, distinct colours) are drawn first; motions are then
    redrawn for the scenes whose sprites would overlap, so the scene statistics stay unbiased.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 1 <= cfg.max_sprites <= len(COLOURS):
        raise ValueError(f"max_sprites must be in 1..{len(COLOURS)}, got {cfg.max_sprites}")
    lo, hi = bounds(cfg)
    if hi - lo <= 2 * max(cfg.max_speed, cfg.agent_max_speed if cfg.action_mode else 0.0):
        raise ValueError(f"image_size={cfg.image_size} is too small for sprite_radius="
                         f"{cfg.sprite_radius} and the speeds")
    g = torch.Generator().manual_seed(int(seed))
    N = cfg.max_sprites
    count = torch.randint(1, N + 1, (batch,), generator=g)
    present = torch.arange(N)[None, :] < count[:, None]
    colours = torch.argsort(torch.rand(batch, len(COLOURS), generator=g), dim=1)[:, :N]
    shapes = torch.randint(0, len(SHAPES), (batch, N), generator=g)
    ok, pos, vel, actions = _motion(shapes, present, cfg, g)
    for _ in range(200):
        if ok.all():
            break
        bad = (~ok).nonzero()[:, 0]
        ok_b, pos_b, vel_b, act_b = _motion(shapes[bad], present[bad], cfg, g)
        ok[bad], pos[bad], vel[bad], actions[bad] = ok_b, pos_b, vel_b, act_b
    else:
        raise ValueError("could not place non-overlapping sprites; lower max_sprites or "
                         "sprite_radius, or raise image_size")
    shapes = torch.where(present, shapes, -1)
    colours = torch.where(present, colours, -1)
    cond = torch.zeros(batch, NUM_SLOTS, dtype=torch.long)
    for n in range(N):
        rows = present[:, n].nonzero()[:, 0]
        cond[rows, colours[rows, n]] = shapes[rows, n] + 1
    clips = Clips(frames=torch.empty(0), positions=pos, velocities=vel, shapes=shapes,
                  colours=colours, present=present, cond=cond, actions=actions).to(device)
    clips.frames = render(clips.positions, clips.shapes, clips.colours, clips.present,
                          cfg.image_size, cfg.sprite_radius)
    return clips


class ClipStream:
    """Training batches of ``batch`` clips, made ``pool`` batches at a time (the CPU-side motion
    draws then cost little per step) from the seeds ``first_seed + i * stride``, i = 0, 1, ...

    ``position`` counts the batches handed out and is the whole state: a stream rebuilt with the
    same arguments and ``load_state_dict(state_dict())`` continues with the same batches.
    """

    def __init__(self, cfg: DataConfig, batch: int, first_seed: int, stride: int = 1, device="cpu",
                 pool: int = 16):
        self.cfg, self.batch, self.first_seed, self.stride, self.device, self.pool = \
            cfg, batch, first_seed, stride, device, pool
        self.position = 0
        self._clips, self._clips_id = None, -1

    def __iter__(self):
        return self

    def __next__(self) -> Clips:
        pool_id, i = divmod(self.position, self.pool)
        if pool_id != self._clips_id:
            self._clips = sample_clips(self.pool * self.batch, self.cfg, seed=self.first_seed + pool_id * self.stride,
                                       device=self.device)
            self._clips_id = pool_id
        self.position += 1
        return self._clips.slice(i * self.batch, (i + 1) * self.batch)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
