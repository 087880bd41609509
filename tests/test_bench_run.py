"""CPU smoke of bench/run.py at a tiny scale: files are written, numbers are sane, and a wrong
provider is caught by the correctness check before it is timed."""
import csv
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import providers, report, run, workloads  # noqa: E402
from jvp_flash_attn.reference import flops  # noqa: E402

TINY = ["--scale", "0.005", "--device", "cpu", "--rep-ms", "5", "--warmup-ms", "1", "--seed", "7"]


def _run(tmp_path, *extra):
    rc = run.main([*TINY, "--out", str(tmp_path), *extra])
    return rc, list(csv.DictReader(open(tmp_path / "results.csv")))


def test_workloads_match_design():
    sizes = {w.id: (w.mask().sq, w.mask().sk, w.heads, w.d_qk) for w in workloads.WORKLOADS.values()}
    assert sizes == {"W1": (65520, 65520, 12, 128), "W2": (65520, 65520, 12, 128),
                     "W3": (32760, 32760, 12, 128), "W4": (32760, 32760, 12, 128),
                     "W5": (98280, 98280, 12, 128), "W6": (32760, 32760, 12, 128),
                     "W7": (4680, 32760, 12, 128), "W8": (32760, 32760, 16, 64)}
    w5 = workloads.WORKLOADS["W5"].mask(0.01)
    assert w5.name == "block_causal" and w5.num_pairs < w5.sq * (w5.sq + 1) // 2  # windowed
    assert workloads.WORKLOADS["W7"].mask(0.01).num_pairs == 48 * 336  # last chunk sees everything


def test_smoke_reference(tmp_path, capsys):
    rc, rows = _run(tmp_path, "--providers", "reference,cuda", "--workloads", "W1,W7", "--ops", "fwd,bwd,jvp")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skip provider cuda" in printed and "check, whole output" in printed
    assert [(r["workload"], r["op"]) for r in rows] == [
        (w, op) for w in ("W1", "W7") for op in ("fwd", "bwd", "jvp")]
    for r in rows:
        assert r["provider"] == "reference" and r["gpu"].startswith("cpu") and r["torch"] == torch.__version__
        assert r["git_sha"] and r["date"] and r["scale"] == "0.005" and r["dtype"] == "bfloat16"
        p20, p50, p80 = (float(r[k]) for k in ("ms_p20", "ms_p50", "ms_p80"))
        assert 0 < p20 <= p50 <= p80 < 60_000
        w = workloads.WORKLOADS[r["workload"]]
        f = flops(w.mask(0.005), 1, w.heads, w.d_qk, w.d_v, r["op"])
        assert math.isclose(float(r["tflops"]), f / (p50 * 1e-3) / 1e12, rel_tol=1e-2, abs_tol=1e-4)
        assert int(r["pairs"]) == w.mask(0.005).num_pairs
    md = (tmp_path / "results.md").read_text()
    assert "| op | workload |" in md and md.count("| reference |") == 6 and "Skipped" in md
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    notes = list(csv.DictReader(open(tmp_path / "notes.csv")))
    assert [(n["provider"], n["kind"]) for n in notes] == [("cuda", "skipped")]


def test_report_merges_runs(tmp_path):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert run.main([*TINY, "--out", str(a), "--providers", "reference", "--workloads", "W3", "--ops", "fwd"]) == 0
    assert run.main([*TINY, "--out", str(b), "--providers", "reference", "--workloads", "W7", "--ops", "jvp"]) == 0
    assert report.main([str(a), str(b), "--out", str(merged)]) == 0
    rows = list(csv.DictReader(open(merged / "results.csv")))
    assert [(r["workload"], r["op"]) for r in rows] == [("W3", "fwd"), ("W7", "jvp")]
    assert rows == list(csv.DictReader(open(a / "results.csv"))) + list(csv.DictReader(open(b / "results.csv")))
    md = (merged / "results.md").read_text()
    assert md.count("| reference |") == 2
    table = lambda text: [l for l in text.splitlines() if l.startswith("| ")]
    assert table(md) == table((a / "results.md").read_text()) + table((b / "results.md").read_text())[1:]
    assert (merged / "results.png").stat().st_size > 5000


