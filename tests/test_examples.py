"""The examples run end to end at a tiny size on the CPU (their GPU runs are in docs/)."""
import csv
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wan_scm_step_tiny_both_recipes_agree(tmp_path):
    pytest.importorskip("diffusers")
    wan = _load("wan_scm_step")
    common = ["--preset", "tiny", "--layers", "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
              "--backend", "reference", "--out", str(tmp_path)]
    split = wan.main(common)
    fused = wan.main(common + ["--recipe", "fused", "--zero-tangent-hint"])
    # the same draws: the checkpointed forward and the JVP's primal give one loss
    assert abs(float(split["loss"]) / float(fused["loss"]) - 1) < 1e-3
    rows = list(csv.DictReader(open(tmp_path / "wan_scm_step.csv")))
    assert [r["recipe"] for r in rows] == ["split", "fused"]
    assert all(float(r["step_ms"]) > 0 and r["tokens"] == "48" for r in rows)


def test_context_parallel_bench_on_two_gloo_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(ROOT / "examples" / "context_parallel_bench.py"), "--device", "cpu",
           "--frames", "4", "--tokens-per-frame", "5", "--heads", "4", "--head-dim", "16", "--reps", "1",
           "--warmup", "0", "--backend", "reference", "--out", str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "context_parallel.csv")))
    assert {r["op"] for r in rows} == {"fwd", "bwd", "jvp", "jvp_hinted", "all_to_all"}
    assert all(float(r["rel_err_vs_1gpu"]) < 1e-6 for r in rows if r["rel_err_vs_1gpu"])
    assert (tmp_path / "context_parallel.md").read_text().startswith("# Ulysses")
