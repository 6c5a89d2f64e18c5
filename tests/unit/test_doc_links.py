"""The README stays short, reaches every page of docs/, and no page points
at a file, a heading or a module that is not there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# What a newcomer reads in five minutes; the rest belongs in docs/.
MAX_README_LINES = 220

_FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
# Repository paths as the pages write them: a module, a folder, a file.
_PATH = re.compile(r"(?<![\w./-])((?:worker|schemas|tests|compose|docs)/[\w./-]*)")
_DOTTED = re.compile(r"(?<![\w.])(?:worker|schemas)(?:\.\w+)+")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced blocks, inline code spans kept."""
    return _FENCE.sub("", text)


def code(text: str) -> str:
    """What the text holds in backticks: fenced blocks and inline spans."""
    fenced = [match.group(0) for match in _FENCE.finditer(text)]
    inline = _INLINE_CODE.findall(prose(text))
    return "\n".join(fenced + inline)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, title in _HEADING.findall(prose(path.read_text())):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def section(path: Path, heading: str) -> str:
    """The text under `heading` (a whole heading line, e.g. "## Settings")
    up to the next heading of the same level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = path.read_text().split("\n")
    start = lines.index(heading) + 1
    in_fence = False
    for number, line in enumerate(lines[start:], start):
        if line.startswith("```"):
            in_fence = not in_fence
        heading_match = None if in_fence else _HEADING.match(line)
        if heading_match and len(heading_match.group(1)) <= level:
            return "\n".join(lines[start:number])
    return "\n".join(lines[start:])


def links(path: Path) -> list[str]:
    text = _INLINE_CODE.sub("", prose(path.read_text()))
    return [target for target in _LINK.findall(text) if not re.match(r"\w+:", target)]


def test_the_readme_is_read_in_five_minutes() -> None:
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.split("#")[0]).resolve() for target in links(README)}
    assert sorted(p.name for p in DOCS.glob("*.md") if p.resolve() not in linked) == []


def test_every_relative_link_reaches_a_file_and_a_heading() -> None:
    broken = []
    for page in pages():
        for target in links(page):
            file_part, _, anchor = target.partition("#")
            destination = (page.parent / file_part).resolve() if file_part else page
            if not destination.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_every_path_in_backticks_exists() -> None:
    missing = []
    for page in pages():
        for found in _PATH.findall(code(page.read_text())):
            path = found.rstrip(".,;:")
            if not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
    assert sorted(set(missing)) == []


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _names(module: Path) -> set[str]:
    """What `module` defines, assigns or imports at its top level."""
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def _resolves(dotted: str) -> bool:
    """`dotted` is a module, or a name defined in the longest module
    prefix of it (a class's attributes are not followed)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(parts[:cut])
        if module is not None:
            return cut == len(parts) or parts[cut] in _names(module)
    return False


def test_every_dotted_module_name_exists() -> None:
    missing = []
    for page in pages():
        for name in set(_DOTTED.findall(code(page.read_text()))):
            if not _resolves(name):
                missing.append(f"{page.name}: {name}")
    assert sorted(missing) == []
