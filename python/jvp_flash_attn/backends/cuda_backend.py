"""The cuda backend: the compiled core (csrc/, module ``jvp_flash_attn._cuda``) behind the
``Backend`` launchers. Loading the module is ``cuda_module``'s job, the choice of kernels and
tile shapes ``cuda_kernel_choice``'s, the module's arguments ``cuda_launch_args``'s.
"""
from __future__ import annotations

import torch

from .base import Backend, BackendUnavailableError
from .cuda_kernel_choice import choose_backward, choose_forward
from .cuda_launch_args import DTYPES, aligned, backward_params, dq_groups, empty, forward_params, jvp_params, launch
from .cuda_module import built_variants, device_reasons, load_module, module_error


def _module():
    m = load_module()
    if m is None:
        raise BackendUnavailableError(f"backend 'cuda' cannot run: {module_error()}")
    return m


class CudaBackend(Backend):
    name = "cuda"

    def availability(self):
        if module_error() is not None:
            return module_error()
        m = load_module()
        if not torch.cuda.is_available() or m.device_count() == 0:
            error = m.device_error() if torch.cuda.is_available() and hasattr(m, "device_error") else None
            return f"the compiled core cannot use the GPU: {error}" if error else "no CUDA GPU"
        built_variants()  # read the build's kernel list and archs now, outside any traced region
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
        have = built_variants()
        for op in ("fwd", "jvp"):
            if (op, dt, dqk, dv) not in have:
                dims = sorted({(a, b) for (o, d, a, b) in have if o == op and d == dt})
                return (f"head dims (q/k {dqk}, v {dv}) are not built for the cuda backend's {op} kernel "
                        f"in {dt}; built: {dims}")
        needs_grad = q.requires_grad or k.requires_grad or v.requires_grad
        if needs_grad and ("bwd", dt, dqk, dv) not in have:
            return f"no backward kernel for head dims (q/k {dqk}, v {dv}) in {dt} (built: 64 or 128 each)"
        return None

    def forward(self, q, k, v, mask, scale):
        q, k, v = (aligned(x) for x in (q, k, v))
        with torch.cuda.device(q.device):
            m = _module()
            choice = choose_forward(q.device.index, False, q.shape[-1], v.shape[-1])
            b, sq, hq, _ = q.shape
            o = empty((b, sq, hq, v.shape[-1]), q)
            lse = empty((b, hq, sq), q, dtype=torch.float32)
            launch(m.forward, forward_params(m, choice, mask, q, k, v, scale, o, lse), q)
        return o, lse

    def forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        q, k, v, tq, tk, tv = (aligned(x) for x in (q, k, v, tq, tk, tv))
        with torch.cuda.device(q.device):
            m = _module()
            choice = choose_forward(q.device.index, True, q.shape[-1], v.shape[-1])
            b, sq, hq, _ = q.shape
            o = empty((b, sq, hq, v.shape[-1]), q)
            to = empty((b, sq, hq, v.shape[-1]), q)
            lse = empty((b, hq, sq), q, dtype=torch.float32)
            launch(m.forward_jvp, jvp_params(m, choice, mask, q, k, v, tq, tk, tv, scale, o, to, lse), q)
        return o, to, lse

    def backward(self, q, k, v, o, lse, do, mask, scale, deterministic=False):
        q, k, v, o, do = (aligned(x) for x in (q, k, v, o, do))
        lse = lse.contiguous()
        dt, dqk, dv_dim = DTYPES[q.dtype], q.shape[-1], v.shape[-1]
        if ("bwd", dt, dqk, dv_dim) not in built_variants():
            raise NotImplementedError(f"the cuda backend has no backward kernel for head dims (q/k {dqk}, v {dv_dim}) "
                                      f"in {dt}; use backend='triton' or 'reference'")
        with torch.cuda.device(q.device):
            m = _module()
            choice = choose_backward(q.device.index, deterministic, dqk, dv_dim)
            b, sq, hq, _ = q.shape
            dq, dk, dv = empty(q.shape, q), empty(k.shape, k), empty(v.shape, v)
            delta = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
            dq_accum = dq_semaphore = None
            groups = 1
            if choice.backward_form != "two-kernel":   # its float32 dQ sum, in whole query tiles (zeroed by the module)
                q_tiles = -(-sq // choice.k_tiles[0])
                if choice.backward_form == "fused-ordered":   # G buffers, from the mask's longest chain of turns
                    groups = dq_groups(mask.tiles(*choice.k_tiles, q.device), b * hq * q_tiles * choice.k_tiles[0] * dqk * 4)
                dq_accum = torch.empty((groups, b, hq, q_tiles * choice.k_tiles[0], dqk), dtype=torch.float32,
                                       device=q.device)
                if choice.backward_form == "fused-ordered":   # one turn counter per group and dQ tile (zeroed by the module)
                    dq_semaphore = torch.empty((groups, b, hq, q_tiles), dtype=torch.int32, device=q.device)
            launch(m.backward, backward_params(m, choice, mask, q, k, v, o, lse, do, scale, dq, dk, dv, delta,
                                               dq_accum, dq_semaphore, groups), q)
        return dq, dk, dv
