"""The set-up behind `make demo` and `make test` (tools/dev_setup.py): no kernel build without a
GPU unless asked (said in one line), and a new install only when the build's inputs change."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import dev_setup  # noqa: E402


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("JFA_CUDA_BUILD", "JFA_SKIP_CUDA_BUILD", *dev_setup.BUILD_ENV):
        monkeypatch.delenv(var, raising=False)


def test_no_gpu_means_no_kernel_build_and_one_line_saying_how(clean_env, monkeypatch, capsys):
    monkeypatch.setattr(dev_setup, "gpu_visible", lambda: False)
    assert dev_setup.cuda_mode("demo") == "0"
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "no GPU visible" in out[0] and "make demo JFA_CUDA_BUILD=1" in out[0]


def test_asked_or_gpu_means_kernel_build(clean_env, monkeypatch, capsys):
    monkeypatch.setattr(dev_setup, "gpu_visible", lambda: False)
    monkeypatch.setenv("JFA_CUDA_BUILD", "1")
    assert dev_setup.cuda_mode("test") == "1"
    monkeypatch.delenv("JFA_CUDA_BUILD")
    monkeypatch.setattr(dev_setup, "gpu_visible", lambda: True)
    assert dev_setup.cuda_mode("test") == "auto"
    assert capsys.readouterr().out == ""


def test_reinstall_only_when_build_inputs_change(clean_env, monkeypatch, tmp_path):
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in"):
        (tmp_path / name).write_text(name)
    (tmp_path / "csrc" / "jfa").mkdir(parents=True)
    (tmp_path / "csrc" / "jfa" / "kernel.h").write_text("// v1\n")
    (tmp_path / "python").mkdir()
    monkeypatch.setattr(dev_setup, "ROOT", str(tmp_path))
    first = dev_setup._inputs_digest("0")
    (tmp_path / "python" / "module.py").write_text("x = 1\n")       # a Python-only change
    (tmp_path / "csrc" / "GIT_SHA").write_text("abc\n")              # written into sdists only
    assert dev_setup._inputs_digest("0") == first
    assert dev_setup._inputs_digest("1") != first                     # the kernels now wanted
    monkeypatch.setenv("JFA_CUDA_ARCHS", "90")
    assert dev_setup._inputs_digest("0") != first
    monkeypatch.delenv("JFA_CUDA_ARCHS")
    (tmp_path / "csrc" / "jfa" / "kernel.h").write_text("// v2\n")
    assert dev_setup._inputs_digest("0") != first


def test_extras_are_read_from_pyproject():
    reqs = dev_setup.extra_requirements(["test", "trainer", "triton"])
    assert {"pytest", "hypothesis", "tqdm", "matplotlib", "pillow"} <= set(reqs)
    assert any(r.startswith("triton") for r in reqs)
    with pytest.raises(SystemExit, match="unknown extras"):
        dev_setup.extra_requirements(["nope"])
