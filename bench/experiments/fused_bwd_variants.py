"""Timing experiment for the one-kernel backward (bench/NOTES_cuda.md, item 8): builds copies of
the tree with one change each to the fused kernel and times W1's backward kernels in each.
Results are not checked (some variants compute wrong dQ on purpose); this only splits time.
The edits assert that they apply. E-H were run on item 8's bulk reduce-add kernel with 64 keys
per block, a version never committed; they also apply to commit f1734b5's (128 keys per block),
not to later kernels: adapt them first.

    python bench/experiments/fused_bwd_variants.py OUT_DIR          # on a GPU machine

  A  as in the tree
  E  no bulk reduce-add (the staging writes and barrier stay)
  F  the bulk reduce-add without waiting for its shared-memory read (races with the next prefetch)
  G  a quarter of the bytes per bulk reduce-add (8 KiB of the 32 KiB tile)
  H  E, and no staging writes either (the dQ products stay; their result feeds an impossible branch)

(An earlier version of this script, run on the per-thread-atomics kernel of item 8, had
B no atomics, C rotated walk start, D private rows per block.)
"""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

KERNEL = "csrc/jfa/bwd_kernel_sm90.h"
ISSUE = "bulk_reduce_add_f32(p.dq_accum + tile * kBM * kDQK, staging, kDQK / kDQHalf * kDQHalfBytes);"
WAIT = "bulk_wait_read();   // the stage is refilled by the next step's prefetch"
STAGE = "stage_dq_half(staging + c * kDQHalfBytes, acc_dq, warp * 16, lane);"
EDITS = {
    "A": [],
    "E": [(ISSUE, ""), (WAIT, "")],
    "F": [(WAIT, "")],
    "G": [(ISSUE, "bulk_reduce_add_f32(p.dq_accum + tile * kBM * kDQK, staging, kDQK / kDQHalf * kDQHalfBytes / 4);")],
    "H": [(ISSUE, ""), (WAIT, ""), (STAGE, "if (acc_dq[0][0] == 12345.f) p.dq_accum[lane] = acc_dq[1][1];")],
}

def build(name, out):
    root = f"/tmp/jfa_variant_{name}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(".", root, ignore=shutil.ignore_patterns(".git", "build", "*.so", "__pycache__"))
    path = os.path.join(root, KERNEL)
    text = open(path).read()
    for old, new in EDITS[name]:
        assert text.count(old) == 1, (name, old)
        text = text.replace(old, new)
    open(path, "w").write(text)
    env = dict(os.environ, JFA_CUDA_ARCHS="90", JFA_CUDA_VARIANTS="ci")
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=root, env=env,
                       capture_output=True, text=True)
    open(os.path.join(out, f"build_{name}.log"), "w").write(r.stdout[-3000:] + r.stderr[-3000:])
    return root, r.returncode


def main(out):
    os.makedirs(out, exist_ok=True)
    with ThreadPoolExecutor(len(EDITS)) as ex:
        built = dict(zip(EDITS, ex.map(lambda n: build(n, out), EDITS)))
    for name, (root, rc) in built.items():
        print(f"== variant {name} (build rc={rc})", flush=True)
        if rc != 0:
            continue
        env = dict(os.environ, PYTHONPATH=f"{root}:{root}/python")
        r = subprocess.run([sys.executable, "bench/profile_kernels.py", "W1", "bwd", "--backends", "cuda"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=120)
        print("\n".join(l for l in r.stdout.splitlines() if "bwd" in l or "==" in l), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
