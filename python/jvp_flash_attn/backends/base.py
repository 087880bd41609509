"""What a backend is: three launchers and two questions (can it run, can it run this)."""
from __future__ import annotations


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here (not built, no GPU, ...)."""


class Backend:
    """Interface every backend implements. Tensors are (B, S, H, D) with unit last stride.

    forward(q, k, v, mask, scale)                              -> (o, lse)
    forward_jvp(q, k, v, tq, tk, tv, mask, scale)              -> (o, to, lse)   one fused pass
    backward(q, k, v, o, lse, do, mask, scale, deterministic)  -> (dq, dk, dv)   dk/dv summed over GQA groups
    o/to are contiguous (B, Sq, Hq, Dv) in q's dtype; lse is float32 (B, Hq, Sq) (float64 for
    float64 inputs); dq/dk/dv are contiguous. ``deterministic``: the gradients must be bitwise
    repeatable (a backend whose only backward is repeatable ignores it).

    The launchers run inside the custom ops of ``jvp_flash_attn.ops``, which sit above the
    backends; a backend never imports from there.
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

    def forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        raise NotImplementedError

    def backward(self, q, k, v, o, lse, do, mask, scale, deterministic=False):
        raise NotImplementedError
