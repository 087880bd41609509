"""The causal video DiT: shapes in every attention layout, KV-cache streaming equal to the
full-sequence passes (float64, exact up to rounding), and forward-mode AD of the whole model."""
import dataclasses

import pytest
import torch

from causal_rcm_min.config import preset
from causal_rcm_min.data import null_cond, sample_clips, to_model
from causal_rcm_min.model import CausalVideoDiT


# Whole-model tests run on jfa's reference backend (conftest.reference_backend).
pytestmark = pytest.mark.usefixtures("reference_backend")


LAYOUTS = {  # id -> model overrides
    "framewise": dict(frames_per_chunk=1),
    "chunkwise": dict(frames_per_chunk=2),
    "first3_then2": dict(frames_per_chunk=2, first_chunk_frames=3),
    "window2_sink1": dict(frames_per_chunk=1, window=2, sink=1),
    "chunk_window2": dict(frames_per_chunk=2, window=2),
}


def build(layout="chunkwise", action_mode=False, dtype=torch.float64, seed=0):
    cfg = preset("tiny")
    model_cfg = dataclasses.replace(cfg.model, **LAYOUTS[layout])
    data_cfg = dataclasses.replace(cfg.data, action_mode=action_mode, num_frames=5)
    torch.manual_seed(seed)
    model = CausalVideoDiT(model_cfg, data_cfg).to(dtype)
    with torch.no_grad():   # leave adaLN-Zero's zero start so every path carries signal
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    clips = sample_clips(2, data_cfg, seed=seed)
    return model, clips


def inputs(model, clips, dtype=torch.float64):
    x0 = to_model(clips.frames).to(dtype)
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(x0.shape, generator=g, dtype=dtype)
    pattern = model.pattern(x0.shape[1])
    tc = torch.rand(x0.shape[0], pattern.num_chunks, generator=g, dtype=dtype)
    t = torch.repeat_interleave(tc, torch.tensor(pattern.chunk_frames), dim=1)
    actions = clips.actions if model.action_embed is not None else None
    return x0, noisy, t, actions


