"""Training objectives, one function per objective.

Flow matching: x_t = (1 - t) x0 + t eps, the model predicts the velocity eps - x0.
Teachers differ only in how timesteps are laid out over frames and which attention
layout the model runs:

- teacher forcing: per-chunk times on the noisy copy, clean context packed beside it;
- diffusion forcing: per-chunk times, each chunk attends to the noisy earlier chunks;
- bidirectional: one time per clip, full attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import NULL

T_SAMPLINGS = ("logit_normal", "shift", "uniform")


def sample_t(shape, cfg: TrainConfig, device, generator=None) -> torch.Tensor:
    """Training times in (0, 1): logit-normal, or uniform warped by a shift (>1 favours noise)."""
    if cfg.t_sampling == "logit_normal":
        t = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(shape, device=device, generator=generator))
    elif cfg.t_sampling in ("shift", "uniform"):
        u = torch.rand(shape, device=device, generator=generator)
        s = cfg.t_shift if cfg.t_sampling == "shift" else 1.0
        t = s * u / (1 + (s - 1) * u)
    else:
        raise ValueError(f"train.t_sampling must be one of {T_SAMPLINGS}, got {cfg.t_sampling!r}")
    return t.clamp(1e-5, 1 - 1e-5)


def drop_condition(cond: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Replace each clip's condition by the null condition with probability p (for CFG)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"train.cond_dropout must be in [0, 1], got {p}")
    drop = torch.rand(cond.shape[0], device=cond.device, generator=generator) < p
    return torch.where(drop[:, None], torch.full_like(cond, NULL), cond)


def chunk_times(model, batch: int, num_frames: int, cfg: TrainConfig, device) -> torch.Tensor:
    """One time per chunk, repeated over the chunk's frames: (B, F)."""
    pattern = model.pattern(num_frames)
    tc = sample_t((batch, pattern.num_chunks), cfg, device)
    return torch.repeat_interleave(tc, torch.tensor(pattern.chunk_frames, device=device), dim=1)


def _flow_matching(model, x0, t, cond, actions, cfg: TrainConfig, mode: str, clean=None):
    eps = torch.randn_like(x0)
    tt = t[:, :, None, None, None]
    xt = (1 - tt) * x0 + tt * eps
    v = model(xt, t.to(x0.dtype), drop_condition(cond, cfg.cond_dropout), actions, mode=mode, clean=clean)
    return F.mse_loss(v.float(), (eps - x0).float())


def flow_matching_teacher_forcing(model, x0, cond, actions, cfg: TrainConfig):
    """Causal teacher: noisy chunks see the clean earlier chunks, as with a clean KV cache."""
    net = getattr(model, "module", model)
    t = chunk_times(net, x0.shape[0], x0.shape[1], cfg, x0.device)
    return _flow_matching(model, x0, t, cond, actions, cfg, "teacher_forcing", clean=x0)


def flow_matching_diffusion_forcing(model, x0, cond, actions, cfg: TrainConfig):
    """Causal teacher: independent noise level per chunk under the block-causal mask."""
    net = getattr(model, "module", model)
    t = chunk_times(net, x0.shape[0], x0.shape[1], cfg, x0.device)
    return _flow_matching(model, x0, t, cond, actions, cfg, "block_causal")


def flow_matching_bidirectional(model, x0, cond, actions, cfg: TrainConfig):
    """Bidirectional teacher: one noise level per clip, every frame sees every frame."""
    t = sample_t((x0.shape[0], 1), cfg, x0.device).expand(x0.shape[0], x0.shape[1])
    return _flow_matching(model, x0, t, cond, actions, cfg, "full")


OBJECTIVES = {
    "teacher_forcing": flow_matching_teacher_forcing,
    "diffusion_forcing": flow_matching_diffusion_forcing,
    "bidirectional": flow_matching_bidirectional,
}


def objective(name: str):
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]



