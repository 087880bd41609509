"""The diffusers adapter on a tiny random-weight WanTransformer3DModel (no downloads).

The oracle is the same model with diffusers' own WanAttnProcessor on SDPA's math backend,
handed a dense boolean mask (and, for teacher forcing, RoPE positions duplicated by a hook
written here): whole-model torch.func.jvp, forward_ad and backward() must agree. The models
run in float64, but diffusers rounds through float32 in places (FP32LayerNorm, the blocks'
residual and modulation arithmetic, the sinusoidal timestep embedding), so agreement is
checked at 1e-6 relative rather than at float64's 1e-13. Causality is checked exactly.
"""
import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.models.transformers.transformer_wan import WanAttnProcessor  # noqa: E402

from conftest import assert_within_rule  # noqa: E402
from jvp_flash_attn import masks  # noqa: E402
from jvp_flash_attn.integrations import diffusers as jd  # noqa: E402

FRAMES, FPC, TEXT = 4, 2, 5  # latent frames, frames per chunk, text tokens
TF_MASK = lambda f, n: masks.teacher_forcing(masks.FramePattern(n, f, FPC))  # noqa: E731
BC_MASK = lambda f, n: masks.block_causal(masks.FramePattern(n, f, FPC))  # noqa: E731


def tiny_wan(heads=2, head_dim=12, layers=2, **extra):
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
        rope_max_seq_len=32, **extra)


@pytest.fixture(scope="module")
def model():
    return tiny_wan().double().eval()


def _inputs(seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    clean, noisy = mk(1, 4, FRAMES, 4, 6), mk(1, 4, FRAMES, 4, 6)  # 2 x 3 = 6 tokens per frame
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)[None].repeat_interleave(FPC, 1).to(device, dtype) * 1000
    return clean, noisy, t, mk(1, TEXT, 16), (mk(*noisy.shape), torch.ones_like(t)), mk(*noisy.shape)


class DenseMath:
    """diffusers' own processor on SDPA's math backend, with a dense self-attention mask."""

    def __init__(self, dense):
        self.inner, self.dense = WanAttnProcessor(), dense
        self.inner._attention_backend = "_native_math"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        mask = self.dense if encoder_hidden_states is None else None
        return self.inner(attn, hidden_states, encoder_hidden_states, mask, rotary_emb)


