"""Who computes what: each provider turns (op, inputs) into a zero-argument callable to time.

Ops: ``fwd`` (o), ``bwd`` (dq, dk, dv from a stored forward, timed alone) and ``jvp``
(o and its tangent to in one call). Every prepared op returns its outputs in our
(B, S, H, D) layout through ``Prepared.outputs`` so the checks see one layout; the
conversion is not timed.

Providers:
- ``cuda``, ``triton``, ``reference``: jfa.attention (fwd, bwd) and jfa.attention_jvp (jvp)
  with that backend.
- ``flex``: torch.compile(flex_attention) with the mask_mod a user writes from the frame
  pattern (bench.flex; fwd, bwd: it has no forward-AD rule, so no jvp).
- ``flex-flash``: the same BlockMask on FlashAttention-4's kernels (kernel_options
  BACKEND=FLASH; needs the flash-attn-4 package and a Hopper GPU).
- ``cudnn``: SDPA's cuDNN backend on full masks (no mask): the unmasked ceiling.
- ``sdpa``: F.scaled_dot_product_attention with the dense (Sq, Sk) boolean mask, backend
  chosen by PyTorch (fwd, bwd), where the mask fits in memory.
- ``math-jvp``: torch.func.jvp through SDPA's math backend with the dense mask (jvp), where
  its S x S intermediates fit in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import bench  # noqa: F401
import jvp_flash_attn as jfa
from bench import flex as flexmod

OPS = ("fwd", "bwd", "jvp")  # what providers implement; bench.run's jvp_hinted is a jvp on other inputs


@dataclass
class Inputs:
    """Random inputs of one measurement, (B, S, H, D); ``do`` is the output gradient."""

    mask: object
    scale: float
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    tq: torch.Tensor
    tk: torch.Tensor
    tv: torch.Tensor
    do: torch.Tensor
    recipe: object = None  # bench.workloads.Recipe of the mask, when it came from a builder

    @staticmethod
    def draw(mask, batch, heads_q, heads_k, d_qk, d_v, dtype, device, generator=None, recipe=None):
        def rnd(s, h, d):
            x = torch.randn(batch, s, h, d, generator=generator, device=device, dtype=torch.float32)
            return x.to(dtype)
        sq, sk = mask.sq, mask.sk
        return Inputs(mask, d_qk ** -0.5, rnd(sq, heads_q, d_qk), rnd(sk, heads_k, d_qk), rnd(sk, heads_k, d_v),
                      rnd(sq, heads_q, d_qk), rnd(sk, heads_k, d_qk), rnd(sk, heads_k, d_v),
                      rnd(sq, heads_q, d_v), recipe)

    def with_zero_tangents(self, q_ranges, k_ranges) -> "Inputs":
        """The same inputs with tangents zeroed in these token ranges and the mask carrying
        the matching hint (a speed hint only: results must not change)."""
        tq, tk, tv = self.tq.clone(), self.tk.clone(), self.tv.clone()
        for a, b in q_ranges:
            tq[:, a:b] = 0
        for a, b in k_ranges:
            tk[:, a:b] = 0
            tv[:, a:b] = 0
        mask = self.mask.with_zero_tangents(q_ranges, k_ranges)
        return Inputs(mask, self.scale, self.q, self.k, self.v, tq, tk, tv, self.do, self.recipe)


@dataclass
class Prepared:
    fn: Callable[[], object]                    # what is timed
    outputs: Callable[[object], tuple]          # fn's result -> outputs in (B, S, H, D)


def _free_bytes(device) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free


def _fits(need: int, device, what: str) -> str | None:
    free = _free_bytes(device)
    if free is not None and need > 0.9 * free:
        return f"{what} needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def dense_mask(mask, device, rows: int = 2048) -> torch.Tensor:
    """(Sq, Sk) bool mask built block of rows by block of rows, so building it needs about
    one extra block of memory rather than several S x S temporaries."""
    out = torch.empty(mask.sq, mask.sk, dtype=torch.bool, device=device)
    for r0 in range(0, mask.sq, rows):
        r1 = min(r0 + rows, mask.sq)
        out[r0:r1] = mask.dense_rows(r0, r1, device)
    return out


def _leaf(x):
    return x.detach().requires_grad_(True)


class Provider:
    name = "base"
    ops: tuple[str, ...] = ()

    def availability(self, device) -> str | None:
        """None if it can run on ``device``, else why not."""
        return None

    def unsupported(self, op, inp) -> str | None:
        """None if it can run ``op`` on these inputs (memory, shapes), else why not."""
        return None if op in self.ops else f"{self.name} has no {op}"

    def prepare(self, op, inp: Inputs) -> Prepared:
        raise NotImplementedError


# Backward forms of the cuda backend a provider can pin: name -> (the ``deterministic`` argument
# that selects it, the ops it concerns). The provider is then cuda-<name> and times those ops alone.
CUDA_FORMS = {
    "fused": (False, ("bwd",)),          # the one-kernel backward (the Hopper default)
    "deterministic": (True, ("bwd",)),   # the bitwise-repeatable backward (on Hopper: fused, dQ in key-tile order)
}


class JfaProvider(Provider):
    """One of our backends through the public API; ``form`` pins one of the cuda backend's
    CUDA_FORMS (provider name cuda-<form>, that form's ops only)."""

    ops = OPS

    def __init__(self, backend: str, form: str | None = None):
        self.backend = backend
        self.form = form
        self.name = backend if form is None else f"{backend}-{form}"
        if form is not None:
            self.ops = CUDA_FORMS[form][1]

    def availability(self, device):
        why = jfa.backends().get(self.backend, f"unknown backend {self.backend!r}")
        if why is None and self.backend != "reference" and device.type != "cuda" \
                and not _triton_interpret(self.backend):
            return f"{self.backend} needs a GPU here"
        return why

    def unsupported(self, op, inp):
        why = super().unsupported(op, inp)
        if why is None:
            from jvp_flash_attn.backends import get
            why = get(self.backend).unsupported(inp.q, inp.k, inp.v)
        return why

    def prepare(self, op, inp):
        mask, scale, be = inp.mask, inp.scale, self.backend
        deterministic = None if self.form is None else CUDA_FORMS[self.form][0]
        if op == "fwd":
            def fwd():
                with torch.no_grad():
                    return jfa.attention(inp.q, inp.k, inp.v, mask=mask, scale=scale, backend=be)
            return Prepared(fwd, lambda o: (o,))
        if op == "bwd":
            q, k, v = _leaf(inp.q), _leaf(inp.k), _leaf(inp.v)
            o = jfa.attention(q, k, v, mask=mask, scale=scale, backend=be, deterministic=deterministic)

            def bwd():
                return torch.autograd.grad(o, (q, k, v), inp.do, retain_graph=True)
            return Prepared(bwd, tuple)
        if op == "jvp":
            def jvp():
                with torch.no_grad():
                    return jfa.attention_jvp(inp.q, inp.k, inp.v, inp.tq, inp.tk, inp.tv,
                                             mask=mask, scale=scale, backend=be)
            return Prepared(jvp, tuple)
        raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _triton_interpret(name) -> bool:
    return name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def _bhsd(x, grad=False):
    x = x.transpose(1, 2).contiguous()
    return x.requires_grad_(True) if grad else x


def _bshd(x):
    return x.transpose(1, 2)


def _prepare_bhsd(name, op, inp, attend) -> Prepared:
    """fwd or bwd of ``attend(q, k, v)`` (a peer's call on (B, H, S, D) copies of the inputs),
    its outputs handed back in our (B, S, H, D) layout."""
    grad = op == "bwd"
    q, k, v = (_bhsd(x, grad) for x in (inp.q, inp.k, inp.v))
    if op == "fwd":
        def fwd():
            with torch.no_grad():
                return attend(q, k, v)
        return Prepared(fwd, lambda o: (_bshd(o),))
    if op == "bwd":
        o = attend(q, k, v)
        do = _bhsd(inp.do)
        return Prepared(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                        lambda g: tuple(_bshd(x) for x in g))
    raise ValueError(f"{name} has no {op!r}")


class FlexProvider(Provider):
    """torch.compile(flex_attention) with the mask_mod a user writes (bench/flex.py), on
    FlexAttention's Triton kernels (``flex``) or on FlashAttention-4's (``flex-flash``,
    kernel_options BACKEND=FLASH). Masks without a recipe (``from_segments``) use the
    segment-table mask_mod."""

    ops = ("fwd", "bwd")

    def __init__(self, flash: bool = False):
        self.flash = flash
        self.name = "flex-flash" if flash else "flex"
        self.kernel_options = flexmod.FLASH_OPTIONS if flash else None
        self._block_masks = {}

    @staticmethod
    def _allow_repeated_backward():
        """The compiled backward donates the saved buffers by default, which forbids the
        repeated ``retain_graph=True`` backward that times it alone; switch donation off
        (a memory saving, not a different kernel) before the graph is compiled."""
        import torch._functorch.config as fc
        if hasattr(fc, "donated_buffer"):
            fc.donated_buffer = False

    def availability(self, device):
        return flexmod.flash_availability(device) if self.flash else flexmod.availability()

    def block_mask(self, inp):
        key = (inp.mask, inp.recipe, str(inp.q.device))
        if key not in self._block_masks:
            mod = flexmod.mask_mod_for(inp.mask, inp.q.device, inp.recipe)
            self._block_masks[key] = flexmod.block_mask_for(inp.mask, inp.q.device, mask_mod=mod)
        return self._block_masks[key]

    def prepare(self, op, inp):
        bm = self.block_mask(inp)
        if op == "bwd":
            self._allow_repeated_backward()
        return _prepare_bhsd(self.name, op, inp, lambda q, k, v: flexmod.flex_bhsd(
            q, k, v, bm, inp.scale, kernel_options=self.kernel_options))


class CudnnProvider(Provider):
    """SDPA's cuDNN backend without a mask: the unmasked ceiling, on full masks only."""

    name = "cudnn"
    ops = ("fwd", "bwd")

    def availability(self, device):
        if device.type != "cuda":
            return "cuDNN attention runs on NVIDIA GPUs only"
        return None

    def unsupported(self, op, inp):
        why = super().unsupported(op, inp)
        if why is None and inp.mask.num_pairs != inp.mask.sq * inp.mask.sk:
            why = "cuDNN SDPA is timed on the full mask only (the unmasked ceiling)"
        return why

    def prepare(self, op, inp):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        gqa = inp.q.shape[2] != inp.k.shape[2]

        def attend(q, k, v):
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, scale=inp.scale, enable_gqa=gqa)
        return _prepare_bhsd(self.name, op, inp, attend)