# =======================================================================================
# Causal-rCM distillation: students of a flow-matching causal teacher.
#
# Every student is a CausalVideoDiT with the teacher's layout. Teacher-forcing (TF)
# objectives train each noisy chunk beside the clean (or noisy, see
# ``student_context``) earlier chunks under jfa.masks.teacher_forcing; since a noisy
# chunk sees only the context and itself, every chunk of a clip is an independent
# sample with its own time. Self-forcing DMD trains on the student's own rollouts.
# A student's x0 prediction from x_t is x_t - t v (flow matching), which equals the
# TrigFlow consistency function cos(s) x_s - sin(s) F (see below).
# =======================================================================================

def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32 for losses and norms (bf16 under autocast; float64 stays float64)."""
    return x if x.dtype == torch.float64 else x.float()


def _bc(t: torch.Tensor) -> torch.Tensor:
    """(B, F) per-frame times -> (B, F, 1, 1, 1) to broadcast over frames."""
    return t[:, :, None, None, None]


# ---- flow matching <-> TrigFlow --------------------------------------------------------
def fm_to_trig_time(t: torch.Tensor) -> torch.Tensor:
    """s = arctan(t / (1 - t)) in [0, pi/2] for the flow-matching time t in [0, 1].

    Flow matching:  x_t = (1 - t) x0 + t eps,      velocity v = dx_t/dt = eps - x0.
    TrigFlow:       x_s = cos(s) x0 + sin(s) eps,  velocity F = dx_s/ds = cos(s) eps - sin(s) x0
    (unit data scale, sigma_d = 1). Both interpolate x0 and eps; they are the same point
    up to a scale when the ratios of the weights agree: t / (1 - t) = tan(s), so
        s = arctan(t / (1 - t)),    t = sin(s) / (cos(s) + sin(s)),
        x_s = (cos(s) + sin(s)) x_t = x_t / sqrt((1 - t)^2 + t^2).
    The logit-normal flow-matching times t = sigmoid(n) are exactly sCM's log-normal
    times tan(s) = exp(n).
    """
    return torch.atan2(t, 1 - t)


def trig_to_fm_time(s: torch.Tensor) -> torch.Tensor:
    """t = sin(s) / (cos(s) + sin(s)); inverse of :func:`fm_to_trig_time`."""
    return torch.sin(s) / (torch.cos(s) + torch.sin(s))


def trig_scale(s: torch.Tensor) -> torch.Tensor:
    """c(s) = cos(s) + sin(s): x_s = c(s) x_t."""
    return torch.cos(s) + torch.sin(s)


def fm_to_trig_velocity(v: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """TrigFlow velocity F = dx_s/ds from the flow-matching velocity v = dx_t/dt at the same point.

    With c = cos s + sin s, x0 = x_t - t v and eps = x_t + (1 - t) v, so
        F = -sin(s) x0 + cos(s) eps = (cos s - sin s) x_t + v / c = ((cos s - sin s) x_s + v) / c.
    ``s`` is (B, F) per frame; v and x_s are (B, F, C, H, W).
    """
    s = _bc(s)
    return ((torch.cos(s) - torch.sin(s)) * x_s + v) / trig_scale(s)


def trig_to_fm_velocity(F_: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """v = c F - (cos s - sin s) x_s; inverse of :func:`fm_to_trig_velocity`."""
    s = _bc(s)
    return trig_scale(s) * F_ - (torch.cos(s) - torch.sin(s)) * x_s


# ---- shared pieces ---------------------------------------------------------------------
def teacher_velocity(teacher, x_t, t, cond, actions, clean, cfg_scale: float, clean_t=None):
    """The teacher's classifier-free-guided flow-matching velocity under teacher forcing (no grad).

    v = v_null + w (v_cond - v_null), conditional and null branches as one doubled batch.
    """
    with torch.no_grad():
        if cfg_scale == 1.0:
            return teacher(x_t, t, cond, actions, mode="teacher_forcing", clean=clean, clean_t=clean_t)
        B = x_t.shape[0]
        two = lambda z: None if z is None else torch.cat([z, z])   # noqa: E731
        v = teacher(two(x_t), two(t), torch.cat([cond, torch.full_like(cond, NULL)]), two(actions),
                    mode="teacher_forcing", clean=two(clean), clean_t=two(clean_t))
        return v[B:] + cfg_scale * (v[:B] - v[B:])


def chunk_ids(model, num_frames: int, device) -> torch.Tensor:
    """(F,) chunk index of every frame."""
    p = model.pattern(num_frames)
    return torch.repeat_interleave(torch.arange(p.num_chunks, device=device),
                                   torch.tensor(p.chunk_frames, device=device))


def per_chunk_norm(g: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """L2 norm of g (B, F, ...) over each chunk's frames, broadcast back to (B, F)."""
    sq = _wide(g).pow(2).flatten(2).sum(-1)                                    # (B, F)
    tot = torch.zeros(sq.shape[0], int(ids.max()) + 1, device=sq.device, dtype=sq.dtype).index_add_(1, ids, sq)
    return tot[:, ids].sqrt()


