"""The docs hold together: every relative link in README.md and docs/*.md names a file that
exists and, with ``#anchor``, a heading that file has (GitHub's anchor rules); and the
architecture picture's source and the copy embedded in docs/architecture.md are the same."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(path: Path) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    out, fenced = [], False
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((i, line))
    return out


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return "".join("-" if ch == " " else ch for ch in text
                   if ch in "-_ " or unicodedata.category(ch)[0] in "LN"
                   or unicodedata.category(ch) == "Mn")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set(re.findall(r'<a\s+(?:name|id)="([^"]+)"', path.read_text(encoding="utf-8")))
    for _, line in prose(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            found.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return found


def test_every_relative_link_and_anchor_resolves() -> None:
    broken, checked = [], 0
    for path in DOCS:
        for i, line in prose(path):
            scan = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0))
                          if "](" not in m.group(0) else m.group(0), line)
            for m in LINK.finditer(scan):
                target = m.group(1)
                if re.match(r"^[a-z]+:", target):
                    continue
                file_part, _, frag = target.partition("#")
                dest = (path.parent / unquote(file_part)).resolve() if file_part else path
                checked += 1
                where = f"{path.relative_to(ROOT)}:{i}: {target}"
                if not dest.exists():
                    broken.append(f"{where} (no such file)")
                elif frag and dest.suffix == ".md" and unquote(frag) not in anchors(dest):
                    broken.append(f"{where} (no such heading)")
    assert checked > 300, checked          # the scan found the links at all
    assert not broken, "\n".join(broken)


def test_the_architecture_picture_matches_its_source() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"^```mermaid\n(.*?)^```$", doc, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, "docs/architecture.md has no mermaid block"
    source = (ROOT / "docs" / "architecture.mmd").read_text(encoding="utf-8")
    assert block.group(1).strip() == source.strip(), (
        "docs/architecture.md's picture differs from docs/architecture.mmd: copy the source "
        "into the block")
