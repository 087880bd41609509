"""Minimal causal-rCM: a synthetic video world, a causal video DiT on ``jfa.attention``,
flow-matching teachers, a streaming KV-cache sampler and download-free metrics."""

import importlib.util as _util

from jvp_flash_attn._optional import missing_message as _missing_message

# The trainer's own dependencies (the extra "trainer"): checked here, before any module imports
# them, so a plain install fails with the command that fixes it rather than a bare import error.
for _module in ("tqdm", "matplotlib", "PIL"):
    if _util.find_spec(_module) is None:
        raise ModuleNotFoundError(_missing_message(_module, "causal_rcm_min", extra="trainer"), name=_module)
