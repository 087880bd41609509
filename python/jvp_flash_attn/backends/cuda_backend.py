"""The cuda backend: the compiled core (csrc/, module ``jvp_flash_attn._cuda``).

The module is torch-free: it takes device pointers, shapes, element strides, the mask's tile
description and a stream handle. Everything torch does (input layout, allocation, the stream,
the tile descriptions) happens here, so one build serves every torch version.

Two forms of the backward: "two-kernel" (dK/dV, then dQ; bitwise repeatable) and, on Hopper,
"fused" (one kernel that also adds dQ into a float32 buffer through the TMA unit's reduce-add, so
its dQ is not bitwise repeatable). ``JFA_CUDA_BWD`` picks one (default: ``DEFAULT_BWD_FORM``);
``torch.use_deterministic_algorithms(True)`` or ``JFA_CUDA_DETERMINISTIC=1`` always gives "two-kernel".
The compiled module itself reads ``JFA_CUDA_FWD=plain``: on Hopper, the forward and JVP kernels
whose warps all load, instead of the warp-specialised ones (the same bits, slower).
"""
from __future__ import annotations

import importlib
import os

import torch

from ..masks import full
from ..masks.segments import mask_by_uid
from . import cuda_arch
from .base import Backend, BackendUnavailableError, empty_outputs, refuse_tangents

DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_ALIGN_ELEMS = 8  # 16-byte async copies: base pointers and strides in multiples of 8 elements

# Tests set this to fill outputs with NaN before the kernels run, so an unwritten element shows.
POISON_OUTPUTS = os.environ.get("JFA_POISON_OUTPUTS") == "1"

_module = None
_module_error = None


def load_module():
    """The compiled module, or None (the reason is in ``module_error()``)."""
    global _module, _module_error
    if _module is None and _module_error is None:
        try:
            _module = importlib.import_module("jvp_flash_attn._cuda")
        except ImportError as e:
            _module_error = f"compiled extension not built ({e})"
    return _module


def module_error() -> str | None:
    load_module()
    return _module_error


_built_variants = None


def _variants() -> frozenset:
    """The (op, dtype, dqk, dv) kernels this build holds, read from the module once (and so
    never from inside a torch.compile trace after the first eager call)."""
    global _built_variants
    if _built_variants is None:
        m = load_module()
        _built_variants = frozenset() if m is None else frozenset(tuple(v) for v in m.variants())
    return _built_variants


_device_reasons = None


def device_reasons() -> dict:
    """device index -> None if this build has kernels for it, else why not (read once, as the variants)."""
    global _device_reasons
    if _device_reasons is None:
        m = load_module()
        _device_reasons = {} if m is None else cuda_arch.device_reasons(m)
    return _device_reasons


_shapes_by_device = {}


def _tile_shapes(device: int) -> dict:
    """The tile shapes each walk needs on a device (the sm_90a path's differ from the portable
    ones), read from the module once per device and process: JFA_CUDA_SM90 is fixed at start-up."""
    if device not in _shapes_by_device:
        _shapes_by_device[device] = dict(load_module().tile_shapes(device))
    return _shapes_by_device[device]


BWD_FORMS = ("two-kernel", "fused")
DEFAULT_BWD_FORM = "fused"   # 14-17 % faster than two-kernel on W1-W4 (bench/NOTES_cuda.md, item 9)


def deterministic() -> bool:
    """Whether the backward must be bitwise repeatable (torch's switch or JFA_CUDA_DETERMINISTIC=1)."""
    return torch.are_deterministic_algorithms_enabled() or os.environ.get("JFA_CUDA_DETERMINISTIC") == "1"


def backward_form(device: int) -> str:
    """The backward form a call on ``device`` runs: "fused" only where built (sm_90a), asked for
    (JFA_CUDA_BWD or the default) and allowed (not deterministic)."""
    form = os.environ.get("JFA_CUDA_BWD", DEFAULT_BWD_FORM)
    if form not in BWD_FORMS:
        raise ValueError(f"JFA_CUDA_BWD must be one of {BWD_FORMS}, got {form!r}")
    if form == "fused" and (_tile_shapes(device).get("bwd_fused") is None or deterministic()):
        return "two-kernel"
    return form


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """x itself when its pointer and (batch, row, head) strides suit 16-byte copies, else a contiguous copy."""
    ok = x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(s % _ALIGN_ELEMS == 0 for s in x.stride()[:3])
    return x if ok else x.contiguous()


def _strides(x):
    return (x.stride(0), x.stride(1), x.stride(2))


def _empty(shape, like, poison_value=float("nan"), dtype=None):
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if POISON_OUTPUTS:
        out.fill_(poison_value)
    return out


