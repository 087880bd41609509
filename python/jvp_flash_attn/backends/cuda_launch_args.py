"""The compiled core's arguments, built from tensors and tile descriptions in one place.

The module is torch-free: it takes device pointers, shapes, (batch, row, head) element strides,
the tile descriptions' device pointers and a stream handle. Inputs are made 16-byte aligned here
(the kernels copy 16 bytes at a time) and outputs allocated here.
"""
from __future__ import annotations

import os

import torch

DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_ALIGN_ELEMS = 8  # 16-byte async copies: base pointers and strides in multiples of 8 elements

# Tests set this to fill outputs with NaN before the kernels run, so an unwritten element shows.
POISON_OUTPUTS = os.environ.get("JFA_POISON_OUTPUTS") == "1"


def aligned(x: torch.Tensor) -> torch.Tensor:
    """x itself when its pointer and (batch, row, head) strides suit 16-byte copies, else a contiguous copy."""
    ok = x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(s % _ALIGN_ELEMS == 0 for s in x.stride()[:3])
    return x if ok else x.contiguous()


def empty(shape, like, dtype=None):
    """An output for a kernel to fill (NaN-filled under POISON_OUTPUTS)."""
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def strides(x):
    return (x.stride(0), x.stride(1), x.stride(2))


def _tile_lists(desc, by_key: bool):
    """The CSR lists the kernels walk: key tiles per query tile, or (by_key) query tiles per key tile."""
    side = "k" if by_key else "q"
    return {
        "full_ptr": getattr(desc, f"{side}_full_ptr").data_ptr(), "full_idx": getattr(desc, f"{side}_full_idx").data_ptr(),
        "part_ptr": getattr(desc, f"{side}_part_ptr").data_ptr(), "part_idx": getattr(desc, f"{side}_part_idx").data_ptr(),
        "num_tiles": desc.num_k_tiles if by_key else desc.num_q_tiles,
        "block_m": desc.block_m, "block_n": desc.block_n,
    }


def _token_maps(desc):
    return {
        "q_seg": desc.q_seg.data_ptr(), "q_pos": desc.q_pos.data_ptr(),
        "k_seg": desc.k_seg.data_ptr(), "k_pos": desc.k_pos.data_ptr(),
        "rule": desc.rule.contiguous().data_ptr(), "num_k_segments": int(desc.rule.shape[1]),
    }


def launch_args(q, k, v, scale, q_desc, *, o, lse, **tensors):
    """The arguments of one launch: q, k, v, the description walked per query tile, the outputs o
    and lse, and by name the direction's other tensors (tangents, dO, gradients, ...; each
    ``x`` gives ``x`` and ``x_stride``), with ``k_desc`` (walked per key tile) and the zero-tangent
    flags where the direction has them."""
    b, sq, hq, dqk = q.shape
    args = {
        "batch": b, "seqlen_q": sq, "seqlen_k": k.shape[1], "heads_q": hq, "heads_k": k.shape[2],
        "head_dim_qk": dqk, "head_dim_v": v.shape[-1], "scale": float(scale), "dtype": DTYPES[q.dtype],
        "q_tiles": _tile_lists(q_desc, by_key=False), "maps": _token_maps(q_desc),
        "stream": torch.cuda.current_stream(q.device).cuda_stream, "device": q.device.index,
        "lse": lse.data_ptr(),
    }
    for name, x in dict(q=q, k=k, v=v, o=o, **tensors).items():
        if name == "k_desc":
            args["k_tiles"] = _tile_lists(x, by_key=True)
        elif name in ("dq_accum", "delta", "q_zero_tangent", "k_zero_tangent"):   # contiguous, no strides
            args[name] = x.data_ptr()
        else:
            args[name], args[f"{name}_stride"] = x.data_ptr(), strides(x)
    return args
