"""Checkpoints: what a training stage saves, how it is read back, and the checks that let a
resume continue the uninterrupted run bit for bit (on the CPU) or stop with the reason.

A training checkpoint holds the whole config, the stage, the step, the weights and optimizer
states, the log history, the position of the data stream (data.ClipStream), and per rank the
RNG states (torch CPU, torch CUDA when present, numpy, python ``random``) and the losses of the
log window in progress. A resume under another config is refused, naming the fields, unless
it is asked for (``--allow-config-change``); the keys in ``MAY_CHANGE_ON_RESUME`` only say how
long to train and how often to log, save or evaluate, so they may differ.
"""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import torch
import torch.distributed as dist

from .config import Config
from .model import CausalVideoDiT

MAY_CHANGE_ON_RESUME = ("out_dir", "train.steps", "train.max_minutes", "train.log_every", "train.ckpt_every",
                        "distill.steps", "distill.max_minutes", "distill.ckpt_every", "distill.eval_every")
RESUME_KEYS = ("config", "stage", "step", "model", "ema", "opt", "history", "data", "ranks")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, incomplete, or of another config."""


def save(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the previous checkpoint whole."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load(path: str, device, keys=("config",)) -> dict:
    """The checkpoint at ``path``; CheckpointError naming the file when it is missing, empty,
    unreadable, or lacks any of ``keys``."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; train its stage first")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); delete it and train its stage again")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read as a torch checkpoint: "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint of this trainer")
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing} (has {sorted(ckpt)}): not a checkpoint "
                              f"of this stage, or written by an older trainer")
    return ckpt


def load_model(path: str, device, key: str = "ema") -> tuple[CausalVideoDiT, Config, dict]:
    """(model in eval mode, config, checkpoint) of any stage's checkpoint, rebuilt from its stored config."""
    ckpt = load(path, device, keys=("config", key))
    try:
        cfg = Config.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its config does not fit this trainer: {e}") from e
    model = CausalVideoDiT(cfg.model, cfg.data).to(device)
    model.load_state_dict(ckpt[key])
    return model.eval(), cfg, ckpt


# ---- config changes --------------------------------------------------------------------
def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, current: dict) -> list[str]:
    """``"section.key: saved -> current"`` for each field that differs, except MAY_CHANGE_ON_RESUME."""
    a, b = _flat(saved), _flat(current)

    def show(d, k):
        return repr(d[k]) if k in d else "(absent)"

    return [f"{k}: {show(a, k)} -> {show(b, k)}" for k in sorted(a.keys() | b.keys())
            if k not in MAY_CHANGE_ON_RESUME and (k not in a or k not in b or a[k] != b[k])]


def load_for_resume(path: str, config: dict, world: int, device, allow_config_change: bool,
                    keys=()) -> tuple[dict, list[str]]:
    """The checkpoint to resume from and the config changes accepted; CheckpointError when the
    file is not a complete training checkpoint, or when ``config`` (or the world size) differs
    from the stored one and ``allow_config_change`` is not set."""
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    ckpt = load(path, device, keys=RESUME_KEYS + tuple(keys))
    changes = config_changes(ckpt["config"], config)
    if len(ckpt["ranks"]) != world:
        changes.append(f"world size: {len(ckpt['ranks'])} -> {world}")
    if changes and not allow_config_change:
        raise CheckpointError(f"checkpoint {path} was written under another config: {'; '.join(changes)}. "
                              f"Resume under the stored config, or pass --allow-config-change "
                              f"(allow_config_change=True) to continue under the new one")
    return ckpt, changes


def resumed_message(stage: str, step: int, changes: list[str]) -> str:
    return f"resumed {stage} at step {step}" + (f" under a changed config: {'; '.join(changes)}" if changes else "")


# ---- per-rank state: RNG streams and the open log window --------------------------------
def rank_state(device, running: list[torch.Tensor]) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "running": [x.detach().cpu() for x in running]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rank_states(device, running: list[torch.Tensor], world: int) -> list[dict]:
    """Every rank's state, in rank order (every rank must call this)."""
    state = rank_state(device, running)
    if world == 1:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states


def restore_rank_state(state: dict, device) -> list[torch.Tensor]:
    """Set this process's RNG streams from ``state``; returns the losses of the open log window."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    return [x.to(device) for x in state["running"]]