def _tile_args(desc):
    return {
        "full_ptr": desc.q_full_ptr.data_ptr(), "full_idx": desc.q_full_idx.data_ptr(),
        "part_ptr": desc.q_part_ptr.data_ptr(), "part_idx": desc.q_part_idx.data_ptr(),
        "num_tiles": desc.num_q_tiles, "block_m": desc.block_m, "block_n": desc.block_n,
    }


def _tile_args_by_key(desc):
    return {
        "full_ptr": desc.k_full_ptr.data_ptr(), "full_idx": desc.k_full_idx.data_ptr(),
        "part_ptr": desc.k_part_ptr.data_ptr(), "part_idx": desc.k_part_idx.data_ptr(),
        "num_tiles": desc.num_k_tiles, "block_m": desc.block_m, "block_n": desc.block_n,
    }


def _maps(desc):
    return {
        "q_seg": desc.q_seg.data_ptr(), "q_pos": desc.q_pos.data_ptr(),
        "k_seg": desc.k_seg.data_ptr(), "k_pos": desc.k_pos.data_ptr(),
        "rule": desc.rule.contiguous().data_ptr(), "num_k_segments": int(desc.rule.shape[1]),
    }


class CudaBackend(Backend):
    name = "cuda"

    def availability(self):
        if module_error() is not None:
            return module_error()
        m = load_module()
        if not torch.cuda.is_available() or m.device_count() == 0:
            error = m.device_error() if torch.cuda.is_available() and hasattr(m, "device_error") else None
            return f"the compiled core cannot use the GPU: {error}" if error else "no CUDA GPU"
        _variants()  # read the build's kernel list and archs now, outside any traced region
        reasons = device_reasons()
        if reasons and all(reasons.values()):
            return reasons[0]
        return None

    def unsupported(self, q, k, v):
        if q.dtype not in DTYPES:
            return f"q's dtype must be one of {tuple(DTYPES)} for the cuda backend, got {q.dtype}"
        if q.device.type != "cuda":
            return f"q must be on a CUDA device for the cuda backend, got {q.device}"
        if device_reasons().get(q.device.index) is not None:
            return device_reasons()[q.device.index]
        dt, dqk, dv = DTYPES[q.dtype], q.shape[-1], v.shape[-1]
        have = _variants()
        for op in ("fwd", "jvp"):
            if (op, dt, dqk, dv) not in have:
                dims = sorted({(a, b) for (o, d, a, b) in have if o == op and d == dt})
                return (f"head dims (q/k {dqk}, v {dv}) are not built for the cuda backend's {op} kernel "
                        f"in {dt}; built: {dims}")
        needs_grad = q.requires_grad or k.requires_grad or v.requires_grad
        if needs_grad and ("bwd", dt, dqk, dv) not in have:
            return f"no backward kernel for head dims (q/k {dqk}, v {dv}) in {dt} (the backward needs equal dims 64 or 128)"
        return None

    # ---- entry points: custom ops, so torch.compile sees opaque nodes -----------------------
    def forward(self, q, k, v, mask, scale):
        return cuda_fwd(q, k, v, mask.uid, scale)

    def forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        return cuda_jvp(q, k, v, tq, tk, tv, mask.uid, scale)

    def backward(self, q, k, v, o, lse, do, mask, scale):
        return cuda_bwd(q, k, v, o, lse, do, mask.uid, scale)

    # ---- shared argument building -------------------------------------------------------
    def _common(self, q, k, v, mask, scale, shape_key):
        m = load_module()
        if m is None:
            raise BackendUnavailableError(f"backend 'cuda' cannot run: {module_error()}")
        if mask is None:
            mask = full(q.shape[1], k.shape[1])
        if scale is None:
            scale = q.shape[-1] ** -0.5
        block_m, block_n = _tile_shapes(q.device.index)[shape_key]
        desc = mask.tiles(block_m, block_n, q.device)
        b, sq, hq, dqk = q.shape
        _, sk, hk, _ = k.shape
        args = {
            "batch": b, "seqlen_q": sq, "seqlen_k": sk, "heads_q": hq, "heads_k": hk,
            "head_dim_qk": dqk, "head_dim_v": v.shape[-1], "scale": float(scale), "dtype": DTYPES[q.dtype],
            "q": q.data_ptr(), "k": k.data_ptr(), "v": v.data_ptr(),
            "q_stride": _strides(q), "k_stride": _strides(k), "v_stride": _strides(v),
            "q_tiles": _tile_args(desc), "maps": _maps(desc),
            "stream": torch.cuda.current_stream(q.device).cuda_stream, "device": q.device.index,
        }
        return m, args, mask, desc

    def _forward(self, q, k, v, mask, scale):
        q, k, v = (_aligned(x) for x in (q, k, v))
        with torch.cuda.device(q.device):
            m, args, _, _ = self._common(q, k, v, mask, scale, "fwd")
            b, sq, hq, _ = q.shape
            o = _empty((b, sq, hq, v.shape[-1]), q)
            lse = _empty((b, hq, sq), q, dtype=torch.float32)
            args.update(o=o.data_ptr(), o_stride=_strides(o), lse=lse.data_ptr())
            m.forward(args)
        return o, lse

    def _forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        q, k, v, tq, tk, tv = (_aligned(x) for x in (q, k, v, tq, tk, tv))
        with torch.cuda.device(q.device):
            m, args, mask, desc = self._common(q, k, v, mask, scale, "jvp")
            b, sq, hq, _ = q.shape
            o = _empty((b, sq, hq, v.shape[-1]), q)
            to = _empty((b, sq, hq, v.shape[-1]), q)
            lse = _empty((b, hq, sq), q, dtype=torch.float32)
            args.update(o=o.data_ptr(), o_stride=_strides(o), to=to.data_ptr(), to_stride=_strides(to),
                        tq=tq.data_ptr(), tk=tk.data_ptr(), tv=tv.data_ptr(),
                        tq_stride=_strides(tq), tk_stride=_strides(tk), tv_stride=_strides(tv), lse=lse.data_ptr())
            if mask.zero_tangent_q or mask.zero_tangent_k:   # the sm_90a JVP skips zero tangents
                args.update(q_zero_tangent=desc.q_zero_tangent.data_ptr(), k_zero_tangent=desc.k_zero_tangent.data_ptr())
            m.forward_jvp(args)
        return o, to, lse

    def _backward(self, q, k, v, o, lse, do, mask, scale):
        q, k, v, o, do = (_aligned(x) for x in (q, k, v, o, do))
        lse = lse.contiguous()
        dt, dqk, dv_dim = DTYPES[q.dtype], q.shape[-1], v.shape[-1]
        if ("bwd", dt, dqk, dv_dim) not in _variants():
            raise NotImplementedError(f"the cuda backend has no backward kernel for head dims (q/k {dqk}, v {dv_dim}) "
                                      f"in {dt}; use backend='triton' or 'reference'")
        with torch.cuda.device(q.device):
            m, args, mask, _ = self._common(q, k, v, mask, scale, "bwd_q")
            fused = backward_form(q.device.index) == "fused"
            kv_m, kv_n = _tile_shapes(q.device.index)["bwd_fused" if fused else "bwd_kv"]
            kv_desc = mask.tiles(kv_m, kv_n, q.device)
            b, sq, hq, _ = q.shape
            dq = _empty(q.shape, q)
            dk = _empty(k.shape, k)
            dv = _empty(v.shape, v)
            delta = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
            dq_accum = None   # the fused backward's float32 dQ sum (zeroed and laid out by the module)
            if fused:         # in whole query tiles
                rows = -(-sq // kv_m) * kv_m
                dq_accum = torch.empty((b, hq, rows, dqk), dtype=torch.float32, device=q.device)
                args["dq_accum"] = dq_accum.data_ptr()
            args.update(o=o.data_ptr(), o_stride=_strides(o), lse=lse.data_ptr(), do=do.data_ptr(),
                        do_stride=_strides(do), dq=dq.data_ptr(), dk=dk.data_ptr(), dv=dv.data_ptr(),
                        dq_stride=_strides(dq), dk_stride=_strides(dk), dv_stride=_strides(dv),
                        delta=delta.data_ptr(), k_tiles=_tile_args_by_key(kv_desc))
            m.backward(args)
        return dq, dk, dv


# The kernels behind torch.library custom ops. Masks travel as their uid; the tile description
# is fetched inside the op, where torch.compile does not trace.
_IMPL = CudaBackend()


@torch.library.custom_op("jfa::cuda_fwd", mutates_args=())
def cuda_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_uid: int,
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    refuse_tangents(q, k, v)
    return _IMPL._forward(q, k, v, mask_by_uid(mask_uid), scale)


@cuda_fwd.register_fake
def _(q, k, v, mask_uid, scale):
    return empty_outputs(q, v)


@torch.library.custom_op("jfa::cuda_jvp", mutates_args=())
def cuda_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tq: torch.Tensor, tk: torch.Tensor,
             tv: torch.Tensor, mask_uid: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    refuse_tangents(q, k, v, tq, tk, tv)
    return _IMPL._forward_jvp(q, k, v, tq, tk, tv, mask_by_uid(mask_uid), scale)


@cuda_jvp.register_fake
def _(q, k, v, tq, tk, tv, mask_uid, scale):
    return empty_outputs(q, v, with_tangent=True)


@torch.library.custom_op("jfa::cuda_bwd", mutates_args=())
def cuda_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
             do: torch.Tensor, mask_uid: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _IMPL._backward(q, k, v, o, lse, do, mask_by_uid(mask_uid), scale)


@cuda_bwd.register_fake
def _(q, k, v, o, lse, do, mask_uid, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