def schedule_times(model, batch: int, num_frames: int, schedules, device, exclude_last: bool = True):
    """Per-chunk training times drawn uniformly from each chunk's student schedule: (B, F).

    The times a few-step student is queried at are its schedule's times except the final 0.
    """
    from .sample import schedule_for_chunk
    p = model.pattern(num_frames)
    cols = []
    for b in range(p.num_chunks):
        ts = schedule_for_chunk(schedules, b)
        ts = torch.tensor(ts[:-1] if exclude_last else ts, device=device, dtype=torch.float32)
        cols.append(ts[torch.randint(len(ts), (batch,), device=device)])
    tc = torch.stack(cols, 1)
    return torch.repeat_interleave(tc, torch.tensor(p.chunk_frames, device=device), dim=1)


def student_context(model, x0, schedules, noisy_context: bool):
    """What a student sees as context, matching what its sampler caches: (clean, clean_t).

    Clean context: the data at t = 0. Noisy context: each chunk as the sampler's last
    denoising step sees it, x_tl = (1 - tl) x0 + tl eps' at tl = the chunk schedule's
    last non-zero time, encoded at tl.
    """
    if not noisy_context:
        return x0, None
    from .sample import schedule_for_chunk
    B, Fr = x0.shape[:2]
    p = model.pattern(Fr)
    tl = torch.tensor([schedule_for_chunk(schedules, b)[-2] for b in range(p.num_chunks)],
                      device=x0.device, dtype=x0.dtype)
    tl = torch.repeat_interleave(tl, torch.tensor(p.chunk_frames, device=x0.device))[None].expand(B, Fr)
    return (1 - _bc(tl)) * x0 + _bc(tl) * torch.randn_like(x0), tl.contiguous()


def _nan_guard(g: torch.Tensor):
    """Zero the non-finite samples of g (B, F, ...); returns (g, number of frames zeroed)."""
    bad = ~torch.isfinite(g).flatten(2).all(-1)                                # (B, F)
    return torch.where(_bc(bad), torch.zeros_like(g), g), bad.sum()


# ---- TF-KD ------------------------------------------------------------------------------
@torch.no_grad()
def teacher_ode_pairs(teacher, x0, cond, actions, steps: int, shift: float, cfg_scale: float):
    """Solve the teacher's guided PF-ODE under teacher forcing from eps (t = 1) to t = 0.

    Every chunk is solved at once beside the real clean context x0 (each noisy chunk
    sees only that context and itself). Euler on ``shifted_times(steps, shift)``:
        x_{t'} = x_t + (t' - t) v_w(x_t, t).   Returns (eps, x0_teacher).
    """
    from .sample import shifted_times
    eps = torch.randn_like(x0)
    x = eps
    B, Fr = x0.shape[:2]
    ts = shifted_times(steps, shift)
    for t, t_next in zip(ts, ts[1:]):
        tt = torch.full((B, Fr), t, device=x0.device, dtype=x0.dtype)
        x = x + (t_next - t) * teacher_velocity(teacher, x, tt, cond, actions, x0, cfg_scale)
    return eps, x