class SdpaProvider(Provider):
    """SDPA with a dense boolean mask; PyTorch picks the kernel (efficient attention on a GPU)."""

    name = "sdpa"
    ops = ("fwd", "bwd")

    def unsupported(self, op, inp):
        why = super().unsupported(op, inp)
        if why is None:
            sq, sk = inp.mask.sq, inp.mask.sk
            # the bool mask, the additive mask in the input dtype built from it, and a padded copy
            why = _fits(sq * sk * (1 + 2 * inp.q.element_size()), inp.q.device, "the dense mask")
        return why

    def prepare(self, op, inp):
        dense = dense_mask(inp.mask, inp.q.device)
        gqa = inp.q.shape[2] != inp.k.shape[2]
        return _prepare_bhsd(self.name, op, inp, lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=dense, scale=inp.scale, enable_gqa=gqa))


class MathJvpProvider(Provider):
    """torch.func.jvp through SDPA's math backend (the only SDPA backend with forward AD)."""

    name = "math-jvp"
    ops = ("jvp",)
    BYTES_PER_SCORE = 16  # S x S intermediates of primal and tangent (scores, probabilities, products)

    def unsupported(self, op, inp):
        why = super().unsupported(op, inp)
        if why is None:
            b, sq, h, _ = inp.q.shape
            why = _fits(b * h * sq * inp.mask.sk * self.BYTES_PER_SCORE + sq * inp.mask.sk,
                        inp.q.device, "the S x S math JVP")
        return why

    def prepare(self, op, inp):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if op != "jvp":
            raise ValueError(f"math-jvp has no {op!r}")
        dense = dense_mask(inp.mask, inp.q.device)
        gqa = inp.q.shape[2] != inp.k.shape[2]
        primals = tuple(_bhsd(x) for x in (inp.q, inp.k, inp.v))
        tangents = tuple(_bhsd(x) for x in (inp.tq, inp.tk, inp.tv))

        def f(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=inp.scale, enable_gqa=gqa)

        def jvp():
            with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
                return torch.func.jvp(f, primals, tangents)
        return Prepared(jvp, lambda r: (_bshd(r[0]), _bshd(r[1])))


def all_providers() -> dict[str, Provider]:
    ps = [JfaProvider("cuda"), *(JfaProvider("cuda", form) for form in CUDA_FORMS),
          JfaProvider("triton"), JfaProvider("reference"),
          FlexProvider(), FlexProvider(flash=True), CudnnProvider(),
          SdpaProvider(), MathJvpProvider()]
    return {p.name: p for p in ps}


NAMES = tuple(all_providers())
