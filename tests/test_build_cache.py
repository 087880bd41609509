"""The CUDA objects are cached by content: a rebuild that changes no CUDA input compiles no
kernel, a header change recompiles all, a source change that one; the build says how far along
it is. nvcc is a stand-in script here, so this runs anywhere in a second."""
import os
import stat
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
build_cache = pytest.importorskip("build_cache")
build_ext = pytest.importorskip("build_ext")   # needs setuptools, as every build does

FAKE_NVCC = """#!/bin/sh
# writes an "object" and logs the source it was asked to compile
while [ $# -gt 0 ]; do
  case "$1" in
    -c) src="$2"; shift ;;
    -o) out="$2"; shift ;;
  esac
  shift
done
echo "$src" >> "$(dirname "$0")/calls.log"
echo object > "$out"
"""


@pytest.fixture
def tree(tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(FAKE_NVCC)
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    headers = tmp_path / "jfa"
    headers.mkdir()
    (headers / "kernel.h").write_text("// v1\n")
    sources = []
    for name in ("fwd_a.cu", "jvp_a.cu", "bwd_a.cu"):
        (tmp_path / name).write_text(f'#include "jfa/kernel.h" // {name}\n')
        sources.append(str(tmp_path / name))
    return tmp_path, str(nvcc), sources


def _build(tree, flags=("-O3",)):
    root, nvcc, sources = tree
    cache = build_cache.ObjectCache(list(flags), "13.0.88", header_dir=str(root / "jfa"), directory=str(root / "cache"))
    log = root / "bin" / "calls.log"
    before = log.read_text().splitlines() if log.exists() else []
    objects = build_ext.compile_all(nvcc, list(flags), sources, cache, jobs=2)
    assert all(os.path.exists(o) for o in objects)
    after = log.read_text().splitlines() if log.exists() else []
    return sorted(os.path.basename(s) for s in after[len(before):])


def test_second_build_compiles_nothing(tree, capsys):
    assert _build(tree) == ["bwd_a.cu", "fwd_a.cu", "jvp_a.cu"]
    out = capsys.readouterr().out
    assert "3 files, 0 cached, 3 to compile" in out and "[3/3]" in out and "compiled 3 CUDA files in" in out
    assert _build(tree) == []
    assert "3 files, 3 cached, 0 to compile" in capsys.readouterr().out


def test_a_python_change_compiles_nothing(tree):
    _build(tree)
    (tree[0] / "module.py").write_text("x = 2\n")   # outside the CUDA inputs
    assert _build(tree) == []


def test_header_change_recompiles_every_file_and_source_change_one(tree):
    root, _, _ = tree
    _build(tree)
    (root / "jfa" / "kernel.h").write_text("// v2\n")
    assert _build(tree) == ["bwd_a.cu", "fwd_a.cu", "jvp_a.cu"]
    (root / "jvp_a.cu").write_text('#include "jfa/kernel.h" // changed\n')
    assert _build(tree) == ["jvp_a.cu"]


def test_other_flags_are_other_objects_and_old_ones_are_dropped(tree):
    root, _, _ = tree
    _build(tree)
    assert _build(tree, flags=("-O3", "-DX=1")) == ["bwd_a.cu", "fwd_a.cu", "jvp_a.cu"]
    assert _build(tree) == []   # the first flags' objects are still there
    (root / "jfa" / "kernel.h").write_text("// v3\n")
    _build(tree)
    objects = [f for d in (root / "cache").iterdir() for f in os.listdir(d)]
    assert len(objects) == 6    # one per (source, flags): the v1 objects were replaced


def test_a_failed_compile_leaves_nothing_that_looks_cached(tree):
    root, nvcc, sources = tree
    with open(nvcc, "w") as f:
        f.write('#!/bin/sh\nfor a; do [ "$prev" = -o ] && echo partial > "$a"; prev=$a; done\nexit 1\n')
    cache = build_cache.ObjectCache(["-O3"], "13.0.88", header_dir=str(root / "jfa"), directory=str(root / "cache"))
    with pytest.raises(Exception):
        build_ext.compile_all(nvcc, ["-O3"], sources, cache, jobs=1)
    assert not any(cache.has(s) for s in sources)
    assert not (root / "cache").exists() or not any(os.listdir(d) for d in (root / "cache").iterdir())


def test_tile_overrides_name_a_head_dim_or_every_one(monkeypatch):
    """JFA_TILES entries become TileOverride initialisers: a bare key applies to every head dim (0),
    key@64 / key@128 to that one only; anything else is refused with the accepted forms."""
    monkeypatch.setenv("JFA_TILES", "fwd90=128,176;jvp90@64=128,128;fwd=128,64,8")
    (flag,) = build_ext.tile_defines()
    assert flag == ("-DJFA_TILE_OVERRIDES={jfa::Walk::kFwd,jfa::KernelFamily::kSm90,0,{128,176,8}},"
                    "{jfa::Walk::kJvp,jfa::KernelFamily::kSm90,64,{128,128,8}},"
                    "{jfa::Walk::kFwd,jfa::KernelFamily::kPortable,0,{128,64,8}},")
    assert build_ext.tile_defines(for_nvcc=True)[0].count("\\,") == flag.count(",")
    for bad in ("fwd90@96=128,176", "fwd90@=128,176", "fwd9=128,176", "fwd90=128"):
        monkeypatch.setenv("JFA_TILES", bad)
        with pytest.raises(ValueError, match="fwd90@64=128,224"):
            build_ext.tile_defines()
    monkeypatch.delenv("JFA_TILES")
    assert build_ext.tile_defines() == []
