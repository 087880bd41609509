"""What a backend is: three entry points and two questions (can it run, can it run this)."""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD


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


def refuse_tangents(*tensors):
    """Called first in the forward entry points' custom ops. A kernel cannot see forward-AD
    tangents and would silently drop them; jfa.attention strips them and runs the fused pass,
    so one that arrives here bypassed it: dual tensors passed into a torch.compile'd function,
    whose graph was traced without them."""
    if torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.ADInplaceOrView):
        return  # inference mode or inductor's compiled code: tangents can be neither read nor kept here
    if any(fwAD.unpack_dual(x).tangent is not None for x in tensors):
        raise RuntimeError("jvp_flash_attn: forward-mode AD tangents reached the attention kernel, which "
                           "would drop them. Under torch.compile, make the dual tensors (or call "
                           "torch.func.jvp) inside the compiled function, not outside it.")
