"""Checkpoints and resume: an interrupted run, resumed, is bit for bit the uninterrupted one
(teachers and every student, on the CPU); its log holds each step once; a file that is not a
checkpoint, or one written under another config, is refused with the file and the reason."""
import json
import os
import re

import pytest
import torch

from causal_rcm_min.log import Logger
from causal_rcm_min.train import main

# Whole-model tests run on jfa's reference backend (conftest.reference_backend).
pytestmark = pytest.mark.usefixtures("reference_backend")

TIMED = ("steps_per_s", "train_seconds")   # wall-clock values in the log records


class Interrupted(Exception):
    pass


def interrupt_after_logging(monkeypatch, at_step):
    """The run stops right after it logs step ``at_step``: its log is then ahead of its last checkpoint."""
    log = Logger.log

    def log_then_stop(self, step, **values):
        log(self, step, **values)
        if step == at_step:
            raise Interrupted

    monkeypatch.setattr(Logger, "log", log_then_stop)


def run(out, stage, *overrides, resume=False):
    main(["--preset", "tiny", "--stage", stage, "--out", str(out), *overrides, *(["--resume"] if resume else [])])


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMED} for r in records]


def read_log(folder):
    with open(os.path.join(folder, "train.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_state(a, b):
    """Two state dicts (nested: optimizer states) equal bit for bit."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def assert_same_run(dir_a, dir_b, parts):
    """Same step, log history and states ``parts`` in the two folders' checkpoints."""
    a, b = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=False) for d in (dir_a, dir_b))
    assert a["step"] == b["step"]
    assert untimed(a["history"]) == untimed(b["history"])
    for name in parts:
        assert_same_state(a[name], b[name])


# ---- teacher: interrupted after its checkpoint, resumed -----------------------------------
TEACHER = ["train.steps=6", "train.log_every=2", "train.ckpt_every=3"]


@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory):
    """Straight, and interrupted: checkpoint at step 3, logged up to step 4, stopped; then resumed,
    which redoes step 4 (its log window spans the checkpoint). Returns both folders and the
    steps in the interrupted run's log before the resume."""
    out = tmp_path_factory.mktemp("resume_teacher")
    run(out / "straight", "teacher_causal", *TEACHER)
    with pytest.MonkeyPatch.context() as m:
        interrupt_after_logging(m, 4)
        with pytest.raises(Interrupted):
            run(out / "resumed", "teacher_causal", *TEACHER)
    before = [r["step"] for r in read_log(out / "resumed" / "teacher_causal")]
    run(out / "resumed", "teacher_causal", *TEACHER, resume=True)
    return out / "straight" / "teacher_causal", out / "resumed" / "teacher_causal", before


def test_teacher_resume_is_bitwise(teacher_runs):
    """Losses, model, EMA and optimizer equal to the uninterrupted run's, bit for bit."""
    straight, resumed, _ = teacher_runs
    assert_same_run(straight, resumed, ("model", "ema", "opt"))


def test_resumed_log_holds_each_step_once(teacher_runs):
    straight, resumed, before = teacher_runs
    assert before == [2, 4]
    assert [r["step"] for r in read_log(resumed)] == [2, 4, 6]
    assert untimed(read_log(resumed)) == untimed(read_log(straight))


