"""What an install reports about itself: one version, `python -m jvp_flash_attn` (a real --help,
the build's archs, kernel variants and commit), and a compiled core that links no torch and no
CUDA runtime library, so one build serves every torch."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import jvp_flash_attn as jfa
from jvp_flash_attn.__main__ import main
from jvp_flash_attn.backends import cuda_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the core may link: the C and C++ runtimes and the loader. No libtorch/libc10, no libcudart
# (it is linked statically), no libcuda (the static runtime opens the driver at run time).
SYSTEM_LIBS = re.compile(r"^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[-\w]*)\.so(\.\d+)*$")


def _main(*args):
    """The command as users run it."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "jvp_flash_attn", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=True).stdout


def test_version_has_one_source():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert 'dynamic = ["version"]' in pyproject and "jvp_flash_attn._version.__version__" in pyproject
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, flags=re.M)   # no second copy
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", jfa.__version__)
    try:
        from importlib.metadata import PackageNotFoundError, version
        installed = version("jvp-flash-attn")
    except PackageNotFoundError:
        pytest.skip("the package is not installed, only on the path")
    assert installed == jfa.__version__


def test_help_is_argparse_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith("usage: python -m jvp_flash_attn") and "--json" in out and "archs" in out


def test_report_says_what_was_built(capsys):
    main(["--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == jfa.__version__
    assert set(data["backends"]) == {"cuda", "triton", "reference"}
    core, text = data["compiled_core"], _main()
    if not core["built"]:
        assert "compiled core: not built" in text and "JFA_CUDA_BUILD=1" in text
        return
    assert core["sass"] and core["ptx"].startswith("compute_") and core["variants"] in ("full", "ci")
    assert core["git"] and core["kernels"]
    line = next(x for x in text.splitlines() if x.startswith("compiled core: "))
    assert all(a in line for a in core["sass"]) and core["ptx"] in line and core["git"] in line
    assert f"{core['variants']} variants" in line
    assert re.search(r"^  fwd  bf16.*128/128", text, flags=re.M)


def test_compiled_core_links_no_torch_and_no_cuda_runtime():
    m = cuda_module.load_module()
    if m is None:
        pytest.skip(cuda_module.module_error())
    if shutil.which("readelf") is None:
        pytest.skip("needs readelf (binutils)")
    dynamic = subprocess.run(["readelf", "-d", m.__file__], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    assert needed, dynamic
    assert [lib for lib in needed if not SYSTEM_LIBS.match(lib)] == []
