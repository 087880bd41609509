"""Download-free metrics for the sprite world, each reported by frame index.

The world is known exactly, so the metrics are measurements rather than learned
judgements: a detector recovers every sprite's colour, shape and sub-pixel centroid
from pixels, and the recovered tracks are checked against the motion law and the
condition. Only the Fréchet distance uses learned features (encoder.py).

- physics error: distance between detected centroids and the best-fitting
  constant-velocity-with-bounce trajectory (the agent: driven by its actions);
- action-following error: that residual for the agent alone (action mode);
- condition adherence: the per-frame scene read from pixels against the condition;
- drift: background error and sprite area error, which grow when a streaming model
  degrades over time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DataConfig
from .data import ACTION_DIRECTIONS, NUM_SLOTS, PALETTE, SHAPES, background, bounds, coverage, simulate

COLOUR_TOL = 0.12      # RGB distance under which a pixel counts as background/colour blend
CORE_COVERAGE = 0.5    # pixels at least this covered anchor a sprite; fainter ones count only near an anchor
MIN_AREA_FRACTION = 0.4  # a colour is detected when its area reaches this share of the smallest shape


@dataclass
class Detections:
    """Per colour slot (6) and frame: centroid (B, 6, F, 2), area, presence, shape index
    (-1 when absent); ``slots`` (B, 6) is the clip's scene in condition format;
    ``background_error`` (B, F) is the mean |pixel - background| off the sprites."""
    positions: torch.Tensor
    area: torch.Tensor
    present: torch.Tensor
    shape: torch.Tensor
    slots: torch.Tensor
    background_error: torch.Tensor


def shape_areas(cfg: DataConfig, device="cpu") -> torch.Tensor:
    """Rendered area in pixels of each shape, (3,)."""
    size = int(4 * cfg.sprite_radius) + 4
    c = torch.full((len(SHAPES),), size / 2, device=device)
    return coverage(torch.arange(len(SHAPES), device=device), c, c, size, cfg.sprite_radius).sum((-1, -2))


def _check_frames(frames, cfg: DataConfig):
    if frames.dim() != 5 or frames.shape[2:] != (3, cfg.image_size, cfg.image_size):
        raise ValueError(f"frames must be (B, F, 3, {cfg.image_size}, {cfg.image_size}) in [0, 1], "
                         f"got {tuple(frames.shape)}")


@torch.no_grad()
def detect(frames: torch.Tensor, cfg: DataConfig) -> Detections:
    """Recover sprites from frames (B, F, 3, H, W) in [0, 1].

    Every pixel is a blend of the known background and at most one palette colour, so
    its coverage is the projection of (pixel - background) on (colour - background);
    the pixel is given to the colour whose blend line it lies closest to. Centroids
    are coverage-weighted means (exact for the symmetric anti-aliased shapes), and
    shapes are classified by matching rendered templates at the centroid.
    """
    _check_frames(frames, cfg)
    B, F, _, H, W = frames.shape
    device = frames.device
    frames = frames.float()
    bg = background(H, device)
    d = frames - bg                                                          # (B, F, 3, H, W)
    u = PALETTE.to(device)[:, :, None, None] - bg                            # (6, 3, H, W)
    c = ((d[:, :, None] * u).sum(3) / (u * u).sum(1)).clamp(0, 1)            # (B, F, 6, H, W)
    res = (d[:, :, None] - c[:, :, :, None] * u).norm(dim=3)                 # (B, F, 6, H, W)
    res = torch.where(c > 0.02, res, torch.full_like(res, float("inf")))
    best = res.argmin(2, keepdim=True)
    w = torch.where((res.gather(2, best) < COLOUR_TOL), c.gather(2, best), torch.zeros_like(best, dtype=c.dtype))
    w = torch.zeros_like(c).scatter_(2, best, w).permute(0, 2, 1, 3, 4)     # (B, 6, F, H, W)
    # Faint pixels count only within 2 pixels of a well-covered one: a sprite's rim is
    # kept whole (so centroids stay exact) while scattered noise is ignored.
    near = torch.nn.functional.max_pool2d((w >= CORE_COVERAGE).float().flatten(0, 2), 5, stride=1, padding=2).view_as(w)
    w = w * near
    off = w.sum(1) == 0                                                      # (B, F, H, W)
    bg_err = (d.abs().mean(2) * off).sum((-1, -2)) / off.sum((-1, -2)).clamp(min=1)

    area = w.sum((-1, -2))
    grid = torch.arange(H, device=device, dtype=torch.float32) + 0.5
    cx = (w.sum(-2) * grid).sum(-1) / area.clamp(min=1e-6)
    cy = (w.sum(-1) * grid).sum(-1) / area.clamp(min=1e-6)
    positions = torch.stack([cx, cy], -1)
    present = area >= MIN_AREA_FRACTION * shape_areas(cfg, device).min()

    shape = torch.full_like(area, -1, dtype=torch.long)
    idx = present.nonzero(as_tuple=True)
    for part in torch.split(torch.arange(len(idx[0]), device=device), 4096):
        b, k, f = (i[part] for i in idx)
        n = len(part)
        kinds = torch.arange(len(SHAPES), device=device).repeat(n)
        tmpl = coverage(kinds, cx[b, k, f].repeat_interleave(len(SHAPES)),
                        cy[b, k, f].repeat_interleave(len(SHAPES)), H, cfg.sprite_radius).view(n, len(SHAPES), H, W)
        shape[b, k, f] = (tmpl - w[b, k, f][:, None]).abs().sum((-1, -2)).argmin(1)

    # Clip-level scene: a colour is in the clip if seen in at least half the frames.
    seen = present.float().mean(-1) >= 0.5
    votes = torch.stack([(shape == s).sum(-1) for s in range(len(SHAPES))], -1)
    slots = torch.where(seen, votes.argmax(-1) + 1, torch.zeros_like(votes[..., 0]))
    return Detections(positions, area, present, shape, slots, bg_err)


def fit_axis(obs, weight, accel, lo: float, hi: float, vrange: float, vmax: float | None):
    """Least-squares initial state (p0, v0) of the 1-D motion law for each row of obs (M, F).

    The loss is not convex (bounces fold the line), so a coarse grid over (p0, v0)
    finds the basin and a shrinking local grid refines it. Returns the fitted track (M, F).
    """
    M, F = obs.shape
    if M == 0:
        return obs.clone()

    def loss(p0, v0):   # p0, v0 (M, G)
        track, _ = simulate(p0, v0, accel[:, None].expand(M, p0.shape[1], F), lo, hi, vmax)
        return (weight[:, None] * (track - obs[:, None]) ** 2).sum(-1)

    g = 41
    pg, vg = torch.meshgrid(torch.linspace(lo, hi, g, device=obs.device),
                            torch.linspace(-vrange, vrange, g, device=obs.device), indexing="ij")
    pg, vg = pg.reshape(1, -1).expand(M, -1), vg.reshape(1, -1).expand(M, -1)
    best = loss(pg, vg).argmin(1, keepdim=True)
    p, v = pg.gather(1, best), vg.gather(1, best)
    dp, dv = (hi - lo) / (g - 1), 2 * vrange / (g - 1)
    off = torch.linspace(-1, 1, 7, device=obs.device)
    op, ov = (x.reshape(1, -1) for x in torch.meshgrid(off, off, indexing="ij"))
    for _ in range(10):
        cp, cv = (p + dp * op).clamp(lo, hi), v + dv * ov
        best = loss(cp, cv).argmin(1, keepdim=True)
        p, v = cp.gather(1, best), cv.gather(1, best)
        dp, dv = dp / 3, dv / 3
    return simulate(p[:, 0], v[:, 0], accel, lo, hi, vmax)[0]


def _fit_tracks(det: Detections, accel, cfg: DataConfig, agent_mask):
    """Fitted tracks (B, 6, F, 2) for every detected colour; the agent uses its actions."""
    lo, hi = bounds(cfg)
    B, K, F = det.present.shape
    fitted = torch.zeros_like(det.positions)
    w = det.present.float()
    for agent in (False, True):
        sel = (det.slots > 0) & (agent_mask == agent)
        if not sel.any():
            continue
        obs = det.positions[sel]                                             # (M, F, 2)
        acc = accel[:, None].expand(B, K, F, 2)[sel] if agent else torch.zeros_like(obs)
        vmax = cfg.agent_max_speed if agent else None
        vrange = 1.5 * (cfg.agent_max_speed if agent else cfg.max_speed)
        tracks = [fit_axis(obs[..., a], w[sel], acc[..., a], lo, hi, vrange, vmax) for a in range(2)]
        fitted[sel] = torch.stack(tracks, -1)
    return fitted


def _by_frame(err, valid):
    """Mean over valid entries for each frame: err, valid (..., F) -> list of F floats (nan if none)."""
    err, valid = err.reshape(-1, err.shape[-1]), valid.reshape(-1, valid.shape[-1]).float()
    n = valid.sum(0)
    per = (err * valid).sum(0) / n.clamp(min=1)
    return torch.where(n > 0, per, torch.full_like(per, float("nan"))).tolist()


def _mean(values):
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


@torch.no_grad()
def score_clips(frames, cond, cfg: DataConfig, actions=None, agent_colour=None) -> dict:
    """Physics, adherence, drift (and action-following in action mode), each by frame index.

    ``cond`` (B, 6) is the condition the clips were made or generated under; in action
    mode ``actions`` (B, F) and ``agent_colour`` (B,) say which sprite obeys which actions.
    Returns ``{"by_frame": {metric: [F floats]}, "mean": {metric: float}}``.
    """
    _check_frames(frames, cfg)
    B, F = frames.shape[:2]
    if cond.shape != (B, NUM_SLOTS):
        raise ValueError(f"cond must be ({B}, {NUM_SLOTS}), got {tuple(cond.shape)}")
    if cfg.action_mode and (actions is None or agent_colour is None):
        raise ValueError("actions and agent_colour are required in action mode")
    device = frames.device
    det = detect(frames, cfg)
    agent_mask = torch.zeros(B, NUM_SLOTS, dtype=torch.bool, device=device)
    accel = torch.zeros(B, F, 2, device=device)
    if cfg.action_mode:
        agent_mask[torch.arange(B, device=device), agent_colour.to(device)] = True
        accel = cfg.accel * ACTION_DIRECTIONS.to(device)[actions.to(device)]
    fitted = _fit_tracks(det, accel, cfg, agent_mask)
    resid = (det.positions - fitted).norm(dim=-1)                           # (B, 6, F)
    tracked = det.present & (det.slots > 0)[..., None]

    per_frame_scene = torch.where(det.present, det.shape + 1, torch.zeros_like(det.shape))  # (B, 6, F)
    match = per_frame_scene == cond.to(device)[..., None]
    expected = shape_areas(cfg, device)[det.shape.clamp(min=0)]
    area_err = (det.area / expected - 1).abs()

    by_frame = {
        "physics_error_px": _by_frame(resid, tracked),
        "adherence_slot_acc": match.float().mean(1).mean(0).tolist(),
        "adherence_exact": match.all(1).float().mean(0).tolist(),
        "drift_background": det.background_error.mean(0).tolist(),
        "drift_area": _by_frame(area_err, det.present),
        "detected_fraction": _by_frame(det.present.float(), (cond.to(device) > 0)[..., None].expand_as(det.present)),
    }
    if cfg.action_mode:
        by_frame["action_error_px"] = _by_frame(resid, tracked & agent_mask[..., None])
    mean = {k: _mean(v) for k, v in by_frame.items()}
    mean["adherence_clip_exact"] = (det.slots == cond.to(device)).all(1).float().mean().item()
    return {"by_frame": by_frame, "mean": mean}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 rows")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = (a - mu_a) / (a.shape[0] - 1) ** 0.5, (b - mu_b) / (b.shape[0] - 1) ** 0.5
    # With Ca = xa^T xa and Cb = xb^T xb, tr sqrt(Ca Cb) is the nuclear norm of xa xb^T,
    # i.e. of ra rb^T for the QR factors of xa and xb: no square root of a product of
    # covariances, so no negative eigenvalues from rounding.
    ra, rb = torch.linalg.qr(xa, mode="r")[1], torch.linalg.qr(xb, mode="r")[1]
    cross = torch.linalg.svdvals(ra @ rb.T).sum()
    return float((mu_a - mu_b).pow(2).sum() + xa.pow(2).sum() + xb.pow(2).sum() - 2 * cross)