class _Broken(providers.JfaProvider):
    """The reference backend with its output nudged: the check must refuse to time it."""

    def prepare(self, op, inp):
        prep = super().prepare(op, inp)
        return providers.Prepared(prep.fn, lambda r: tuple(x * 1.01 for x in prep.outputs(r)))


def test_wrong_provider_is_not_timed(tmp_path, monkeypatch, capsys):
    broken = _Broken("reference")
    broken.name = "broken"
    monkeypatch.setattr(providers, "all_providers", lambda: {"broken": broken})
    rc, rows = _run(tmp_path, "--providers", "broken", "--workloads", "W3", "--ops", "fwd,jvp")
    assert rc == 1 and rows == []
    assert "CHECK FAILED" in capsys.readouterr().out
    assert "Failed correctness checks" in (tmp_path / "results.md").read_text()


def test_row_slice_check_catches_one_wrong_row():
    """At sizes checked by row slices, a single wrong row in a slice fails the check."""
    m = workloads.WORKLOADS["W4"].mask(0.01)
    inp = providers.Inputs.draw(m, 1, 2, 2, 32, 32, torch.bfloat16, "cpu", torch.Generator().manual_seed(0))
    prep = providers.JfaProvider("reference").prepare("jvp", inp)
    o, to = prep.outputs(prep.fn())
    assert run.check.check_rows("jvp", inp, (o, to))[0]
    to = to.clone()
    to[:, -1] += 1.0
    assert not run.check.check_rows("jvp", inp, (o, to))[0]


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        run.main([*TINY, "--out", str(tmp_path), "--providers", "nope"])
    with pytest.raises(ValueError, match="unknown id"):
        run.main([*TINY, "--out", str(tmp_path), "--workloads", "W9"])


@pytest.mark.parametrize("op", ["fwd", "bwd", "jvp"])
def test_row_reference_equals_whole_reference_rows(op):
    """Row slices computed alone (a causal segment cut in the middle) equal the whole run's rows."""
    from jvp_flash_attn import masks
    m = masks.from_segments([37, 50, 13], [60, 40], [[2, 0], [1, 2], [0, 1]])
    inp = providers.Inputs.draw(m, 2, 4, 2, 16, 24, torch.float64, "cpu", torch.Generator().manual_seed(1))
    whole = run.check.reference_op(op, inp, torch.float64)
    for r0, r1 in [(20, 45), (0, 100), (90, 100)]:
        rows = run.check.row_reference(op, inp, r0, r1, torch.float64)
        for got, ref in zip(rows, whole):
            torch.testing.assert_close(got, ref[:, r0:r1], rtol=1e-10, atol=1e-10)


def test_goals_table():
    base = dict(ms_p20=1.0, ms_p80=1.0, peak_mem_mib=1.0, sq=1, sk=1)
    rows = [dict(base, op="fwd", workload="W1", provider="flex", ms_p50=20.0, tflops=300.0),
            dict(base, op="fwd", workload="W1", provider="flex-flash", ms_p50=12.5, tflops=480.0),
            dict(base, op="fwd", workload="W1", provider="cuda", ms_p50=10.0, tflops=600.0),
            dict(base, op="bwd", workload="W6", provider="cuda", ms_p50=10.0, tflops=600.0),
            dict(base, op="jvp", workload="W3", provider="triton", ms_p50=30.0, tflops=300.0),
            dict(base, op="jvp_hinted", workload="W1", provider="cuda", ms_p50=30.0, tflops=300.0)]
    assert report.goals(rows) == [
        "| fwd | W1 | cuda | 1.25x flex-flash | >= 1.0x fastest peer | met |",
        "| jvp | W3 | triton | 300 TFLOP/s | >= 700 TFLOP/s | missed |",
        "| jvp_hinted | W1 | cuda | 30.0 ms | <= 22 ms | missed |"]
    md = report.markdown(rows, [], {}, 1.0)
    assert "## Performance goals" in md
    assert "| fwd | W1 | 1 x 1 | cuda | 10.000 (1.000-1.000) | 600.0 | 1 | 1.25x flex-flash | 2.00x |" in md
    assert "| fwd | 1.25 (flex-flash) | - |" in md  # the summary: cuda / fastest peer per op
    assert "## Performance goals" not in report.markdown(rows, [], {}, 0.01)


