"""Triton forward on small awkward shapes, one line per variant: relative error vs float64."""
import sys

import torch

sys.path.insert(0, "python")
from jvp_flash_attn import masks, reference  # noqa: E402
from jvp_flash_attn.backends import get  # noqa: E402
from jvp_flash_attn.triton._common import Config, set_config  # noqa: E402

be = get("triton")
for cfg in (None, Config(64, 64, 4, 2), Config(128, 128, 4, 2)):
    set_config("fwd", cfg)
    for sq, sk, b, hq, hk, d, dv in [(97, 61, 2, 4, 2, 32, 16), (97, 61, 1, 1, 1, 32, 16), (97, 61, 2, 4, 2, 32, 32),
                                      (97, 61, 2, 4, 2, 16, 16), (97, 61, 2, 4, 2, 64, 16), (300, 300, 1, 1, 1, 32, 16),
                                      (128, 128, 1, 1, 1, 32, 16), (128, 128, 1, 1, 1, 64, 64), (97, 61, 1, 1, 1, 64, 64)]:
        g = torch.Generator(device="cuda").manual_seed(0)
        mk = lambda *s: torch.randn(*s, generator=g, device="cuda").to(torch.bfloat16)
        q, k, v = mk(b, sq, hq, d), mk(b, sk, hk, d), mk(b, sk, hk, dv)
        m = masks.full(sq, sk)
        o, lse = be.forward(q, k, v, m, d ** -0.5)
        o64, lse64 = reference.forward(q.double(), k.double(), v.double(), m)
        e = ((o.double() - o64).norm() / o64.norm()).item()
        el = ((lse.double() - lse64).norm() / lse64.norm()).item()
        print(f"cfg={cfg} sq={sq} sk={sk} b={b} h={hq}/{hk} d={d} dv={dv}: o {e:.1e} lse {el:.1e}", flush=True)