def tf_kd_loss(student, x0, eps, x0_teacher, cond, actions, schedules, noisy_context: bool):
    """TF-KD: regression on teacher ODE pairs (eps -> x0_T), the classic initialisation baseline.

    For each chunk a time t_k is drawn from the student's schedule, the pair is placed
    on the straight path x_{t_k} = (1 - t_k) x0_T + t_k eps, and the student's x0
    prediction is regressed onto the teacher's ODE end point:
        L = || (x_{t_k} - t_k v_theta(x_{t_k}, t_k | context)) - x0_T ||^2.
    At t_k = 1 this is exactly the 1-step map eps -> x0_T.
    """
    net = getattr(student, "module", student)
    B, Fr = x0.shape[:2]
    t = schedule_times(net, B, Fr, schedules, x0.device).to(x0.dtype)
    xt = (1 - _bc(t)) * x0_teacher + _bc(t) * eps
    ctx, ctx_t = student_context(net, x0, schedules, noisy_context)
    v = student(xt, t, cond, actions, mode="teacher_forcing", clean=ctx, clean_t=ctx_t)
    return F.mse_loss(_wide(xt - _bc(t) * v), _wide(x0_teacher))


# ---- TF-dCM ----------------------------------------------------------------------------
def dcm_grid(intervals: int, shift: float) -> torch.Tensor:
    """The discrete times 0 = u_0 < u_1 < ... < u_N = 1 (shifted like the sampler's)."""
    from .sample import shifted_times
    return torch.tensor(shifted_times(intervals, shift)[::-1], dtype=torch.float64)


def tf_dcm_loss(student, target, teacher, x0, cond, actions, grid, cfg_scale: float, schedules,
                noisy_context: bool):
    """TF-dCM: discrete-time consistency distillation under teacher forcing, EMA target.

    Consistency function f(x_t, t) = x_t - t v(x_t, t) (so f(x, 0) = x). Per chunk draw
    n in {1..N}; x_{u_n} = (1 - u_n) x0 + u_n eps; one guided Euler step of the teacher's
    PF-ODE (clean context) gives x_hat = x_{u_n} + (u_{n-1} - u_n) v_w(x_{u_n}, u_n);
        L = || f_theta(x_{u_n}, u_n) - sg(f_{theta^-}(x_hat, u_{n-1})) ||^2,
    theta^- an EMA of theta (``target``). The student sees ``student_context``.
    """
    net = getattr(student, "module", student)
    B, Fr = x0.shape[:2]
    ids = chunk_ids(net, Fr, x0.device)
    n = torch.randint(1, len(grid), (B, int(ids.max()) + 1), device=x0.device)[:, ids]
    g = grid.to(x0.device)
    t, t_prev = g[n].to(x0.dtype), g[n - 1].to(x0.dtype)
    eps = torch.randn_like(x0)
    xt = (1 - _bc(t)) * x0 + _bc(t) * eps
    x_hat = xt + _bc(t_prev - t) * teacher_velocity(teacher, xt, t, cond, actions, x0, cfg_scale)
    ctx, ctx_t = student_context(net, x0, schedules, noisy_context)
    with torch.no_grad():
        v_tgt = target(x_hat, t_prev, cond, actions, mode="teacher_forcing", clean=ctx, clean_t=ctx_t)
        f_tgt = x_hat - _bc(t_prev) * v_tgt
    v = student(xt, t, cond, actions, mode="teacher_forcing", clean=ctx, clean_t=ctx_t)
    return F.mse_loss(_wide(xt - _bc(t) * v), _wide(f_tgt))


