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


def _python_api_snippet() -> str:
    m = re.search(r"### Python API\n+```python\n(.*?)```", README, re.S)
    assert m, "README lacks the Python API snippet"
    return m.group(1)


def test_python_api_snippet_runs_as_a_script(tmp_path, tiny_dinov2):
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
    code = code.replace('"dinov2_vits14"', repr(f"hf:{tiny_dinov2}"))
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    written, errors, table = out.stdout.split()
    assert (written, errors) == ("3", "0") and table.startswith("hf_")
