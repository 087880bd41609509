"""Public API: forward AD runs the fused entry point once, the primal stays differentiable,
GQA / Sq != Sk / Dv != Dqk / empty rows / strides, and every error case."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import jvp_flash_attn as jfa
from conftest import naive_attention
from jvp_flash_attn import masks
from jvp_flash_attn.backends import get
from jvp_flash_attn.masks import FramePattern

F64 = dict(dtype=torch.float64)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.fixture
def counts(monkeypatch):
    """Count calls into the reference backend's three entry points."""
    cls = type(get("reference"))  # patch the class: undoing an instance patch would pin a bound method
    counter = {"forward": 0, "forward_jvp": 0, "backward": 0}
    for name in counter:
        original = getattr(cls, name)

        def wrapped(self, *a, _orig=original, _name=name, **kw):
            counter[_name] += 1
            return _orig(self, *a, **kw)
        monkeypatch.setattr(cls, name, wrapped)
    return counter


def problem(rng, sq=23, sk=None, hq=4, hk=2, d=8, dv=8, b=2):
    sk = sq if sk is None else sk
    mk = lambda *s: torch.randn(*s, generator=rng, **F64)
    q, k, v = mk(b, sq, hq, d), mk(b, sk, hk, d), mk(b, sk, hk, dv)
    return (q, k, v), (mk(*q.shape), mk(*k.shape), mk(*v.shape))


TF = masks.teacher_forcing(FramePattern(4, 5, 2, first_chunk_frames=1), window=2, sink=1)


def test_torch_func_jvp_runs_fused_once_per_call(rng, counts):
    (q, k, v), (tq, tk, tv) = problem(rng, sq=TF.sq)
    allowed = TF.dense()

    def model(q, k, v):
        h = jfa.attention(q, k, v, mask=TF, backend="reference")
        return jfa.attention(h.tanh(), k, v, mask=TF)

    o, to = torch.func.jvp(model, (q, k, v), (tq, tk, tv))
    assert counts == {"forward": 0, "forward_jvp": 2, "backward": 0}

    def naive_model(q, k, v):
        h = naive_attention(q, k, v, allowed)[0]
        return naive_attention(h.tanh(), k, v, allowed)[0]
    o_ref, to_ref = torch.func.jvp(naive_model, (q, k, v), (tq, tk, tv))
    close(o, o_ref)
    close(to, to_ref)


def test_forward_ad_dual_tensors_run_fused_once(rng, counts):
    (q, k, v), (tq, tk, tv) = problem(rng, sq=TF.sq)
    with fwAD.dual_level():
        dual = [fwAD.make_dual(x, t) for x, t in zip((q, k, v), (tq, tk, tv))]
        out = fwAD.unpack_dual(jfa.attention(*dual, mask=TF))
    assert counts["forward_jvp"] == 1 and counts["forward"] == 0
    o_ref, to_ref = torch.func.jvp(lambda *x: naive_attention(*x, TF.dense())[0], (q, k, v), (tq, tk, tv))
    close(out.primal, o_ref)
    close(out.tangent, to_ref)


def test_tangent_on_some_inputs_only(rng):
    (q, k, v), (tq, _, _) = problem(rng, sq=TF.sq)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(jfa.attention(fwAD.make_dual(q, tq), k, v, mask=TF))
    _, to_ref = torch.func.jvp(lambda q: naive_attention(q, k, v, TF.dense())[0], (q,), (tq,))
    close(out.tangent, to_ref)


def test_primal_of_jvp_is_differentiable(rng, counts):
    """One fused pass gives the sCM tangent and a primal that backward() differentiates."""
    (q, k, v), (tq, tk, tv) = problem(rng, sq=TF.sq)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o, to = torch.func.jvp(lambda *x: jfa.attention(*x, mask=TF), tuple(leaves), (tq, tk, tv))
    g = torch.randn_like(o)
    (o * g).sum().backward()
    assert counts == {"forward": 0, "forward_jvp": 1, "backward": 1}
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    torch.autograd.backward(naive_attention(*ref, TF.dense())[0], g)
    for a, b in zip(leaves, ref):
        close(a.grad, b.grad)


def test_plain_forward_and_backward(rng, counts):
    (q, k, v), _ = problem(rng, sq=TF.sq)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = jfa.attention(*leaves, mask=TF)
    o.square().sum().backward()
    assert counts == {"forward": 1, "forward_jvp": 0, "backward": 1}
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    naive_attention(*ref, TF.dense())[0].square().sum().backward()
    for a, b in zip(leaves, ref):
        close(a.grad, b.grad)


def test_attention_jvp_explicit(rng, counts):
    (q, k, v), t = problem(rng, sq=TF.sq)
    o, to = jfa.attention_jvp(q, k, v, *t, mask=TF)
    assert counts["forward_jvp"] == 1
    o_ref, to_ref = torch.func.jvp(lambda *x: naive_attention(*x, TF.dense())[0], (q, k, v), t)
    close(o, o_ref)
    close(to, to_ref)