# ---- TF-sCM ----------------------------------------------------------------------------
def trig_student(student, x_s, s, cond, actions, clean, clean_t=None, zero_clean_tangent: bool = True):
    """The student as a TrigFlow velocity F_theta(x_s, s) around the flow-matching network:
        t = sin s / (cos s + sin s),  v = v_theta(x_s / c(s), t | context),
        F_theta = ((cos s - sin s) x_s + v) / c(s).
    The context (clean copy and its times) is a constant: under a JVP its tangent is zero.
    """
    t = trig_to_fm_time(s)
    v = student(x_s / trig_scale(_bc(s)), t, cond, actions, mode="teacher_forcing", clean=clean,
                clean_t=clean_t, zero_clean_tangent=zero_clean_tangent)
    return fm_to_trig_velocity(v, x_s, s)


def scm_tangent(student, x_s, s, dxds, cond, actions, clean, clean_t=None, reuse_primal: bool = True):
    """(F_theta, dF_theta/ds) along the PF-ODE: ``torch.func.jvp`` of the whole student with
    tangent (dx_s/ds, 1) on the noisy tokens and their times; the context is a constant.

    With ``reuse_primal`` the JVP's primal is returned for backward() (one fused pass per
    attention call); otherwise the JVP runs without grad and a second forward gives F.
    """
    def f(xs, ss):
        return trig_student(student, xs, ss, cond, actions, clean, clean_t)

    if reuse_primal:
        return torch.func.jvp(f, (x_s, s), (dxds, torch.ones_like(s)))
    with torch.no_grad():
        _, dFds = torch.func.jvp(f, (x_s, s), (dxds, torch.ones_like(s)))
    return f(x_s, s), dFds


def tf_scm_loss(student, teacher, x0, cond, actions, cfg: TrainConfig, dc, schedules, step: int):
    """TF-sCM: continuous-time consistency distillation in TrigFlow form, under teacher forcing.

    Per chunk s = arctan(t / (1 - t)) with t the teacher's logit-normal times; x_s = cos s x0
    + sin s eps. The teacher's guided PF-ODE velocity, converted to TrigFlow, is
    dx_s/ds = F_w(x_s, s) (clean context). One ``torch.func.jvp`` of the whole student
    F_theta(x_s, s) along the tangent (dx_s/ds on noisy tokens, 1 on noisy times; the clean
    context tokens and their times are constants, tangent 0) gives F and dF/ds. With
    theta^- = sg(theta), F^- = sg(F) and r the tangent warmup (0 -> 1 over
    ``scm_tangent_warmup`` steps):
        g = -cos^2(s) (F^- - dx_s/ds) - r cos(s) sin(s) (x_s + dF^-/ds)
        g <- g / (||g|| + c)             (per sample, a sample being one chunk)
        L = || F_theta - F^- - g ||^2     (gradient = -2 g at theta = theta^-)
    A NaN guard zeroes non-finite g. With ``reuse_primal`` the JVP's primal F (still
    differentiable by backward()) carries the gradient, so one fused pass per attention
    call serves both; otherwise a second forward computes F.
    Returns (loss, {"nonfinite": frames zeroed}).
    """
    net = getattr(student, "module", student)
    B, Fr = x0.shape[:2]
    t = chunk_times(net, B, Fr, cfg, x0.device).to(x0.dtype)
    s = fm_to_trig_time(t)
    eps = torch.randn_like(x0)
    x_s = torch.cos(_bc(s)) * x0 + torch.sin(_bc(s)) * eps
    v_w = teacher_velocity(teacher, x_s / trig_scale(_bc(s)), t, cond, actions, x0, dc.cfg_scale)
    dxds = fm_to_trig_velocity(v_w, x_s, s)
    ctx, ctx_t = student_context(net, x0, schedules, dc.noisy_context)

    F_theta, dFds = scm_tangent(student, x_s, s, dxds, cond, actions, ctx, ctx_t, dc.reuse_primal)
    F_minus, dFds = F_theta.detach(), dFds.detach()
    r = min(1.0, step / max(1, dc.scm_tangent_warmup))
    cs, sn = torch.cos(_bc(s)), torch.sin(_bc(s))
    g = -cs ** 2 * (F_minus - dxds) - r * cs * sn * (x_s + dFds)
    g, bad = _nan_guard(g)
    g = g / (_bc(per_chunk_norm(g, chunk_ids(net, Fr, x0.device))).to(g.dtype) + dc.scm_norm_c)
    loss = F.mse_loss(_wide(F_theta), _wide(F_minus + g))
    return loss, {"nonfinite": bad}


