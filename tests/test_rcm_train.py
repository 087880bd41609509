"""Command line, config and checkpoints: every tiny stage runs, checkpoints resume."""
import json
import os
import subprocess
import sys

import pytest
import torch

from causal_rcm_min.checkpoint import load_model
from causal_rcm_min.config import Config, apply_overrides, preset
from causal_rcm_min.train import build_config, main, parse_args, run_stage


# Whole-model tests run on jfa's reference backend (conftest.reference_backend).
pytestmark = pytest.mark.usefixtures("reference_backend")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["train.steps=6", "train.log_every=2", "train.ckpt_every=3", "eval.encoder_steps=5",
        "sample.num_samples=2", "sample.batch_size=2", "sample.steps=[2,1]", "eval.num_real=8"]


def test_overrides_and_round_trip():
    cfg = apply_overrides(preset("tiny"), ["model.frames_per_chunk=1", "sample.steps=[4,2]", "train.t_sampling=shift",
                                           "model.window=null"])
    assert cfg.model.frames_per_chunk == 1 and cfg.sample.steps == [4, 2] and cfg.train.t_sampling == "shift"
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(cfg, ["model.width=3"])
    with pytest.raises(ValueError, match="unknown section"):
        apply_overrides(cfg, ["optim.lr=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(cfg, ["lr"])
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="stage"):
        run_stage(cfg, "distill")


@pytest.fixture(scope="module")
def tiny_all(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    main(["--preset", "tiny", "--stage", "all", "--out", out, *FAST])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["teacher_causal", "teacher_causal_df", "teacher_bidirectional",
                                     "tf_kd", "tf_dcm", "tf_scm", "tf_meanflow", "sf_dmd"])
def test_tiny_all_stages(tiny_all, teacher):
    """``--stage all`` trains, samples and scores every teacher and every student."""
    d = os.path.join(tiny_all, teacher)
    for name in ("ckpt.pt", "loss.png", "train_metrics.json", "results.json", "results.md", "by_frame.png",
                 "samples/generated.gif", "samples/generated.png", "samples/real.png"):
        assert os.path.exists(os.path.join(d, name)), name
    with open(os.path.join(d, "results.json")) as f:
        results = json.load(f)
    assert results["teacher"] == teacher and results["frechet_distance"] >= 0
    assert results["real"]["mean"]["adherence_clip_exact"] == 1.0
    assert len(results["generated"]["by_frame"]["physics_error_px"]) == preset("tiny").data.num_frames
    model, cfg, ckpt = load_model(os.path.join(d, "ckpt.pt"), "cpu")
    steps = 6 if teacher.startswith("teacher") else preset("tiny").distill.steps
    assert ckpt["step"] == steps and cfg.preset == "tiny" and ckpt["stage"] == teacher
    assert os.path.exists(os.path.join(tiny_all, "encoder", "encoder.pt"))


@pytest.mark.slow
def test_resume_continues(tmp_path):
    out = str(tmp_path)
    args = ["--preset", "tiny", "--stage", "teacher_causal", "--out", out, "train.log_every=1"]
    main(args + ["train.steps=3"])
    path = os.path.join(out, "teacher_causal", "ckpt.pt")
    first = torch.load(path, weights_only=False)
    main(args + ["train.steps=5", "--resume"])
    second = torch.load(path, weights_only=False)
    assert first["step"] == 3 and second["step"] == 5
    assert [r["step"] for r in second["history"]] == [1, 2, 3, 4, 5]
    assert second["config"]["train"]["steps"] == 5
    assert not torch.equal(first["model"]["x_in.weight"], second["model"]["x_in.weight"])
    with pytest.raises(ValueError, match="resume"):
        main(["--preset", "tiny", "--stage", "teacher_causal_df", "--out", out, "--resume"])


def test_stage_needs_its_inputs(tmp_path):
    cfg = build_config(parse_args(["--stage", "sample", "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="checkpoint"):
        run_stage(cfg, "sample")
    with pytest.raises(ValueError, match="samples"):
        run_stage(cfg, "evaluate")


@pytest.mark.slow
def test_bench_script_tiny(tmp_path):
    env = dict(os.environ, PRESET="tiny", WORK=str(tmp_path / "work"), PY=sys.executable, OMP_NUM_THREADS="1")
    extra = " ".join(FAST)
    subprocess.run(["bash", os.path.join(ROOT, "examples", "causal_rcm", "run_teacher_small.sh"), str(tmp_path / "res")],
                   env=env | {"RCM_OVERRIDES": extra}, check=True, capture_output=True)
    for name in ("results.json", "results.md", "generated.gif", "generated.png", "real.png", "loss.png",
                 "machine.json"):
        assert (tmp_path / "res" / name).exists(), name


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    """torchrun with two CPU ranks (gloo): the ranks split the batch, rank 0 checkpoints every rank's
    RNG states, and a resumed run ends bit for bit where the uninterrupted one does."""
    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "causal_rcm_min.train",
               "--preset", "tiny", "--stage", "teacher_causal", "--out", str(out), "train.log_every=1", *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800)   # catches a hang only

    torchrun(tmp_path / "straight", "train.steps=3")
    torchrun(tmp_path / "resumed", "train.steps=2")
    torchrun(tmp_path / "resumed", "train.steps=3", "--resume")
    with open(tmp_path / "resumed" / "teacher_causal" / "train_metrics.json") as f:
        metrics = json.load(f)
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    a, b = (torch.load(tmp_path / d / "teacher_causal" / "ckpt.pt", weights_only=False) for d in ("straight", "resumed"))
    assert len(b["ranks"]) == 2 and not torch.equal(b["ranks"][0]["torch"], b["ranks"][1]["torch"])
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    for name in ("model", "ema"):
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
