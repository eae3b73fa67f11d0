"""The README and the user guide stay true.

The README's install and test commands are CI's; the guide's Backbones table is the live
registry's, its Python API snippet runs, and its command reference lists every command.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from featurestore.api import list_backbones
from featurestore.cli import backbones_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
GUIDE = ROOT / "docs" / "guide"
BACKBONES = (GUIDE / "backbones.md").read_text(encoding="utf-8")
EXTRACT = (GUIDE / "extract.md").read_text(encoding="utf-8")
CLI = (GUIDE / "cli.md").read_text(encoding="utf-8")


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


def test_ci_runs_the_readme_test_command_the_whole_suite():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    section = README.split("## Test", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^python -m pytest.*$", section, re.M)
    assert commands == ["python -m pytest", 'python -m pytest -m "not slow"'], commands
    assert re.search(r"^python -m pytest$", ci, re.M), "CI runs the whole suite, not a lane of it"


def test_the_slow_mark_is_registered():
    """`-m "not slow"` with an unregistered mark would silently select everything."""
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8").split("[tool.pytest.ini_options]", 1)[1]
    assert re.search(r'^markers = \[[^\]]*"slow: ', config, re.M)


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert "docs/guide/extract.md" in links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing, missing


def test_backbones_table_is_the_live_registry():
    m = re.search(r"<!-- backbones:start -->\n(.*?)<!-- backbones:end -->", BACKBONES, re.S)
    assert m, "docs/guide/backbones.md lacks the <!-- backbones:start/end --> markers"
    live = backbones_markdown(list_backbones())
    assert m.group(1) == live, "docs/guide/backbones.md table is stale: paste the output of `featurestore backbones --markdown`"


def test_command_reference_lists_every_command():
    import argparse

    from featurestore.cli import build_parser

    def commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = commands(sub, f"{prefix}{name} ")
                    out |= nested or {prefix + name}
        return out

    documented = set(re.findall(r"^\| `featurestore ([a-z ]+)` \|", CLI, re.M))
    assert documented == commands(build_parser())


def _python_api_snippet() -> str:
    m = re.search(r"## Python API\n+```python\n(.*?)```", EXTRACT, re.S)
    assert m, "docs/guide/extract.md lacks the Python API snippet"
    return m.group(1)


@pytest.mark.slow  # a script in a subprocess, with worker processes
def test_python_api_snippet_runs_as_a_script(tmp_path, fs_tiny_dinov2):
    """Pasted into a file and run with `python file.py`, with the default worker processes."""
    import subprocess
    import sys

    from featurestore.testing import write_images

    code = _python_api_snippet()
    for literal in ('"features.lance"', '"photos/"', '"dinov2_vits14"'):
        assert literal in code, literal
    write_images(tmp_path / "photos", 3)
    code = code.replace('"features.lance"', repr(str(tmp_path / "features.lance")))
    code = code.replace('"photos/"', repr(str(tmp_path / "photos")))
    code = code.replace('"dinov2_vits14"', repr(f"hf:{fs_tiny_dinov2}"))
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    written, errors, table = out.stdout.split()
    assert (written, errors) == ("3", "0") and table.startswith("hf_")