@pytest.mark.parametrize("action_mode", [False, True], ids=["scene", "actions"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_shapes_every_mode(layout, action_mode):
    model, clips = build(layout, action_mode, torch.float32)
    x0, noisy, t, actions = inputs(model, clips, torch.float32)
    for mode in ("full", "block_causal"):
        assert model(noisy, t, clips.cond, actions, mode=mode).shape == x0.shape
    out = model(noisy, t, null_cond(2), actions, mode="teacher_forcing", clean=x0)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    cache = model.new_cache()
    nf = model.pattern(x0.shape[1]).chunk_frames[0]
    a = None if actions is None else actions[:, :nf]
    assert model.forward_chunk(noisy[:, :nf], t[:, :nf], clips.cond, a, cache, write=True).shape == x0[:, :nf].shape
    assert cache.num_chunks == 1 and cache.next_frame == nf


def _stream(model, clips, chunks_in, t, context, actions):
    """Run chunk by chunk; ``context`` gives what each finished chunk leaves in the cache."""
    cache, outs, start = model.new_cache(), [], 0
    for nf in model.pattern(t.shape[1]).chunk_frames:
        sl = slice(start, start + nf)
        a = None if actions is None else actions[:, sl]
        if context is None:   # the chunk's own noisy K/V are the context (block-causal)
            outs.append(model.forward_chunk(chunks_in[:, sl], t[:, sl], clips.cond, a, cache, write=True))
        else:                 # the clean chunk re-encoded at t = 0 is the context (teacher forcing)
            outs.append(model.forward_chunk(chunks_in[:, sl], t[:, sl], clips.cond, a, cache, write=False))
            model.forward_chunk(context[:, sl], torch.zeros_like(t[:, sl]), clips.cond, a, cache, write=True)
        start += nf
    return torch.cat(outs, 1)


@pytest.mark.parametrize("action_mode", [False, True], ids=["scene", "actions"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_kv_cache_streaming_equals_full_sequence(layout, action_mode):
    model, clips = build(layout, action_mode)
    x0, noisy, t, actions = inputs(model, clips)
    tf = model(noisy, t, clips.cond, actions, mode="teacher_forcing", clean=x0)
    torch.testing.assert_close(_stream(model, clips, noisy, t, x0, actions), tf, rtol=1e-12, atol=1e-12)
    bc = model(noisy, t, clips.cond, actions, mode="block_causal")
    torch.testing.assert_close(_stream(model, clips, noisy, t, None, actions), bc, rtol=1e-12, atol=1e-12)


def test_rolling_cache_keeps_only_visible_chunks():
    model, clips = build("window2_sink1")
    x0, noisy, t, _ = inputs(model, clips)
    cache = model.new_cache()
    for f in range(x0.shape[1]):
        model.forward_chunk(x0[:, f:f + 1], t[:, f:f + 1], clips.cond, None, cache, write=True)
    assert cache.visible() == [0, x0.shape[1] - 1]   # sink chunk 0 and the last chunk (window 2)


def test_causality():
    """Changing a later chunk never changes an earlier chunk's output."""
    model, clips = build("chunkwise")
    x0, noisy, t, _ = inputs(model, clips)
    late = noisy.clone()
    late[:, -1] += 1.0
    n = model.pattern(x0.shape[1]).chunk_frames[0]
    for mode, kw in (("block_causal", {}), ("teacher_forcing", {"clean": x0})):
        a = model(noisy, t, clips.cond, mode=mode, **kw)
        b = model(late, t, clips.cond, mode=mode, **kw)
        torch.testing.assert_close(a[:, :n], b[:, :n], rtol=0, atol=1e-14)
        assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3
    full_a, full_b = model(noisy, t, clips.cond, mode="full"), model(late, t, clips.cond, mode="full")
    assert (full_a[:, :n] - full_b[:, :n]).abs().max() > 1e-6


@pytest.mark.parametrize("mode", ["teacher_forcing", "block_causal", "full"])
def test_jvp_matches_finite_differences_and_vjp(mode):
    model, clips = build("chunkwise", action_mode=True)
    x0, noisy, t, actions = inputs(model, clips)
    kw = {"clean": x0} if mode == "teacher_forcing" else {}

    def f(x, tt):
        return model(x, tt, clips.cond, actions, mode=mode, **kw)

    g = torch.Generator().manual_seed(2)
    dx = torch.randn(noisy.shape, generator=g, dtype=torch.float64)
    dt = torch.randn(t.shape, generator=g, dtype=torch.float64)
    out, tangent = torch.func.jvp(f, (noisy, t), (dx, dt))
    torch.testing.assert_close(out, f(noisy, t), rtol=1e-12, atol=1e-12)
    eps = 1e-7   # central differences in float64; the 1000 t timestep features curve fast
    fd = (f(noisy + eps * dx, t + eps * dt) - f(noisy - eps * dx, t - eps * dt)) / (2 * eps)
    assert ((tangent - fd).norm() / tangent.norm()).item() < 1e-6
    # <J v, w> == <v, J^T w> with the reverse-mode pass
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    _, vjp = torch.func.vjp(f, noisy, t)
    gx, gt = vjp(w)
    torch.testing.assert_close((tangent * w).sum(), (gx * dx).sum() + (gt * dt).sum(), rtol=1e-10, atol=1e-10)


def test_bad_input():
    model, clips = build("chunkwise", dtype=torch.float32)
    x0, noisy, t, _ = inputs(model, clips, torch.float32)
    with pytest.raises(ValueError, match="mode"):
        model(noisy, t, clips.cond, mode="sideways")
    with pytest.raises(ValueError, match="clean"):
        model(noisy, t, clips.cond, mode="teacher_forcing")
    with pytest.raises(ValueError, match="^t "):
        model(noisy, t[:, :2], clips.cond)
    with pytest.raises(ValueError, match="cond"):
        model(noisy, t, clips.cond[:, :2])
    with pytest.raises(ValueError, match="actions"):
        model(noisy, t, clips.cond, clips.actions)
    with pytest.raises(ValueError, match="x must"):
        model(noisy[..., :8], t, clips.cond)


def test_jvp_runs_the_fused_attention_jvp(monkeypatch):
    """Under torch.func.jvp every attention call goes through the backend's fused forward+JVP."""
    from jvp_flash_attn.backends.reference_backend import ReferenceBackend

    model, clips = build("chunkwise")
    x0, noisy, t, _ = inputs(model, clips)
    calls = []
    fused = ReferenceBackend.forward_jvp
    monkeypatch.setattr(ReferenceBackend, "forward_jvp", lambda self, *a: calls.append(1) or fused(self, *a))
    torch.func.jvp(lambda x: model(x, t, clips.cond, mode="teacher_forcing", clean=x0), (noisy,), (noisy,))
    assert len(calls) == model.cfg.depth


@pytest.mark.slow
def test_triton_backend_matches_reference(monkeypatch):
    """One whole-model forward and JVP through jfa's Triton kernels (the interpreter on a CPU)."""
    import jvp_flash_attn as jfa

    if jfa.backends()["triton"] is not None:
        pytest.skip(f"triton backend unavailable: {jfa.backends()['triton']}")
    model, clips = build("chunkwise", dtype=torch.float32)
    x0, noisy, t, _ = inputs(model, clips, torch.float32)

    def run():
        return torch.func.jvp(lambda x: model(x, t, clips.cond, mode="teacher_forcing", clean=x0), (noisy,), (x0,))

    ref_out, ref_tan = run()
    monkeypatch.setenv("JFA_BACKEND", "triton")
    out, tan = run()
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tan, ref_tan, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_fused_pointwise_pieces_equal_eager():
    """Each compiled piece gives the eager piece's values and gradients (float64; inductor on a CPU)."""
    from causal_rcm_min import pointwise

    fused = pointwise.Pointwise(True)
    g = torch.Generator().manual_seed(3)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    B, Fr, T, H, D = 2, 3, 5, 2, 8
    cases = {
        "modulated_layer_norm": (rnd(B, Fr, T, H * D), rnd(B, Fr, 1, H * D), rnd(B, Fr, 1, H * D)),
        "gated_add": (rnd(B, Fr, T, H * D), rnd(B, Fr, 1, H * D), rnd(B, Fr, T, H * D)),
        "qk_norm_rope": (rnd(B, Fr * T, H, D), rnd(B, Fr * T, H, D), rnd(D), rnd(D),
                         torch.rand(Fr * T, D // 2, dtype=torch.float64, generator=g).cos(),
                         torch.rand(Fr * T, D // 2, dtype=torch.float64, generator=g).sin(), torch.float64),
    }
    from torch._dynamo.utils import counters
    graphs = counters["stats"]["unique_graphs"]
    for name, args in cases.items():
        outs = {}
        for kind, fn in (("eager", getattr(pointwise.EAGER, name)), ("fused", getattr(fused, name))):
            out = fn(*args)
            out = out if isinstance(out, tuple) else (out,)
            leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            grads = torch.autograd.grad(sum((o * (i + 1)).sum() for i, o in enumerate(out)), leaves)
            outs[kind] = (*out, *grads)
        assert len(outs["fused"]) == len(outs["eager"])
        for a, b in zip(outs["fused"], outs["eager"]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert counters["stats"]["unique_graphs"] > graphs, "nothing was compiled"


@pytest.mark.slow
def test_fused_model_keeps_tangents_under_forward_ad():
    """A model switched to fused pieces runs the eager ones while tangents are carried (compiled code
    would drop them): torch.func.jvp and forward_ad give the eager model's tangent."""
    from torch.autograd import forward_ad

    model, clips = build("chunkwise")
    x0, noisy, t, _ = inputs(model, clips)

    def f(x):
        return model(x, t, clips.cond, mode="teacher_forcing", clean=x0)

    _, ref = torch.func.jvp(f, (noisy,), (x0,))
    model.fused = True   # as fuse_pointwise sets it on a GPU; inductor also runs on a CPU
    _, tan = torch.func.jvp(f, (noisy,), (x0,))
    torch.testing.assert_close(tan, ref, rtol=0, atol=0)
    with forward_ad.dual_level():
        tan_ad = forward_ad.unpack_dual(f(forward_ad.make_dual(noisy, x0))).tangent
    assert tan_ad is not None
    torch.testing.assert_close(tan_ad, ref, rtol=1e-12, atol=1e-12)
    # The switch itself: with a dual level open, the pieces handed out are the eager ones (a
    # compiled piece called on dual tensors returns a plain tensor).
    from causal_rcm_min import pointwise
    with forward_ad.dual_level():
        d = forward_ad.make_dual(noisy, x0)
        assert pointwise.pieces(True) is pointwise.EAGER
        assert forward_ad.unpack_dual(pointwise.pieces(True).gated_add(d, 2.0, noisy)).tangent is not None
    assert pointwise.pieces(True) is not pointwise.EAGER


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fusion is used on a GPU only")
def test_fused_model_matches_eager_on_gpu():
    """The whole model with fused pieces: the forward and the parameter gradients of the eager model
    (bf16 autocast, so within bf16 rounding), and a CPU model ignores the switch."""
    cpu_model, _ = build("chunkwise", dtype=torch.float32)
    assert not cpu_model.fuse_pointwise(True).fused
    model, clips = build("chunkwise", dtype=torch.float32)
    model = model.cuda()
    assert model.fuse_pointwise(True).fused
    x0, noisy, t, _ = inputs(model, clips, torch.float32)
    x0, noisy, t = x0.cuda(), noisy.cuda(), t.cuda()
    cond = clips.cond.cuda()

    def run(fused):
        model.fuse_pointwise(fused)
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(noisy, t, cond, mode="teacher_forcing", clean=x0)
        out.float().square().mean().backward()
        return out.float(), [p.grad.clone() for p in model.parameters()]

    ref, ref_grads = run(False)
    out, grads = run(True)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads):
        rel = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        assert rel < 2e-2, f"{name}: relative gradient difference {rel:.3g}"
