"""Write docs/reference.md: every public name of jvp_flash_attn with its signature and docstring.

    python docs/gen_reference.py            # (re)write docs/reference.md
    python docs/gen_reference.py --check    # exit 1 if docs/reference.md is stale

Public names are those of ``__all__`` in ``jvp_flash_attn``, ``jvp_flash_attn.masks``,
``jvp_flash_attn.reference`` and ``jvp_flash_attn.backends`` (the backend interface). Classes
list their public methods and properties in definition order. The output depends only on the
source, not on the machine: annotations are printed as written, and nothing is imported that
needs a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reference.md"

MODULES = (
    ("jvp_flash_attn", "The package: entry points, the mask and reference modules, backend status."),
    ("jvp_flash_attn.masks", "Mask builders and types; rules in [design/masks.md](design/masks.md)."),
    ("jvp_flash_attn.reference", "The plain-torch implementation and float64 oracle; "
                                 "see [design/numerics.md](design/numerics.md)."),
    ("jvp_flash_attn.backends", "The backend interface and selection; "
                                "see [design/api.md](design/api.md#choosing-a-backend)."),
)


def _annotation(a) -> str:
    if isinstance(a, str):
        return a.strip("'\"")
    return inspect.formatannotation(a)


def _signature(obj, drop_self: bool = False, returns: bool = True) -> str:
    """``(a: int, b=1) -> T`` with annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    parts, saw_kwonly, last_kind = [], False, None
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            saw_kwonly = True
        elif p.kind is p.KEYWORD_ONLY and not saw_kwonly:
            parts.append("*")
            saw_kwonly = True
        if last_kind is p.POSITIONAL_ONLY and p.kind is not p.POSITIONAL_ONLY:
            parts.append("/")
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += (" = " if p.annotation is not p.empty else "=") + repr(p.default)
        parts.append(text)
        last_kind = p.kind
    out = "(" + ", ".join(parts) + ")"
    if returns and sig.return_annotation is not sig.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def _doc(obj) -> list[str]:
    doc = inspect.getdoc(obj)
    if not doc:
        return []
    return ["```text", *doc.splitlines(), "```", ""]


def _class_doc(cls) -> list[str]:
    """The class's own docstring (not a dataclass's generated one, not an inherited one), and
    its module's docstring when the class points there or has none."""
    doc = cls.__dict__.get("__doc__")
    if not doc or (dataclasses.is_dataclass(cls) and doc.startswith(cls.__name__ + "(")):
        return _doc(sys.modules[cls.__module__])   # none of its own: the module's says what it is
    lines = _doc(cls)
    if "module docstring" in doc:
        lines += _doc(sys.modules[cls.__module__])
    return lines


def _members(cls) -> list[tuple[str, object]]:
    """Public methods and properties defined by the class itself, in definition order."""
    out = []
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw):
            out.append((name, getattr(cls, name)))
        elif isinstance(raw, (property, functools.cached_property)):
            out.append((name, raw))
    return out


def _class(qual: str, cls) -> list[str]:
    bases = [b for b in cls.__bases__ if b is not object]
    head = f"class {cls.__name__}" + (f"({', '.join(b.__name__ for b in bases)})" if bases else "")
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    init = "__init__" in cls.__dict__ and len(fields) <= 6
    lines = [f"### `{qual}`", "", "```python", head]
    if init:
        lines.append(f"{cls.__name__}{_signature(cls, returns=False)}")
    lines += ["```", ""]
    lines += _class_doc(cls)
    if len(fields) > 6:
        lines += ["| field | type |", "|---|---|"]
        lines += [f"| `{f.name}` | `{_annotation(f.type)}` |" for f in fields]
        lines.append("")
    for name, member in _members(cls):
        if isinstance(member, (property, functools.cached_property)):
            lines += [f"- `{cls.__name__}.{name}` (property)", ""]
            doc = inspect.getdoc(member)
            if doc:
                lines += ["  " + line if line else "" for line in doc.splitlines()]
                lines.append("")
            continue
        lines += [f"- `{cls.__name__}.{name}{_signature(member, drop_self=True)}`", ""]
        doc = inspect.getdoc(member)
        if doc:
            lines += ["  ```text", *("  " + line if line else "" for line in doc.splitlines()), "  ```", ""]
    return lines


def _entry(module, name: str) -> list[str]:
    obj = getattr(module, name)
    qual = f"{module.__name__}.{name}"
    if inspect.ismodule(obj):
        return [f"### `{qual}`", "", f"Module `{obj.__name__}`; its names are listed in its own section.", ""]
    if isinstance(obj, type):
        if obj.__name__ != name:  # an alias
            return [f"### `{qual}`", "", f"Alias of `{obj.__module__.split('.')[0]}"
                    f".{_public_home(obj)}`.", ""]
        return _class(qual, obj)
    if callable(obj):
        return [f"### `{qual}`", "", "```python", f"{name}{_signature(obj)}", "```", "", *_doc(obj)]
    if isinstance(obj, enum.Enum):
        value = repr(obj.value)
    else:
        value = repr(obj)
    return [f"### `{qual}`", "", "```python", f"{name} = {value}", "```", ""]


def _public_home(cls) -> str:
    """Where a class is documented: the first listed module whose __all__ holds its name."""
    for modname, _ in MODULES:
        mod = importlib.import_module(modname)
        if cls.__name__ in getattr(mod, "__all__", ()) and getattr(mod, cls.__name__) is cls:
            return modname.split(".", 1)[1] + "." + cls.__name__ if "." in modname else cls.__name__
    return cls.__qualname__


def render() -> str:
    sys.path.insert(0, str(ROOT / "python"))
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_reference.py`; do not edit by hand.",
             "The design pages explain the semantics: [design/README.md](design/README.md).", ""]
    modules = []
    for modname, blurb in MODULES:
        mod = importlib.import_module(modname)
        if modname == "jvp_flash_attn.backends":  # the package attribute is the status function
            mod = sys.modules[modname]
        modules.append((mod, blurb))
    lines += ["## Contents", ""]
    for mod, _ in modules:
        anchor = mod.__name__.replace(".", "")
        lines.append(f"- [`{mod.__name__}`](#{anchor}): " + ", ".join(f"`{n}`" for n in mod.__all__))
    lines.append("")
    for mod, blurb in modules:
        lines += [f"## {mod.__name__}", "", blurb, ""]
        for name in mod.__all__:
            lines += _entry(mod, name)
    while lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/reference.md is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        stale = not OUT.exists() or OUT.read_text() != text
        print(f"{OUT.relative_to(ROOT)} is {'stale: run python docs/gen_reference.py' if stale else 'up to date'}")
        return int(stale)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
