"""Triton kernels of masked attention: forward, fused forward+JVP, backward.

Host launchers: :func:`attn_fwd`, :func:`attn_jvp`, :func:`attn_bwd`. The kernels walk the
compact tile description of :meth:`jvp_flash_attn.masks.SegmentMask.tiles`.
Importing this package imports Triton; set TRITON_INTERPRET=1 before importing it to run
the kernels on the CPU.
"""
from .attn_bwd import attn_bwd
from .attn_fwd import attn_fwd
from .attn_jvp import attn_jvp

__all__ = ["attn_fwd", "attn_jvp", "attn_bwd"]
