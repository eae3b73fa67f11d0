"""The README stays true: its install command is CI's, its Backbones table is the live registry's."""

from __future__ import annotations

import re
from pathlib import Path

from featurestore.api import list_backbones
from featurestore.cli import backbones_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _install_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("python -m pip install")]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_the_readme_install_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _install_line(ci) == _install_line(README)


def test_every_first_party_plugin_is_installed_by_the_readme():
    line = _install_line(README)
    for d in sorted((ROOT / "plugins").iterdir()):
        if (d / "pyproject.toml").is_file():
            assert f"-e plugins/{d.name}" in line, f"{d.name} is missing from the README install command"


def test_backbones_table_is_the_live_registry():
    m = re.search(r"<!-- backbones:start -->\n(.*?)<!-- backbones:end -->", README, re.S)
    assert m, "README lacks the <!-- backbones:start/end --> markers"
    live = backbones_markdown(list_backbones())
    assert m.group(1) == live, "README Backbones table is stale: paste the output of `featurestore backbones --markdown`"
