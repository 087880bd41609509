"""docs/ stays true: the generated API reference is current, every relative link and anchor in
docs/**/*.md resolves, and the design pages' Python examples run."""
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_is_current():
    gen = _load_generator()
    committed = (DOCS / "reference.md").read_text()
    assert gen.render() == committed, "docs/reference.md is stale: run python docs/gen_reference.py"


def _prose_lines(text):
    """Lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set:
    seen, out = {}, set()
    for line in _prose_lines(page.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = _slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _links(page: Path):
    for line in _prose_lines(page.read_text()):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            yield m.group(1)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_relative_links_resolve(page):
    bad = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_docs_speak_of_the_project_only():
    for page in PAGES + [DOCS / "gen_reference.py"]:
        text = page.read_text()
        assert "DESIGN.md" not in text and "/work/" not in text, page


def _python_blocks(page: Path):
    block, lang = None, None
    for line in page.read_text().splitlines():
        m = FENCE.match(line)
        if m and block is None:
            lang, block = line.strip()[3:].strip(), []
        elif m:
            if lang == "python":
                yield "\n".join(block)
            block = None
        elif block is not None:
            block.append(line)


EXAMPLES = [(p, i, code) for p in sorted((DOCS / "design").glob("*.md"))
            for i, code in enumerate(_python_blocks(p))]


@pytest.mark.parametrize("page, index, code", EXAMPLES,
                         ids=[f"{p.name}-{i}" for p, i, _ in EXAMPLES])
def test_design_examples_run(page, index, code):
    """Every ```python block of the design pages runs as written (small CPU tensors)."""
    exec(compile(code, f"{page.name} example {index}", "exec"), {"__name__": "__docs__"})
