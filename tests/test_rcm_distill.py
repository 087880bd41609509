"""Causal-rCM students: the flow-matching <-> TrigFlow map, the sCM and MeanFlow JVPs (float64
against finite differences, one fused attention call per block, the primal reused for the
gradient), dCM, KD and SF-DMD pieces, student schedules, and every objective's tiny preset."""
import math

import pytest
import torch

from causal_rcm_min import losses as L
from causal_rcm_min.config import preset
from causal_rcm_min.data import to_model
from causal_rcm_min.sample import chunk_schedules, sample_streaming, student_schedules
from test_rcm_model import build


# Whole-model tests run on jfa's reference backend (conftest.reference_backend).
pytestmark = pytest.mark.usefixtures("reference_backend")


# ---- flow matching <-> TrigFlow -------------------------------------------------------
def test_trigflow_mapping_round_trips():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3, 4, generator=g, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    s = L.fm_to_trig_time(t)
    assert (s >= 0).all() and (s <= math.pi / 2).all()
    torch.testing.assert_close(L.trig_to_fm_time(s), t, rtol=1e-13, atol=1e-13)
    x0, eps = (torch.randn(3, 4, 2, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    tb, sb = t[..., None, None, None], s[..., None, None, None]
    x_t = (1 - tb) * x0 + tb * eps
    x_s = torch.cos(sb) * x0 + torch.sin(sb) * eps
    torch.testing.assert_close(x_s, L.trig_scale(sb) * x_t, rtol=1e-13, atol=1e-13)   # same point, rescaled
    v = eps - x0
    F_ = L.fm_to_trig_velocity(v, x_s, s)
    torch.testing.assert_close(F_, torch.cos(sb) * eps - torch.sin(sb) * x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(L.trig_to_fm_velocity(F_, x_s, s), v, rtol=1e-12, atol=1e-12)
    # the consistency functions agree: x_t - t v == cos s x_s - sin s F == x0
    torch.testing.assert_close(x_t - tb * v, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cos(sb) * x_s - torch.sin(sb) * F_, x0, rtol=1e-12, atol=1e-12)


def test_trigflow_ode_solution_unchanged():
    """The PF-ODE of Gaussian data (exact velocity) integrated in t and, converted, in s ends at the same x0."""
    m, sd = 0.7, 0.3

    def v_fm(x, t):     # E[eps - x0 | x_t] for x0 ~ N(m, sd^2)
        var = (1 - t) ** 2 * sd ** 2 + t ** 2
        resid = x - (1 - t) * m
        return t * resid / var - (m + (1 - t) * sd ** 2 * resid / var)

    def rk4(f, x, a, b, n=2000):
        h = (b - a) / n
        for i in range(n):
            u = a + i * h
            k1 = f(x, u)
            k2 = f(x + h / 2 * k1, u + h / 2)
            k3 = f(x + h / 2 * k2, u + h / 2)
            k4 = f(x + h * k3, u + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x

    eps = torch.linspace(-2, 2, 9, dtype=torch.float64)
    x0_fm = rk4(v_fm, eps, 1.0, 0.0)

    def F_trig(x_s, s):   # the flow-matching velocity at the same point, converted
        s = torch.tensor(s, dtype=torch.float64)
        v = v_fm(x_s / L.trig_scale(s), L.trig_to_fm_time(s))
        return L.fm_to_trig_velocity(v.view(1, -1, 1, 1, 1), x_s.view(1, -1, 1, 1, 1), s.expand(1, x_s.numel())).flatten()

    x0_trig = rk4(F_trig, eps, math.pi / 2, 0.0)
    torch.testing.assert_close(x0_trig, x0_fm, rtol=1e-9, atol=1e-9)
    # the exact map of Gaussian data: x0 = m + sd * eps
    torch.testing.assert_close(x0_fm, m + sd * eps, rtol=1e-9, atol=1e-9)


# ---- shared set-up ---------------------------------------------------------------------
def _pair(layout="chunkwise", two_times=False, dtype=torch.float64):
    student, clips = build(layout, dtype=dtype, seed=0)
    teacher, _ = build(layout, dtype=dtype, seed=1)
    if two_times:
        import copy
        import dataclasses
        from causal_rcm_min.model import CausalVideoDiT
        mcfg = dataclasses.replace(student.cfg, two_times=True)
        s2 = CausalVideoDiT(mcfg, student.data_cfg).to(dtype)
        s2.load_state_dict(student.state_dict(), strict=False)
        with torch.no_grad():
            for p in s2.r_mlp.parameters():
                p.add_(0.1 * torch.randn_like(p))
        student = s2
    x0 = to_model(clips.frames).to(dtype)
    return student, teacher, x0, clips


def _tiny_dc(**kw):
    dc = preset("tiny").distill
    for k, v in kw.items():
        setattr(dc, k, v)
    return dc


# ---- TF-sCM ----------------------------------------------------------------------------
@pytest.mark.parametrize("noisy_context", [False, True], ids=["clean_ctx", "noisy_ctx"])
def test_scm_tangent_matches_finite_differences(noisy_context):
    student, teacher, x0, clips = _pair()
    g = torch.Generator().manual_seed(3)
    B, Fr = x0.shape[:2]
    ids = L.chunk_ids(student, Fr, "cpu")
    s = L.fm_to_trig_time(torch.rand(B, int(ids.max()) + 1, generator=g, dtype=torch.float64)[:, ids] * 0.9 + 0.05)
    x_s = torch.cos(s)[..., None, None, None] * x0 + torch.sin(s)[..., None, None, None] * torch.randn(
        x0.shape, generator=g, dtype=torch.float64)
    v_w = L.teacher_velocity(teacher, x_s / L.trig_scale(s)[..., None, None, None], L.trig_to_fm_time(s),
                             clips.cond, None, x0, 2.0)
    dxds = L.fm_to_trig_velocity(v_w, x_s, s)
    ctx, ctx_t = L.student_context(student, x0, chunk_schedules([2], 3.0), noisy_context)
    F_, dF = L.scm_tangent(student, x_s, s, dxds, clips.cond, None, ctx, ctx_t)

    def f(xs, ss):
        return L.trig_student(student, xs, ss, clips.cond, None, ctx, ctx_t, zero_clean_tangent=False)

    torch.testing.assert_close(F_, f(x_s, s), rtol=1e-12, atol=1e-12)
    h = 1e-6
    fd = (f(x_s + h * dxds, s + h) - f(x_s - h * dxds, s - h)) / (2 * h)
    assert ((dF - fd).norm() / dF.norm()).item() < 1e-6
    # The context as an explicit input with zero tangent (clean tokens, clean times) gives the same tangent.
    _, dF2 = torch.func.jvp(lambda xs, ss, c: L.trig_student(student, xs, ss, clips.cond, None, c, ctx_t, False),
                            (x_s, s, ctx), (dxds, torch.ones_like(s), torch.zeros_like(ctx)))
    torch.testing.assert_close(dF, dF2, rtol=1e-10, atol=1e-12)


def _count_backend(monkeypatch):
    from jvp_flash_attn.backends.reference_backend import ReferenceBackend
    calls = {"forward": 0, "forward_jvp": 0}
    for name in calls:
        orig = getattr(ReferenceBackend, name)

        def counted(self, *a, _orig=orig, _name=name):
            calls[_name] += 1
            return _orig(self, *a)

        monkeypatch.setattr(ReferenceBackend, name, counted)
    return calls


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse_primal", "second_forward"])
def test_scm_loss_one_fused_call_per_block(monkeypatch, reuse):
    """One teacher forward (CFG doubled into one batch) and one fused forward+JVP per block;
    reusing the primal saves the student's second forward and gives the same gradient. The fused
    call's mask promises zero tangents on the clean context, so it runs the backend's forward on
    the clean rows and its forward+JVP on the noisy ones (jvp_flash_attn/tangent_rows.py)."""
    student, teacher, x0, clips = _pair()
    tc, dc = preset("tiny").train, _tiny_dc(reuse_primal=reuse)
    depth = student.cfg.depth
    calls = _count_backend(monkeypatch)
    torch.manual_seed(7)
    loss, info = L.tf_scm_loss(student, teacher, x0, clips.cond, None, tc, dc, student_schedules(dc), step=1)
    assert calls == {"forward": depth * (1 if reuse else 2) + depth, "forward_jvp": depth}
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in student.parameters()])
    assert torch.isfinite(grads).all() and grads.norm() > 0 and int(info["nonfinite"]) == 0
    if reuse:   # the other parametrisation of the same draw must agree
        student.zero_grad()
        torch.manual_seed(7)
        loss2, _ = L.tf_scm_loss(student, teacher, x0, clips.cond, None, tc, _tiny_dc(reuse_primal=False),
                                 student_schedules(dc), step=1)
        loss2.backward()
        torch.testing.assert_close(loss2, loss, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in student.parameters()]), grads,
                                   rtol=1e-9, atol=1e-14)


