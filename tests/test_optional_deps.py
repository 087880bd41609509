"""A missing optional dependency names the extra that installs it. Missing modules are simulated
with sys.modules[name] = None, which makes `import name` fail as if it were not installed."""
import importlib
import os
import re
import subprocess
import sys

import pytest

from jvp_flash_attn import masks
from jvp_flash_attn.masks.draw import draw
from jvp_flash_attn._optional import EXTRAS, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", ["tqdm", "matplotlib", "PIL"])
def test_trainer_without_its_dependencies_names_the_trainer_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, "causal_rcm_min", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"jvp-flash-attn\[trainer\]") as e:
        importlib.import_module("causal_rcm_min")
    assert e.value.name == module


def test_trainer_command_without_tqdm_names_the_extra():
    """`python -m causal_rcm_min.train` on a plain install: one clear line, not a bare import error."""
    code = ("import sys, runpy; sys.modules['tqdm'] = None; "
            "runpy.run_module('causal_rcm_min.train', run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    assert "ModuleNotFoundError: causal_rcm_min needs tqdm, which is not installed: " \
           "pip install 'jvp-flash-attn[trainer]'" in r.stderr


def test_drawing_a_mask_without_matplotlib_names_the_viz_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ModuleNotFoundError, match=r"drawing a mask needs matplotlib.*jvp-flash-attn\[viz\]"):
        draw(masks.full(8, 8), str(tmp_path / "m.png"))


def test_require_returns_the_module_when_present():
    assert require("json", "a test") is importlib.import_module("json")


def test_every_extra_named_in_messages_exists_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    for module, (dist, extra) in EXTRAS.items():
        assert any(re.match(re.escape(dist) + r"\b", req) for req in extras[extra]), (module, extra)
    assert {"tqdm", "matplotlib", "pillow"} <= set(extras["trainer"])


def test_diffusers_integration_without_diffusers_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    for name in [n for n in sys.modules if n.startswith("diffusers.")]:  # imported by earlier tests
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "jvp_flash_attn.integrations.diffusers", raising=False)
    with pytest.raises(ImportError, match=r"jvp-flash-attn\[diffusers\]"):
        importlib.import_module("jvp_flash_attn.integrations.diffusers")