def _duplicate_positions(rope, args, output):
    """Teacher forcing by hand: both copies at the first copy's RoPE positions."""
    half = rope.forward(args[0][:, :, : args[0].shape[2] // 2])
    return tuple(torch.cat([f, f], dim=1) for f in half)


def oracle(model, mask, packed):
    """A copy of the model on diffusers' own attention under the dense mask."""
    ref = copy.deepcopy(model)
    ref.set_attn_processor(DenseMath(mask.dense(next(model.parameters()).device)))
    if packed:
        ref.rope.register_forward_hook(_duplicate_positions)
    return ref


def _runs(model, mode, backend="reference"):
    """(model with jfa's processors, f_fast(clean, x, t, text), the mask, f_ref(oracle, clean, x,
    t, text)): the output for noisy latents x at per-frame times t, (B, C, F, H, W)."""
    fast = jd.apply(copy.deepcopy(model), TF_MASK if mode == "teacher_forcing" else BC_MASK, backend)
    n = 6 * FRAMES  # tokens of one copy
    if mode == "teacher_forcing":
        mask = TF_MASK(FRAMES, 6)

        def f_fast(clean, x, t, text):
            return jd.teacher_forcing(fast, clean, x, t, text)

        def f_ref(ref, clean, x, t, text):  # the packing written out: per-token times, clean at t=0
            tt = torch.cat([torch.zeros_like(t), t], 1).repeat_interleave(6, dim=1)
            return ref(torch.cat([clean, x], 2), tt, text).sample[:, :, FRAMES:]
    else:
        mask = BC_MASK(FRAMES, 6)

        def f_fast(clean, x, t, text):
            return fast(x, t.repeat_interleave(6, dim=1), text).sample

        def f_ref(ref, clean, x, t, text):
            return ref(x, t.repeat_interleave(6, dim=1), text).sample
    assert mask.sq == (2 * n if mode == "teacher_forcing" else n)
    return fast, f_fast, mask, f_ref


def _close(name, got, want, tol=1e-6):
    err = ((got - want).norm() / want.norm()).item()
    assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("mode", ["block_causal", "teacher_forcing"])
def test_whole_model_jvp_forward_ad_backward_match_dense_math(model, mode):
    seed = torch.seed() % 2 ** 31
    clean, x, t, text, (dx, dt), g = _inputs(seed)
    _, f_fast, mask, f_ref = _runs(model, mode)
    ref = oracle(model, mask, mode == "teacher_forcing")
    o_ref, to_ref = torch.func.jvp(lambda x, t: f_ref(ref, clean, x, t, text), (x, t), (dx, dt))
    xr = x.clone().requires_grad_()
    f_ref(ref, clean, xr, t, text).backward(g)

    o, to = torch.func.jvp(lambda x, t: f_fast(clean, x, t, text), (x, t), (dx, dt))
    _close(f"o (seed {seed})", o, o_ref)
    _close("tangent, torch.func.jvp", to, to_ref)

    xf = x.clone().requires_grad_()
    with fwAD.dual_level():  # dual tensors; the primal stays differentiable by backward()
        o, to = fwAD.unpack_dual(f_fast(clean, fwAD.make_dual(xf, dx), fwAD.make_dual(t, dt), text))
        _close("tangent, forward_ad", to, to_ref)
    o.backward(g)  # outside the dual level: torch has no forward AD of some backward ops (silu)
    _close("d loss / d x", xf.grad, xr.grad)


@pytest.mark.parametrize("mode", ["block_causal", "teacher_forcing"])
def test_parameter_gradients_match_dense_math(model, mode):
    clean, x, t, text, _, g = _inputs(torch.seed() % 2 ** 31)
    fast, f_fast, mask, f_ref = _runs(model, mode)
    ref = oracle(model, mask, mode == "teacher_forcing")
    f_ref(ref, clean, x, t, text).backward(g)
    f_fast(clean, x, t, text).backward(g)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        _close(f"d loss / d {name}", p.grad, q.grad)


def _causality_cases():
    """(mode, which input to perturb, frame, output frames that must not change)."""
    return [
        ("block_causal", "noisy", 2, slice(0, 2)),      # chunk 1 (frames 2-3) is after chunk 0
        ("teacher_forcing", "noisy", 2, slice(0, 2)),   # noisy chunk 1 is invisible to noisy chunk 0
        ("teacher_forcing", "clean", 2, slice(0, 4)),   # noisy chunk b sees clean chunks < b only:
                                                        # the last clean chunk reaches no output
        ("teacher_forcing", "clean", 0, slice(0, 2)),   # ... so clean chunk 0 reaches noisy chunk 1
    ]


@pytest.mark.parametrize("mode,which,frame,unchanged", _causality_cases())
def test_causality(model, mode, which, frame, unchanged):
    clean, x, t, text, _, _ = _inputs(torch.seed() % 2 ** 31)
    _, f_fast, _, _ = _runs(model, mode)
    with torch.no_grad():
        before = f_fast(clean, x, t, text)
        bumped = (clean if which == "clean" else x).clone()
        bumped[:, :, frame] += torch.randn_like(bumped[:, :, frame])
        after = f_fast(bumped, x, t, text) if which == "clean" else f_fast(clean, bumped, t, text)
    assert torch.equal(after[:, :, unchanged], before[:, :, unchanged])
    changed = [f for f in range(FRAMES) if f not in range(FRAMES)[unchanged]]
    if changed:  # and the perturbation does reach the frames allowed to see it
        assert not torch.equal(after[:, :, changed], before[:, :, changed])


def test_teacher_forcing_gives_the_noisy_copy_the_clean_positions(model):
    """With noisy = clean at the clean copy's time, noisy chunk b attends to exactly what clean
    chunk b does (clean chunks < b and an identical copy of chunk b), so it must reproduce the
    unpacked block-causal output; numbering the noisy frames F..2F-1 would not."""
    clean, _, _, text, _, _ = _inputs(torch.seed() % 2 ** 31)
    fast = jd.apply(copy.deepcopy(model), BC_MASK, backend="reference")
    with torch.no_grad():
        plain = fast(clean, torch.full((1, 6 * FRAMES), 400.0, dtype=torch.float64), text).sample
        packed = jd.teacher_forcing(fast, clean, clean, 400.0, text, clean_timestep=400.0, mask_for=TF_MASK)
    _close("noisy copy vs unpacked", packed, plain, tol=1e-12)


def test_remove_restores_diffusers_processors(model):
    fast = copy.deepcopy(model)
    before = dict(fast.attn_processors)
    x, text = torch.randn(1, 4, FRAMES, 4, 6, dtype=torch.float64), torch.randn(1, TEXT, 16, dtype=torch.float64)
    t = torch.tensor([300.0], dtype=torch.float64)
    with torch.no_grad():
        want = fast(x, t, text).sample
        jd.apply(fast, masks.full(6 * FRAMES, 6 * FRAMES), backend="reference")  # a fixed mask
        assert all(type(p) is jd.JfaWanAttnProcessor for p in fast.attn_processors.values())
        _close("full mask vs diffusers' own attention", fast(x, t, text).sample, want, tol=1e-12)
        jd.remove(fast)
        assert fast.attn_processors == before
        assert torch.equal(fast(x, t, text).sample, want)
        assert not fast.rope._forward_hooks


def test_image_cross_attention_matches_dense_math():
    """I2V: the added image tokens are attended unmasked, next to the text."""
    wan = tiny_wan(image_dim=8, added_kv_proj_dim=24).double().eval()
    g = torch.Generator().manual_seed(torch.seed() % 2 ** 31)
    x = torch.randn(1, 4, FRAMES, 4, 6, generator=g, dtype=torch.float64)
    text = torch.randn(1, 512, 16, generator=g, dtype=torch.float64)  # diffusers fixes 512 text tokens
    image = torch.randn(1, 3, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([300.0], dtype=torch.float64)
    ref = oracle(wan, BC_MASK(FRAMES, 6), packed=False)
    with torch.no_grad():
        want = ref(x, t, text, encoder_hidden_states_image=image).sample
    fast = jd.apply(wan, BC_MASK, backend="reference")
    with torch.no_grad():
        _close("I2V output", fast(x, t, text, encoder_hidden_states_image=image).sample, want)


def test_errors_name_the_argument(model):
    fast = copy.deepcopy(model)
    x, text = torch.randn(1, 4, FRAMES, 4, 6, dtype=torch.float64), torch.randn(1, TEXT, 16, dtype=torch.float64)
    t = torch.tensor([300.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="apply"):
        jd.teacher_forcing(fast, x, x, t, text)
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        jd.apply(torch.nn.Linear(2, 2), BC_MASK)
    with pytest.raises(TypeError, match="mask_for"):
        jd.apply(fast, "block_causal")
    jd.apply(fast, TF_MASK, backend="reference")
    with pytest.raises(ValueError, match="48 x 48, but the transformer's sequence has 24 tokens"):
        fast(x, t, text)  # a teacher-forcing mask on an unpacked call
    jd.apply(fast, lambda f, n: None)
    with pytest.raises(TypeError, match="must return a jvp_flash_attn.masks mask"):
        fast(x, t, text)
    jd.apply(fast, TF_MASK, backend="reference")
    with pytest.raises(ValueError, match=r"timestep must be a number, shape \(1,\) or \(1, 4\)"):
        jd.teacher_forcing(fast, x, x, torch.ones(1, 3), text)
    with pytest.raises(ValueError, match="clean and noisy"):
        jd.teacher_forcing(fast, x, x[:, :, :2], t, text)
    jd.remove(fast)
    with pytest.raises(ValueError, match="apply"):
        jd.remove(fast)


def _like_pretrained(wan, dtype):
    """Parameters in ``dtype`` except the modules diffusers keeps in float32 when it loads a
    checkpoint in a low precision (``_keep_in_fp32_modules``); buffers (RoPE tables) untouched."""
    for name, p in wan.named_parameters():
        if not any(k in name.split(".") for k in wan._keep_in_fp32_modules):
            p.data = p.data.to(dtype)
    return wan


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["block_causal", "teacher_forcing"])
def test_bf16_on_gpu_within_rule(mode):
    """bf16 model with jfa's default backend against the float64 oracle (the same rounded
    weights and inputs), under the tolerance rule: at most 2x the error of diffusers' own
    attention (SDPA math with the dense mask) in bf16, for the output, its tangent and dL/dx."""
    low = _like_pretrained(tiny_wan(heads=2, head_dim=64), torch.bfloat16).cuda().eval()
    seed = torch.seed() % 2 ** 31
    clean, x, t, text, (dx, dt), g = _inputs(seed, torch.bfloat16, "cuda")
    f64 = lambda a: a.double()  # noqa: E731
    results = {}
    _, f_fast, mask, f_ref = _runs(low, mode, backend=None)
    for name, net, cast in (("oracle", copy.deepcopy(low).double(), f64), ("bf16 math", low, None)):
        ref = oracle(net, mask, mode == "teacher_forcing")
        c, xx, tt, tx, ddx, ddt, gg = [cast(a) if cast else a for a in (clean, x, t, text, dx, dt, g)]
        o, to = torch.func.jvp(lambda a, b: f_ref(ref, c, a, b, tx), (xx, tt), (ddx, ddt))
        leaf = xx.clone().requires_grad_()
        f_ref(ref, c, leaf, tt, tx).backward(gg)
        results[name] = (o, to, leaf.grad)
    o, to = torch.func.jvp(lambda a, b: f_fast(clean, a, b, text), (x, t), (dx, dt))
    leaf = x.clone().requires_grad_()
    f_fast(clean, leaf, t, text).backward(g)
    for i, name in enumerate(["o", "tangent", "dL/dx"]):
        got = (o, to, leaf.grad)[i]
        assert_within_rule(f"{mode} {name} (seed {seed})", got, results["oracle"][i], results["bf16 math"][i])
