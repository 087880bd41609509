"""Rank-0 logger: readable lines with step, loss and steps/s, plus a JSON-lines record."""
from __future__ import annotations

import json
import os
import sys
import time


class Logger:
    """Only rank 0 writes; other ranks get a logger that does nothing.

    ``<out_dir>/<name>.jsonl`` is rewritten from ``history``: a resumed run starts from the
    records of its checkpoint, so the steps it redoes are not logged twice.
    """

    def __init__(self, out_dir: str | None, rank: int = 0, name: str = "log", history=()):
        self.active = rank == 0
        self.history: list[dict] = list(history)
        self._file = None
        self._t0, self._step0 = time.time(), None
        if self.active and out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            self._file = open(os.path.join(out_dir, f"{name}.jsonl"), "w")
            self._file.writelines(json.dumps(record) + "\n" for record in self.history)
            self._file.flush()

    def info(self, msg: str):
        if self.active:
            print(msg, file=sys.stderr, flush=True)

    def log(self, step: int, **values):
        """Record values at ``step`` and print them with the steps/s since the previous call."""
        if not self.active:
            return
        now = time.time()
        if self._step0 is not None and step > self._step0:
            values["steps_per_s"] = (step - self._step0) / max(now - self._t0, 1e-9)
        self._t0, self._step0 = now, step
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        self.history.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        self.info(" ".join([f"step {step}"] + [f"{k} {v:.4g}" for k, v in values.items()]))

    def close(self):
        if self._file is not None:
            self._file.close()