def test_scm_gradient_is_normalised_g():
    """At theta^- = theta the loss gradient w.r.t. F is -2 g / numel, with ||g|| < 1 per chunk;
    the tangent warmup r = 0 drops the dF/ds term."""
    student, teacher, x0, clips = _pair()
    tc, dc = preset("tiny").train, _tiny_dc(scm_tangent_warmup=10)
    captured = {}
    orig = L.scm_tangent

    def spy(*a, **k):
        F_, dF = orig(*a, **k)
        F_.retain_grad()
        captured["F"], captured["dF"] = F_, dF
        return F_, dF

    L.scm_tangent, saved = spy, L.scm_tangent
    try:
        torch.manual_seed(1)
        loss, _ = L.tf_scm_loss(student, teacher, x0, clips.cond, None, tc, dc, student_schedules(dc), step=0)
    finally:
        L.scm_tangent = saved
    loss.backward()
    g = -captured["F"].grad * captured["F"].numel() / 2
    norms = L.per_chunk_norm(g, L.chunk_ids(student, x0.shape[1], "cpu"))
    assert (norms < 1).all() and (norms > 0.5).all()
    assert loss.item() == pytest.approx(g.pow(2).mean().item(), rel=1e-10)


def test_nan_guard():
    g = torch.randn(2, 3, 1, 2, 2, dtype=torch.float64)
    g[1, 2, 0, 1, 1] = float("nan")
    out, bad = L._nan_guard(g)
    assert int(bad) == 1 and torch.isfinite(out).all() and (out[1, 2] == 0).all()
    torch.testing.assert_close(out[0], g[0])


