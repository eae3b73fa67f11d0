"""docs/writing-a-backbone-plugin.md quotes this plugin: its excerpts must match the files.

A code block whose first line is ``# plugins/...`` is an excerpt of that file; lines that
are exactly ``...`` separate pieces, which must appear verbatim and in order.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GUIDE = ROOT / "docs" / "writing-a-backbone-plugin.md"
BLOCK = re.compile(r"^```\w*\n(.*?)^```", re.M | re.S)


def excerpts() -> list[tuple[str, str]]:
    out = []
    for body in BLOCK.findall(GUIDE.read_text(encoding="utf-8")):
        first, _, rest = body.partition("\n")
        m = re.fullmatch(r"# (plugins/\S+)", first)
        if m:
            out.append((m.group(1), rest))
    return out


def test_excerpts_are_verbatim_copies():
    found = excerpts()
    assert len(found) >= 7, f"expected the guide's file excerpts, found {len(found)}"
    for path, body in found:
        text = (ROOT / path).read_text(encoding="utf-8")
        pos = 0
        for piece in re.split(r"^\.\.\.\n", body, flags=re.M):
            at = text.find(piece, pos)
            assert at >= 0, f"the guide's excerpt of {path} is not in the file (any more):\n{piece}"
            pos = at + len(piece)


def test_paths_named_in_the_guide_exist():
    text = GUIDE.read_text(encoding="utf-8")
    paths = set(re.findall(r"\b((?:plugins/featurestore-example|featurestore)/[\w/.-]+\.(?:py|toml))\b", text))
    assert "featurestore/backbone.py" in paths and "plugins/featurestore-example/pyproject.toml" in paths
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"the guide names files that do not exist: {missing}"