# ---- students: half the steps, then a resume that asks for all of them ---------------------
STUDENT = ["train.log_every=1", "distill.ckpt_every=1", "distill.eval_every=0", "distill.dmd_fake_ratio=1"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_students")
    run(out, "teacher_causal", "train.steps=1", "data.num_frames=4")
    return out


@pytest.mark.parametrize("stage", ["tf_kd", "tf_dcm", "tf_scm", "tf_meanflow", "sf_dmd"])
def test_student_resume_is_bitwise(tiny_teacher, stage):
    out = tiny_teacher
    run(out, stage, *STUDENT, "distill.steps=2", "distill.tag=straight")
    run(out, stage, *STUDENT, "distill.steps=1", "distill.tag=resumed")
    run(out, stage, *STUDENT, "distill.steps=2", "distill.tag=resumed", resume=True)
    parts = {"tf_dcm": ("target",), "sf_dmd": ("fake", "fake_opt")}.get(stage, ())
    assert_same_run(out / f"{stage}_straight", out / f"{stage}_resumed", ("model", "ema", "opt", *parts))
    assert untimed(read_log(out / f"{stage}_resumed")) == untimed(read_log(out / f"{stage}_straight"))
    with pytest.raises(ValueError, match=re.escape(str(out / f"{stage}_resumed" / "ckpt.pt")) + ".*distill.lr"):
        run(out, stage, *STUDENT, "distill.steps=2", "distill.tag=resumed", "distill.lr=0.5", resume=True)


def test_student_resume_with_quick_metric(tiny_teacher):
    """The quick metric's evaluations before the checkpoint are kept, not redone. The encoder
    stage runs on another data config than the teacher's, so the straight run trains the
    metric's encoder and the resumed one finds it cached: that must not change the training."""
    out = tiny_teacher
    small = ["eval.encoder_steps=2", "eval.num_real=4", "distill.eval_samples=2"]
    run(out, "encoder", *small)
    quick = [*STUDENT[:2], "distill.eval_every=1", *small]
    run(out, "tf_scm", *quick, "distill.steps=2", "distill.tag=eval_straight")
    run(out, "tf_scm", *quick, "distill.steps=1", "distill.tag=eval_resumed")
    run(out, "tf_scm", *quick, "distill.steps=2", "distill.tag=eval_resumed", resume=True)
    a, b = (torch.load(out / f"tf_scm_eval_{t}" / "ckpt.pt", weights_only=False) for t in ("straight", "resumed"))
    assert [e["step"] for e in b["evals"]] == [0, 1, 2]
    assert [{k: e[k] for k in ("step", "fd")} for e in a["evals"]] == [{k: e[k] for k in ("step", "fd")}
                                                                       for e in b["evals"]]
    assert_same_state(a["ema"], b["ema"])


# ---- files that are not checkpoints ------------------------------------------------------
def _empty(path):
    open(path, "wb").close()


def _not_torch(path):
    with open(path, "w") as f:
        f.write("not a checkpoint")


def _keyless(path):
    torch.save({"weights": torch.zeros(2)}, path)


def _not_a_dict(path):
    torch.save([torch.zeros(2)], path)


BAD = {"empty": (_empty, "empty"), "not_torch": (_not_torch, "cannot be read"),
       "keyless": (_keyless, r"lacks \[.*'config'"), "not_a_dict": (_not_a_dict, "holds a list")}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("use", ["resume", "sample", "student"])
def test_bad_checkpoint_names_file_and_fault(tmp_path, bad, use):
    write, why = BAD[bad]
    path = tmp_path / "teacher_causal" / "ckpt.pt"
    path.parent.mkdir()
    write(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + why):
        if use == "resume":
            run(tmp_path, "teacher_causal", "train.steps=2", resume=True)
        elif use == "sample":
            run(tmp_path, "sample")
        else:
            run(tmp_path, "tf_scm")


# ---- a resume under another config -------------------------------------------------------
def test_resume_under_another_config_is_refused_unless_allowed(tmp_path):
    run(tmp_path, "teacher_causal", "train.steps=2", "train.log_every=1")
    path = tmp_path / "teacher_causal" / "ckpt.pt"
    changed = ["model.frames_per_chunk=1", "data.num_frames=4"]
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*data.num_frames: 6 -> 4.*"
                                         "model.frames_per_chunk: 2 -> 1.*--allow-config-change") as e:
        run(tmp_path, "teacher_causal", "train.steps=3", *changed, resume=True)
    assert "train.steps" not in str(e.value)    # the run's length may change
    assert len(read_log(tmp_path / "teacher_causal")) == 2   # the log is left as it was
    with pytest.raises(ValueError, match="--resume"):
        run(tmp_path, "teacher_causal", "train.steps=3", *changed, "--allow-config-change")
    run(tmp_path, "teacher_causal", "train.steps=3", "train.log_every=1", *changed, "--allow-config-change",
        resume=True)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["step"] == 3 and ckpt["config"]["model"]["frames_per_chunk"] == 1
    assert ckpt["config"]["data"]["num_frames"] == 4
    assert [r["step"] for r in read_log(tmp_path / "teacher_causal")] == [1, 2, 3]


def test_resume_config_check_as_function_argument(tmp_path):
    from causal_rcm_min.config import apply_overrides, preset
    from causal_rcm_min.train import run_stage
    cfg = apply_overrides(preset("tiny"), ["train.steps=1"])
    cfg.out_dir = str(tmp_path)
    run_stage(cfg, "teacher_causal")
    changed = apply_overrides(cfg, ["train.steps=2", "model.frames_per_chunk=1"])
    with pytest.raises(ValueError, match="model.frames_per_chunk"):
        run_stage(changed, "teacher_causal", resume=True)
    run_stage(changed, "teacher_causal", resume=True, allow_config_change=True)