# ---- TF-MeanFlow -----------------------------------------------------------------------
def tf_meanflow_loss(student, teacher, x0, cond, actions, cfg: TrainConfig, dc, schedules):
    """TF-MeanFlow: the average velocity u(z, r, t) = (1 / (t - r)) int_r^t v(z_tau, tau) dtau.

    It satisfies u = v - (t - r) du/dt with du/dt = v . d_z u + d_t u (r held fixed), so
    one ``torch.func.jvp`` of the two-time student along the tangent (dz, dr, dt) =
    (v, 0, 1) gives u and du/dt. Per chunk t from the teacher's times, r = t (1 - U) for a
    share ``mf_r_fraction`` of chunks (else r = t, plain flow matching),
    z = (1 - t) x0 + t eps, v = the teacher's guided velocity (clean context):
        L = || u_theta(z, r, t) - sg(v - (t - r) du/dt) ||^2,
    NaN-guarded; the JVP's primal carries the gradient when ``reuse_primal``.
    A 1-step sample is x0 = eps - u(eps, 0, 1).
    """
    net = getattr(student, "module", student)
    if net.r_mlp is None:
        raise ValueError("TF-MeanFlow needs a two-time student (model.two_times=True)")
    B, Fr = x0.shape[:2]
    ids = chunk_ids(net, Fr, x0.device)
    t = chunk_times(net, B, Fr, cfg, x0.device).to(x0.dtype)
    nc = int(ids.max()) + 1
    gap = torch.rand(B, nc, device=x0.device) * (torch.rand(B, nc, device=x0.device) < dc.mf_r_fraction)
    r = t * (1 - gap[:, ids].to(x0.dtype))
    eps = torch.randn_like(x0)
    z = (1 - _bc(t)) * x0 + _bc(t) * eps
    v = teacher_velocity(teacher, z, t, cond, actions, x0, dc.cfg_scale)
    ctx, ctx_t = student_context(net, x0, schedules, dc.noisy_context)

    def u_fn(zz, rr, tt):
        return student(zz, tt, cond, actions, mode="teacher_forcing", clean=ctx, clean_t=ctx_t, r=rr,
                       zero_clean_tangent=True)

    tangents = (v, torch.zeros_like(r), torch.ones_like(t))
    if dc.reuse_primal:
        u, dudt = torch.func.jvp(u_fn, (z, r, t), tangents)
    else:
        with torch.no_grad():
            _, dudt = torch.func.jvp(u_fn, (z, r, t), tangents)
        u = u_fn(z, r, t)
    target, bad = _nan_guard((v - _bc(t - r) * dudt).detach())
    return F.mse_loss(_wide(u), _wide(target)), {"nonfinite": bad}


