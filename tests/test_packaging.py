"""What every distribution of the repository ships: its licence, its type hints, a changelog, hooks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DISTS = [ROOT, *sorted(d for d in (ROOT / "plugins").iterdir() if (d / "pyproject.toml").is_file())]


def _package(dist: Path) -> str:
    return "featurestore" if dist == ROOT else dist.name.replace("-", "_")


@pytest.mark.parametrize("dist", DISTS, ids=lambda d: d.name if d != ROOT else "featurestore")
def test_each_distribution_ships_the_apache_licence_and_its_type_hints(dist: Path):
    text = (dist / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = "Apache-2.0"$', text, re.M), "SPDX expression in [project] license"
    assert re.search(r'^license-files = \["LICENSE"\]$', text, re.M)
    # a plugin is its own distribution: its sdist and wheel carry the licence text too
    assert (dist / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    package = _package(dist)
    assert (dist / package / "py.typed").is_file(), "PEP 561 marker"
    assert re.search(rf'^\[tool\.setuptools\.package-data\]\n{package} = \["py\.typed"\]', text, re.M), "py.typed is package data"


def test_the_licence_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License to your work." in text


def test_changelog_opens_with_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "keepachangelog.com" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings and headings[0] == "Unreleased", headings
    kinds = set(re.findall(r"^### (\w+)", text, re.M))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds


def test_pre_commit_runs_ruff_lint_and_format_and_mypy():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff-check", "ruff-format", "mypy"} <= hooks
