"""python -m jvp_flash_attn: what is installed and what can run here. Prints the versions, each
GPU and how the compiled core serves it, what the core was built with (archs, PTX, kernel
variants, commit, nvcc) and which backends can run, with the reason when one cannot."""
from __future__ import annotations

import argparse
import json
import platform

import torch

import jvp_flash_attn as jfa
from jvp_flash_attn.backends import cuda_arch, cuda_module

BUILD_HINT = ("pip install -v . (or -e .) from the source tree with nvcc on PATH (JFA_CUDA_ARCHS picks the "
              "archs); on a machine without a GPU: make demo JFA_CUDA_BUILD=1")


def _variants(variants) -> list[str]:
    """'fwd  bf16, fp16  head dims (qk, v): 64/64, 128/128' per direction."""
    lines = []
    for op in ("fwd", "jvp", "bwd"):
        mine = [v for v in variants if v[0] == op]
        if mine:
            dtypes = ", ".join(sorted({v[1] for v in mine}))
            dims = ", ".join(f"{a}/{b}" for a, b in sorted({(v[2], v[3]) for v in mine}))
            lines.append(f"{op}  {dtypes}  head dims (qk/v): {dims}")
    return lines


def core_info() -> dict:
    """The compiled core's build record, or why there is none."""
    m = cuda_module.load_module()
    if m is None:
        return {"built": False, "reason": cuda_module.module_error()}
    info = dict(m.build_info()) if hasattr(m, "build_info") else {}
    info.update(built=True, path=m.__file__, kernels=[list(v) for v in m.variants()])
    return info


def gpus(core: dict) -> list[dict]:
    out = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        cc = torch.cuda.get_device_capability(i)
        gpu = {"index": i, "name": torch.cuda.get_device_name(i), "arch": f"sm_{cc[0]}{cc[1]}"}
        if core["built"]:
            reason, how = cuda_arch.coverage(cc, core)
            gpu["compiled core"] = how if reason is None else reason
        out.append(gpu)
    return out


def info() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    core = core_info()
    return {"version": jfa.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton_version, "torch_cuda": torch.version.cuda, "gpus": gpus(core), "compiled_core": core,
            "backends": jfa.backends()}


def report(data: dict | None = None) -> str:
    d = data or info()
    lines = [f"jvp_flash_attn {d['version']}",
             f"python {d['python']}, torch {d['torch']}, triton {d['triton'] or 'not installed'}, "
             f"CUDA {d['torch_cuda'] or 'none'}"]
    lines += [f"GPU {g['index']}: {g['name']} ({g['arch']})" + (f", compiled core: {g['compiled core']}"
                                                              if "compiled core" in g else "") for g in d["gpus"]]
    if not d["gpus"]:
        lines.append("GPU: none")
    core = d["compiled_core"]
    if core["built"]:
        runtime = core.get("cuda_runtime")
        lines.append(f"compiled core: {cuda_arch.built(core)}, {core.get('variants') or '?'} variants, "
                     f"commit {core.get('git', 'unknown')}, nvcc {core.get('nvcc') or '?'}"
                     + (f", static CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}" if runtime else "")
                     + (f", tiles {core['tiles']}" if core.get("tiles") else ""))
        lines += ["  " + line for line in _variants([tuple(v) for v in core["kernels"]])]
    elif "No module named 'jvp_flash_attn._cuda'" in core["reason"]:
        lines.append(f"compiled core: not built; build it: {BUILD_HINT}")
    else:
        lines.append(f"compiled core: cannot be loaded ({core['reason']}); rebuild it: {BUILD_HINT}")
    lines.append("backends (automatic order):")
    for name, reason in d["backends"].items():
        lines.append(f"  {name:10s} {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jvp_flash_attn", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print the same information as JSON")
    args = ap.parse_args(argv)
    print(json.dumps(info(), indent=2) if args.json else report())


if __name__ == "__main__":
    main()