@pytest.mark.parametrize("case", ["gqa", "mqa", "sq_ne_sk", "dv_ne_dqk", "kv_cache", "empty_rows", "strided"])
def test_shapes_and_masks(rng, case):
    mask, sq, sk, hq, hk, dv = None, 19, 19, 4, 2, 8
    if case == "mqa":
        hk = 1
    elif case == "sq_ne_sk":
        sq, sk = 7, 30
    elif case == "dv_ne_dqk":
        dv = 5
    elif case == "kv_cache":
        p = FramePattern(3, 7, 2)
        mask = masks.kv_cache(p, 2, window=2, sink=1)
        sq, sk = mask.sq, mask.sk
    elif case == "empty_rows":
        mask = masks.from_segments([4, 6, 9], [5, 14], [[0, 0], [2, 1], [1, 0]])
    (q, k, v), t = problem(rng, sq=sq, sk=sk, hq=hq, hk=hk, dv=dv)
    if case == "strided":  # q, k, v as views of one packed (B, S, 3, H, D) tensor
        qkv = torch.randn(2, sq, 3, hq, 8, **F64)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1, :hk], qkv[:, :, 2, :hk]
        t = tuple(torch.randn_like(x) for x in (q, k, v))
    allowed = (mask or masks.full(sq, sk)).dense()
    o, to = jfa.attention_jvp(q, k, v, *t, mask=mask)
    o_ref, to_ref = torch.func.jvp(lambda *x: naive_attention(*x, allowed)[0], (q, k, v), t)
    close(o, o_ref)
    close(to, to_ref)
    assert o.is_contiguous() and o.shape == (q.shape[0], sq, hq, v.shape[-1])
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    g = torch.randn_like(o)
    grads = torch.autograd.grad(jfa.attention(*leaves, mask=mask), leaves, g)
    refs = torch.autograd.grad(naive_attention(*leaves, allowed)[0], leaves, g)
    for a, b in zip(grads, refs):
        close(a, b)
    if case == "empty_rows":
        assert torch.all(o[:, :4] == 0) and torch.all(to[:, :4] == 0) and torch.all(grads[0][:, :4] == 0)


def test_default_scale_and_explicit_scale(rng):
    (q, k, v), _ = problem(rng)
    close(jfa.attention(q, k, v), naive_attention(q, k, v, masks.full(23, 23).dense())[0])
    close(jfa.attention(q, k, v, scale=0.3), naive_attention(q, k, v, masks.full(23, 23).dense(), 0.3)[0])


def test_backends_report_and_cli():
    status = jfa.backends()
    assert set(status) == {"cuda", "triton", "reference"} and status["reference"] is None
    assert all(r is None or isinstance(r, str) and r for r in status.values())
    from jvp_flash_attn.__main__ import report
    text = report()
    assert "torch" in text and "reference  available" in text


# ---- errors ------------------------------------------------------------------------------
def _qkv(**over):
    base = dict(q=torch.randn(1, 8, 2, 4), k=torch.randn(1, 8, 2, 4), v=torch.randn(1, 8, 2, 4))
    base.update(over)
    return base


@pytest.mark.parametrize("kwargs, exc, match", [
    (_qkv(q=torch.randn(8, 2, 4)), ValueError, "q must have rank 4"),
    (_qkv(k=[1, 2]), TypeError, "k must be a torch.Tensor"),
    (_qkv(v=torch.randn(2, 8, 2, 4)), ValueError, "batch sizes"),
    (_qkv(v=torch.randn(1, 9, 2, 4)), ValueError, "same sequence length"),
    (_qkv(v=torch.randn(1, 8, 1, 4)), ValueError, "same number of heads"),
    (_qkv(k=torch.randn(1, 8, 2, 5), v=torch.randn(1, 8, 2, 5)), ValueError, "head dim"),
    (_qkv(k=torch.randn(1, 8, 3, 4), v=torch.randn(1, 8, 3, 4)), ValueError, "multiple of k's heads"),
    (_qkv(q=torch.randn(1, 8, 4, 2).transpose(-1, -2)), ValueError, "unit stride"),
    (_qkv(k=torch.randn(1, 8, 2, 4, dtype=torch.float64)), TypeError, "share a dtype"),
    (_qkv(q=torch.randint(0, 3, (1, 8, 2, 4))), TypeError, "floating-point"),
    (dict(_qkv(), mask=masks.full(8, 9)), ValueError, "mask is 8 x 9"),
    (dict(_qkv(), mask=torch.ones(8, 8, dtype=torch.bool)), TypeError, "mask must be"),
    (dict(_qkv(), scale="0.5"), TypeError, "scale"),
    (dict(_qkv(), backend="bogus"), ValueError, "backend must be one of"),
])
def test_bad_input_raises(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        jfa.attention(**kwargs)


def test_unavailable_backend_says_why():
    if jfa.backends()["cuda"] is None:
        pytest.skip("the cuda backend is available here")
    with pytest.raises(jfa.BackendUnavailableError, match="backend 'cuda' cannot run"):
        jfa.attention(**_qkv(), backend="cuda")


def test_env_override(monkeypatch):
    monkeypatch.setenv("JFA_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        jfa.attention(**_qkv())


def test_bad_tangents():
    x = _qkv()
    with pytest.raises(ValueError, match="tq must have its primal's shape"):
        jfa.attention_jvp(*x.values(), torch.randn(1, 8, 2, 3), x["k"], x["v"])
    with pytest.raises(TypeError, match="tv must match its primal's dtype"):
        jfa.attention_jvp(*x.values(), x["q"], x["k"], x["v"].double())


def test_readme_docstring_example_runs():
    import doctest
    import jvp_flash_attn.api as api
    assert doctest.testmod(api).failed == 0


def test_automatic_choice_on_cpu_is_the_reference(monkeypatch):
    """Even where Triton's interpreter could run, CPU tensors go to the reference unless a
    backend is named."""
    from jvp_flash_attn.backends import select
    monkeypatch.delenv("JFA_BACKEND", raising=False)
    x = _qkv()
    assert select(None, x["q"], x["k"], x["v"]).name == "reference"
