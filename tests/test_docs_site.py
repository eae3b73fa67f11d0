"""The documentation site builds with ``mkdocs build --strict``: every page in the nav, every
link and anchor found, every API page rendered from the docstrings without a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # mkdocs in a subprocess, reading every module's source
def test_mkdocs_build_strict(tmp_path: Path):
    pytest.importorskip("mkdocs", reason='mkdocs is not installed: pip install -e ".[docs]" (the dev extra includes it)')
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)]
    # cwd: the changelog page includes CHANGELOG.md by a path relative to the repository root
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert (site / "index.html").is_file()
    api = (site / "api" / "featurestore" / "index.html").read_text(encoding="utf-8")
    assert 'id="featurestore.api.FeatureStore.extract"' in api, "the API reference was not rendered from the docstrings"


def test_the_dev_extra_installs_the_docs_tools():
    """CI installs the dev extra, so the build above runs there instead of skipping."""
    import re

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")

    def extra(name: str) -> set[str]:
        m = re.search(rf"^{name} = \[(.*?)\]\s*(#.*)?$", text, re.M)
        assert m, name
        return set(re.findall(r'"([^"]+)"', m.group(1)))

    assert extra("docs") == {"mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.28"}
    assert extra("docs") <= extra("dev")