# ---- TF-MeanFlow -----------------------------------------------------------------------
def test_meanflow_jvp_and_loss(monkeypatch):
    student, teacher, x0, clips = _pair(two_times=True)
    g = torch.Generator().manual_seed(4)
    B, Fr = x0.shape[:2]
    t = torch.rand(B, Fr, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = t * 0.5
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.randn(x0.shape, generator=g, dtype=torch.float64)

    def u(zz, rr, tt):
        return student(zz, tt, clips.cond, mode="teacher_forcing", clean=x0, r=rr)

    _, dudt = torch.func.jvp(u, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    h = 1e-6
    fd = (u(z + h * v, r, t + h) - u(z - h * v, r, t - h)) / (2 * h)
    assert ((dudt - fd).norm() / dudt.norm()).item() < 1e-6
    tc, dc = preset("tiny").train, _tiny_dc()
    calls = _count_backend(monkeypatch)
    loss, info = L.tf_meanflow_loss(student, teacher, x0, clips.cond, None, tc, dc, student_schedules(dc))
    # the fused call's clean rows run the backend's forward (the mask's zero-tangent hint)
    assert calls == {"forward": 2 * student.cfg.depth, "forward_jvp": student.cfg.depth}
    loss.backward()
    assert student.r_mlp[2].weight.grad.norm() > 0 and int(info["nonfinite"]) == 0


def test_meanflow_sampler_and_two_time_checks():
    student, _, x0, clips = _pair(two_times=True, dtype=torch.float32)
    out = sample_streaming(student, clips.cond, None, x0.shape[1], chunk_schedules([2, 1], 1.0), solver="meanflow")
    assert out.shape == clips.frames.shape
    plain, _, _, _ = _pair(dtype=torch.float32)
    with pytest.raises(ValueError, match="two_times"):
        plain(x0, torch.rand(x0.shape[:2]), clips.cond, r=torch.zeros(x0.shape[:2]))
    with pytest.raises(ValueError, match="two-time"):
        L.tf_meanflow_loss(plain, plain, x0, clips.cond, None, preset("tiny").train, _tiny_dc(), [[1.0, 0.0]])


# ---- TF-dCM, TF-KD ---------------------------------------------------------------------
def test_dcm_loss_and_grid():
    grid = L.dcm_grid(8, 3.0)
    assert grid[0] == 0 and grid[-1] == 1 and (grid[1:] > grid[:-1]).all()
    student, teacher, x0, clips = _pair(dtype=torch.float32)
    import copy
    target = copy.deepcopy(student)
    loss = L.tf_dcm_loss(student, target, teacher, x0, clips.cond, None, grid, 2.0, [[1.0, 0.0]], False)
    loss.backward()
    assert torch.isfinite(loss) and student.x_in.weight.grad.norm() > 0
    # one interval from 1 to 0: the target is the teacher's Euler jump itself (f(x, 0) = x)
    two = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.manual_seed(0)
    a = L.tf_dcm_loss(student, target, teacher, x0, clips.cond, None, two, 1.0, [[1.0, 0.0]], False)
    torch.manual_seed(0)
    torch.randint(1, 2, (x0.shape[0], len(student.pattern(x0.shape[1]).chunk_frames)))   # the loss's draw of n
    eps = torch.randn_like(x0)
    x_hat = eps - L.teacher_velocity(teacher, eps, torch.ones(x0.shape[:2]), clips.cond, None, x0, 1.0)
    pred = eps - student(eps, torch.ones(x0.shape[:2]), clips.cond, mode="teacher_forcing", clean=x0)
    torch.testing.assert_close(a, torch.nn.functional.mse_loss(pred, x_hat))


def test_kd_pairs_and_loss():
    student, teacher, x0, clips = _pair(dtype=torch.float32)
    eps, x0_t = L.teacher_ode_pairs(teacher, x0, clips.cond, None, steps=3, shift=2.0, cfg_scale=2.0)
    assert eps.shape == x0.shape and torch.isfinite(x0_t).all()
    loss = L.tf_kd_loss(student, x0, eps, x0_t, clips.cond, None, [[1.0, 0.0]], False)
    pred = eps - student(eps, torch.ones(x0.shape[:2]), clips.cond, mode="teacher_forcing", clean=x0)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(pred, x0_t))


# ---- schedules -------------------------------------------------------------------------
def test_student_schedules_shared():
    dc = _tiny_dc(student_steps=[4, 2, 1], t_shift=1.0)
    assert student_schedules(dc) == [[1.0, 0.75, 0.5, 0.25, 0.0], [1.0, 0.5, 0.0], [1.0, 0.0]]
    dc = _tiny_dc(schedule=[[1.0, 0.6, 0.0], [1.0, 0.0]])
    assert student_schedules(dc) == [[1.0, 0.6, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="schedule"):
        student_schedules(_tiny_dc(schedule=[[1.0, 0.6]]))
    model, _ = build("framewise", dtype=torch.float32)
    t = L.schedule_times(model, 64, 5, student_schedules(dc), "cpu")
    assert {round(v, 6) for v in t[:, 0].tolist()} == {1.0, 0.6} and set(t[:, 1:].flatten().tolist()) == {1.0}
    ctx, ctx_t = L.student_context(model, torch.zeros(2, 5, 3, 16, 16), student_schedules(dc), True)
    assert ctx_t[0].tolist() == pytest.approx([0.6, 1.0, 1.0, 1.0, 1.0])


# ---- SF-DMD ----------------------------------------------------------------------------
@pytest.mark.parametrize("noisy_context", [False, True], ids=["clean_ctx", "noisy_ctx"])
def test_self_forcing_rollout_grad_only_at_exit(noisy_context):
    gen_model, teacher, x0, clips = _pair("first3_then2", dtype=torch.float32)
    grad_calls = []
    orig = gen_model.forward_chunk

    def counted(*a, **k):
        grad_calls.append(torch.is_grad_enabled())
        return orig(*a, **k)

    gen_model.forward_chunk = counted
    schedules = [[1.0, 0.7, 0.3, 0.0]]
    x = L.self_forcing_rollout(gen_model, clips.cond, None, 5, schedules, noisy_context)
    chunks = len(gen_model.pattern(5).chunk_frames)
    assert x.shape == x0.shape and x.requires_grad
    assert sum(grad_calls) == chunks   # exactly one recorded forward per chunk: its exit step
    fake, _ = build("first3_then2", dtype=torch.float32, seed=2)
    loss, info = L.sf_dmd_generator_loss(x, teacher, fake, clips.cond, None, _tiny_dc())
    x.retain_grad()
    loss.backward()
    assert gen_model.x_in.weight.grad.norm() > 0 and int(info["nonfinite"]) == 0
    fl = L.sf_dmd_fake_loss(fake, x, clips.cond, None, preset("tiny").train)
    fl.backward()
    assert fake.x_in.weight.grad.norm() > 0


def test_dmd_gradient_normalised():
    """dL/dx = (x0_fake - x0_real) / mean|x - x0_real| / numel: with fake = teacher and no
    guidance the gradient vanishes."""
    gen_model, teacher, x0, clips = _pair(dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    dc = _tiny_dc(cfg_scale=1.0)
    loss, _ = L.sf_dmd_generator_loss(x, teacher, teacher, clips.cond, None, dc)
    loss.backward()
    assert x.grad.abs().max() < 1e-12
    loss, _ = L.sf_dmd_generator_loss(x, teacher, gen_model, clips.cond, None, dc)
    x.grad = None
    loss.backward()
    assert x.grad.abs().max() > 0 and x.grad.abs().sum() * x.numel() > 0.01 * x.numel()


# ---- every objective's tiny preset through the command line ------------------------------
TEACHER_FAST = ["train.steps=3", "eval.encoder_steps=5", "eval.num_real=8"]


@pytest.fixture(scope="module", params=["chunkwise", "framewise"])
def tiny_teacher(request, tmp_path_factory):
    from causal_rcm_min.train import main
    out = str(tmp_path_factory.mktemp(f"students_{request.param}"))
    fpc = 2 if request.param == "chunkwise" else 1
    main(["--preset", "tiny", "--stage", "teacher_causal", "--out", out, *TEACHER_FAST,
          f"model.frames_per_chunk={fpc}"])
    main(["--preset", "tiny", "--stage", "encoder", "--out", out, *TEACHER_FAST])
    return out, fpc


@pytest.mark.parametrize("stage", ["tf_kd", "tf_dcm", "tf_scm", "tf_meanflow", "sf_dmd"])
def test_tiny_student_stage(tiny_teacher, stage):
    import json
    import os
    from causal_rcm_min.train import main
    out, fpc = tiny_teacher
    main(["--preset", "tiny", "--stage", stage, "--out", out, *TEACHER_FAST])
    with open(os.path.join(out, stage, "train_metrics.json")) as f:
        m = json.load(f)
    assert m["steps"] == preset("tiny").distill.steps and m["frames_per_chunk"] == fpc
    assert len(m["evals"]) >= 2 and all(e["fd"] >= 0 for e in m["evals"])
    assert m["evals"][-1]["train_seconds"] > 0
    if stage == "tf_scm":   # an SF-DMD student from it, noisy context, custom schedule; sampled and scored
        main(["--preset", "tiny", "--stage", "sf_dmd", "--out", out, "distill.init=tf_scm", "distill.tag=from_scm",
              "distill.noisy_context=true", "distill.schedule=[[1.0,0.5,0.0],[1.0,0.0]]", "distill.eval_every=0",
              *TEACHER_FAST])
        for s in ("sample", "evaluate"):
            main(["--preset", "tiny", "--stage", s, "--out", out, "sample.teacher=sf_dmd_from_scm", *TEACHER_FAST])
        with open(os.path.join(out, "sf_dmd_from_scm", "results.json")) as f:
            r = json.load(f)
        assert r["sampler"]["solver"] == "consistency" and r["sampler"]["noisy_context"] is True
        assert r["sampler"]["steps"] == [2, 1] and r["sampler"]["cfg_scale"] == 1.0


def test_student_needs_a_teacher_forcing_teacher(tmp_path):
    from causal_rcm_min.train import main
    with pytest.raises(ValueError, match="checkpoint"):
        main(["--preset", "tiny", "--stage", "tf_scm", "--out", str(tmp_path)])
    main(["--preset", "tiny", "--stage", "teacher_causal_df", "--out", str(tmp_path), "train.steps=1"])
    with pytest.raises(ValueError, match="teacher-forcing"):
        main(["--preset", "tiny", "--stage", "tf_scm", "--out", str(tmp_path), "distill.teacher=teacher_causal_df"])


# ---- the reproduction script, end to end at its smallest ------------------------------------
def test_repro_budget_runs_one_stage_per_piece(tmp_path):
    """A piece whose budget is spent before it starts (a loaded machine) still runs one stage:
    pieces always make progress, and the budget never decides alone whether a stage runs."""
    import time
    from causal_rcm_min.repro import Runner
    ran = []
    for piece in range(3):
        runner = Runner(str(tmp_path), budget_s=1e-9)
        time.sleep(0.01)
        for name in ("a", "b"):
            runner.stage(name, lambda name=name: ran.append(name))
        assert runner.stopped == (piece == 0)
    assert ran == ["a", "b"]


@pytest.mark.slow
def test_repro_script_smoke_resumable(tmp_path):
    """examples/causal_rcm/run_rcm_repro.sh with PRESET=smoke: every stage of the reproduction (both layouts side by
    side, teachers, the TF-sCM timing, TF-KD/dCM/sCM, SF-DMD from each initialisation, sampling, scores,
    the report) at the smallest sizes, split into pieces by the budget and rerun once all is done."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "examples", "causal_rcm", "run_rcm_repro.sh")
    # one thread per process: the two layouts run side by side, and tiny models gain nothing from more
    env = dict(os.environ, PRESET="smoke", WORK=str(tmp_path / "work"), PY=sys.executable, JFA_BACKEND="reference",
               OMP_NUM_THREADS="1")
    # a first piece (layouts one after the other) that stops on its budget after the first stage (a piece
    # always runs one, however loaded the machine), then the rest with the layouts side by side
    first = subprocess.run(["bash", script, str(tmp_path / "res")], env=env | {"BUDGET_S": "0.001", "PARALLEL": "0"},
                           check=True, capture_output=True, text=True)
    assert "rerun to continue" in first.stdout
    assert os.listdir(tmp_path / "work" / ".done") == ["chunkwise.teacher"]   # stopped before the next stage
    # about 35 s on 2 cores (100 s on a heavily loaded pair): the limit only catches a hang
    subprocess.run(["bash", script, str(tmp_path / "res")], env=env, check=True, capture_output=True, timeout=1800)
    res = tmp_path / "res"
    for name in ("table.md", "table.json", "scm_vs_dcm.png", "curves_and_timing.json", "machine.json",
                 "filmstrips/chunkwise_teacher_causal.png", "filmstrips/framewise_sf_dmd_from_tf_scm_1step.png"):
        assert (res / name).exists(), name
    rows = json.loads((res / "table.json").read_text())
    dmd = {(r["layout"], r["init"], r["steps"]) for r in rows if r["model"] == "SF-DMD"}
    assert len(dmd) == 2 * 4 * 1      # layouts x inits x step counts (smoke: 1 step)
    timing = json.loads((res / "curves_and_timing.json").read_text())
    assert set(timing["scm_ms_per_step"]) == {"reuse", "second"} and set(timing["curves"]) == {
        "chunkwise tf_scm", "chunkwise tf_dcm"}   # the curves are measured on the chunk-wise layout
    # a third run finds every stage done and only rewrites the report
    again = subprocess.run(["bash", script, str(tmp_path / "res")], env=env | {"PARALLEL": "0"}, check=True,
                           capture_output=True, text=True)
    assert "[repro] stage" not in again.stdout and "all stages done" in again.stdout
