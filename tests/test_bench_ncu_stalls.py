"""bench/ncu_stalls.py on a small source page in ncu's CSV form: the most sampled kernel is
picked, predicated instructions count under their opcode, and the totals add up."""
import csv

from bench import ncu_stalls

HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)", "stall_long_sb", "stall_wait",
          "stall_long_sb (Not Issued)"]


def _page(tmp_path, kernels):
    path = tmp_path / "sass.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for name, rows in kernels.items():
            w.writerow(["Kernel Name", name])
            w.writerow(HEADER)
            w.writerows(rows)
    return str(path)


def test_most_sampled_kernel_and_opcodes(tmp_path, capsys):
    small = [["0x100", "IMAD R1, R2, R3, RZ ;", "3", "0", "3", "0"]]
    main = [["0x200", "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;", "10", "2", "8", "2"],
            ["0x210", "@!P0  BRA 0x300 ;", "30", "30", "0", "30"],
            ["0x220", "@P1 BRA 0x200 ;", "5", "5", "0", "5"]]
    path = _page(tmp_path, {"preprocess": small, "bwd_main": main})
    assert ncu_stalls.main([path, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "kernel bwd_main" in out and "samples 45" in out
    assert "long_sb                     37" in out and "wait                         8" in out
    assert "BRA                   35" in out and "HGMMA                 10" in out
    hot = [line for line in out.splitlines() if "+0x" in line]
    assert len(hot) == 2 and "+0x00010" in hot[0] and "+0x00000" in hot[1]


def test_kernel_filter_and_missing_kernel(tmp_path, capsys):
    path = _page(tmp_path, {"a_kernel": [["0x0", "NOP ;", "1", "1", "0", "1"]]})
    assert ncu_stalls.main([path, "--kernel", "a_kern"]) == 0
    assert ncu_stalls.main([path, "--kernel", "nothing"]) == 1
    assert "no kernel matching 'nothing'" in capsys.readouterr().err