# ---- SF-DMD ----------------------------------------------------------------------------
def self_forcing_rollout(generator, cond, actions, num_frames: int, schedules, noisy_context: bool,
                         grad: bool = True):
    """On-policy autoregressive rollout of a few-step student with its KV cache.

    Chunk by chunk: start from noise, take the student's consistency steps (predict x0,
    re-noise to the next time) up to a random exit step k (one draw per chunk, shared by
    the batch); only the exit step's forward is recorded for backward(). The chunk's x0
    prediction there is its output; the context the next chunks see is that output,
    detached, re-encoded at t = 0 (or, with ``noisy_context``, re-noised to and encoded
    at the schedule's last non-zero time, which is what the sampler caches).
    Returns (B, F, 3, H, W) in model space.
    """
    from .sample import schedule_for_chunk
    net = getattr(generator, "module", generator)
    B, device = cond.shape[0], cond.device
    dtype = next(net.parameters()).dtype
    size = net.data_cfg.image_size
    cache = net.new_cache()
    outs, start = [], 0
    for b, nf in enumerate(net.pattern(num_frames).chunk_frames):
        ts = schedule_for_chunk(schedules, b)
        a = None if actions is None else actions[:, start:start + nf]
        k = int(torch.randint(len(ts) - 1, (1,)).item())
        x = torch.randn((B, nf, 3, size, size), device=device, dtype=dtype)
        for i in range(k + 1):
            tt = torch.full((B, nf), ts[i], device=device, dtype=dtype)
            with torch.set_grad_enabled(grad and i == k):
                x0_hat = x - ts[i] * net.forward_chunk(x, tt, cond, a, cache, write=False)
            if i < k:
                x = (1 - ts[i + 1]) * x0_hat + ts[i + 1] * torch.randn_like(x0_hat)
        with torch.no_grad():
            tc = ts[-2] if noisy_context else 0.0
            ctx = x0_hat.detach()
            if noisy_context:
                ctx = (1 - tc) * ctx + tc * torch.randn_like(ctx)
            net.forward_chunk(ctx, torch.full((B, nf), tc, device=device, dtype=dtype), cond, a, cache, write=True)
        outs.append(x0_hat)
        start += nf
    return torch.cat(outs, 1)


def sf_dmd_generator_loss(x_gen, teacher, fake, cond, actions, dc):
    """SF-DMD generator objective (distribution matching distillation on self-forced rollouts).

    x = the rollout (gradient through the exit-step forwards only). Per chunk t ~
    U[t_min, t_max], x_t = (1 - t) x + t eps; with x as the (detached) context,
        x0_real = x_t - t v_w^teacher(x_t, t)   (real score: the teacher with CFG),
        x0_fake = x_t - t v^fake(x_t, t)        (fake score: trained on rollouts),
        grad = (x0_fake - x0_real) / mean|x - x0_real|   (per clip, a NaN guard),
        L = 0.5 || x - sg(x - grad) ||^2,  so dL/dx = grad (mean-reduced).
    """
    net = getattr(fake, "module", fake)
    B, Fr = x_gen.shape[:2]
    ids = chunk_ids(net, Fr, x_gen.device)
    tc = dc.dmd_t_min + (dc.dmd_t_max - dc.dmd_t_min) * torch.rand(B, int(ids.max()) + 1, device=x_gen.device)
    t = tc[:, ids].to(x_gen.dtype)
    x = x_gen.detach()
    xt = (1 - _bc(t)) * x + _bc(t) * torch.randn_like(x)
    with torch.no_grad():
        x0_real = xt - _bc(t) * teacher_velocity(teacher, xt, t, cond, actions, x, dc.cfg_scale)
        x0_fake = xt - _bc(t) * fake(xt, t, cond, actions, mode="teacher_forcing", clean=x)
        norm = _wide(x - x0_real).abs().mean((1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        grad, bad = _nan_guard((_wide(x0_fake - x0_real) / norm).to(x.dtype))
    return 0.5 * F.mse_loss(_wide(x_gen), _wide((x_gen - grad).detach())), {"nonfinite": bad}


def sf_dmd_fake_loss(fake, x_gen, cond, actions, cfg: TrainConfig):
    """SF-DMD fake score: flow matching (teacher forcing, no condition dropout) on rollouts.

    x_t = (1 - t) x + t eps with x the detached rollout as data and as clean context;
        L = || v^fake(x_t, t | x) - (eps - x) ||^2.
    """
    net = getattr(fake, "module", fake)
    x = x_gen.detach()
    t = chunk_times(net, x.shape[0], x.shape[1], cfg, x.device)
    eps = torch.randn_like(x)
    xt = (1 - _bc(t)) * x + _bc(t) * eps
    v = fake(xt, t.to(x.dtype), cond, actions, mode="teacher_forcing", clean=x)
    return F.mse_loss(_wide(v), _wide(eps - x))


STUDENT_OBJECTIVES = ("tf_kd", "tf_dcm", "tf_scm", "tf_meanflow", "sf_dmd")
