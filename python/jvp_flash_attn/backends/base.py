"""What a backend is: three entry points and two questions (can it run, can it run this)."""
from __future__ import annotations

import torch


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here (not built, no GPU, ...)."""


class Backend:
    """Interface every backend implements. Tensors are (B, S, H, D) with unit last stride.

    forward(q, k, v, mask, scale)                     -> (o, lse)
    backward(q, k, v, o, lse, do, mask, scale)        -> (dq, dk, dv)   dk/dv summed over GQA groups
    forward_jvp(q, k, v, tq, tk, tv, mask, scale)     -> (o, to, lse)   one fused pass
    o/to are contiguous (B, Sq, Hq, Dv) in q's dtype; lse is float32 (B, Hq, Sq).
    """

    name = "base"

    def availability(self) -> str | None:
        """None when the backend can run on this machine, else the reason it cannot."""
        raise NotImplementedError

    def unsupported(self, q, k, v) -> str | None:
        """None when the backend handles these inputs, else why not (naming the argument)."""
        raise NotImplementedError

    def forward(self, q, k, v, mask, scale):
        raise NotImplementedError

    def backward(self, q, k, v, o, lse, do, mask, scale):
        raise NotImplementedError

    def forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        raise NotImplementedError


def empty_outputs(q, v, lse_dtype=torch.float32, with_tangent=False):
    """Uninitialised (o, lse) or (o, to, lse) of the entry points' shapes: what every backend's
    custom op reports to torch.compile (its fake implementation)."""
    b, sq, hq, _ = q.shape
    o = q.new_empty(b, sq, hq, v.shape[-1])
    lse = q.new_empty(b, hq, sq, dtype=lse_dtype)
    return (o, torch.empty_like(o), lse) if with_tangent else (o, lse)