def test_fastest_peer_is_the_fastest_provider_not_ours():
    base = dict(ms_p20=1.0, ms_p80=1.0, peak_mem_mib=1.0, sq=1, sk=1, tflops=1.0)
    rows = [dict(base, op="bwd", workload="W6", provider=p, ms_p50=ms)
            for p, ms in (("cuda", 5.0), ("triton", 4.0), ("flex", 9.0), ("cudnn", 7.0), ("sdpa", 8.0))]
    assert report.fastest_peers(rows) == {("bwd", "W6"): ("cudnn", 7.0)}


def test_jvp_hinted_runs_on_teacher_forcing_only(tmp_path):
    rc, rows = _run(tmp_path, "--providers", "reference", "--workloads", "W2,W4", "--ops", "jvp_hinted")
    assert rc == 0 and [(r["workload"], r["op"]) for r in rows] == [("W2", "jvp_hinted")]


def test_report_reads_the_old_name_of_the_hinted_jvp(tmp_path):
    """Older runs under bench/results/ call the hinted JVP jvp_zt: the report reads it as jvp_hinted."""
    old = Path(__file__).resolve().parents[1] / "bench" / "results" / "h200_peers_2026-11-30"
    rows, _ = report.load([old])
    assert {r["op"] for r in rows} == {"fwd", "bwd", "jvp", "jvp_hinted"}
    assert [r["workload"] for r in rows if r["op"] == "jvp_hinted" and r["provider"] == "cuda"] == ["W1", "W2"]
    d = tmp_path / "old"
    d.mkdir()
    (d / "results.csv").write_text((old / "results.csv").read_text())
    (d / "notes.csv").write_text(",".join(report.NOTE_FIELDS) + "\nW4,jvp_zt,cuda,skipped,not teacher forcing\n")
    _, notes = report.load([d])
    assert notes == [("W4", "jvp_hinted", "cuda", "skipped", "not teacher forcing")]
    assert "| jvp_hinted | W1 | cuda |" in report.markdown(rows, notes, {}, 1.0)


@pytest.mark.parametrize("args, says", [(["W1", "jvp", "--backends", "cuda,flex-flash"], "FlexAttention has no JVP"),
                                        (["W3", "jvp_hinted", "--backends", "cuda"], "no zero-tangent half")])
def test_profile_kernels_refuses_what_has_no_jvp(args, says, capsys):
    """bench/profile_kernels.py profiles the JVP too (the fused kernel, with and without the hint),
    and says why before touching a GPU when a peer has no JVP or a workload no hinted half."""
    from bench import profile_kernels
    with pytest.raises(SystemExit):
        profile_kernels.main(args)
    assert says in capsys.readouterr().err


def test_every_provider_has_its_own_color():
    """The charts give each provider one color in every panel and run, a different one each."""
    names = set(providers.all_providers()) | set(report.OURS)
    assert names <= set(report.COLORS), names - set(report.COLORS)
    assert len(set(report.COLORS.values())) == len(report.COLORS)


def test_ordered_dq_model():
    """bench/simulate_ordered_dq.py: the turns never make a backward faster than the fast form,
    and cost nothing where every block reaches each query tile in launch order and adds are free
    (a full mask); dearer adds never make it faster; two dQ warps never make it slower."""
    from jvp_flash_attn import masks
    from bench import simulate_ordered_dq as sim
    fast, *_ = sim.ARRANGEMENTS
    same_order = sim.Arrangement("ordered, the fast form's order", "ascending", "full_first")
    now = sim.Arrangement("now", "descending", "ascending")
    two = sim.Arrangement("two warps", "descending", "ascending", "two_warps")

    def run(mask, a, add):
        return sim.simulate(sim.key_tile_walks(mask, a.walk, sim.block_m(128)), 3, a, step_us=1.0, add_us=add,
                            partial_extra=0.1, sms=8)
    full, causal = masks.full(700, 900), workloads.select("W3")[0].mask(scale=0.05)
    assert run(full, same_order, 0.0) == run(full, fast, 0.0)
    assert run(causal, same_order, 0.0) >= run(causal, fast, 0.0)
    assert run(causal, now, 0.5) <= run(causal, now, 2.0) <= run(causal, now, 4.0)
    assert run(causal, two, 2.0) <= run(causal, now, 2.0)
