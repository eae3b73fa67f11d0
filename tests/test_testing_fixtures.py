"""featurestore's pytest fixtures are opt-in and prefixed: installing it adds nothing to other test runs.

Each test runs pytest on a small suite written into ``tmp_path``, in a fresh interpreter.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_pytest(suite: Path) -> subprocess.CompletedProcess[str]:
    # An environment installed before the fixtures became opt-in still declares the old
    # pytest11 entry points (until it is installed again): block them, so what is measured
    # is the code, not a stale install.
    stale = [ep.name for ep in metadata.entry_points(group="pytest11") if ep.value.startswith("featurestore")]
    blocks = [arg for name in stale for arg in ("-p", f"no:{name}")]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *blocks, str(suite)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=suite, timeout=300)


def _suite(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # the suite's own rootdir
    for name, body in files.items():
        (tmp_path / name).write_text(textwrap.dedent(body), encoding="utf-8")
    return tmp_path


def test_no_distribution_declares_a_pytest11_entry_point():
    """An entry point in group pytest11 loads its fixtures into every pytest run of the environment."""
    for pyproject in [ROOT / "pyproject.toml", *sorted(ROOT.glob("plugins/*/pyproject.toml"))]:
        assert "pytest11" not in pyproject.read_text(encoding="utf-8"), pyproject


@pytest.mark.slow  # pytest in a subprocess
def test_without_opting_in_a_suite_has_no_featurestore_fixture(tmp_path: Path):
    suite = _suite(
        tmp_path,
        {
            "test_user.py": """
                def test_uses_it(fs_image_dir):
                    pass

                def test_old_name(image_dir):
                    pass
            """
        },
    )
    out = _run_pytest(suite)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "fixture 'fs_image_dir' not found" in out.stdout and "fixture 'image_dir' not found" in out.stdout


@pytest.mark.slow  # pytest in a subprocess
def test_opting_in_gives_the_fs_fixtures_and_old_names_warn(tmp_path: Path):
    suite = _suite(
        tmp_path,
        {
            "conftest.py": """
                import pytest

                from featurestore.testing import deprecated_fixture_alias

                pytest_plugins = ["featurestore.testing"]


                @pytest.fixture(scope="session")
                def fs_answer():
                    return 42


                _answer = deprecated_fixture_alias("answer", "fs_answer", scope="session")


                @pytest.fixture(scope="module")
                def doubled(answer):  # a module-scoped fixture may request a session-scoped alias
                    return 2 * answer
            """,
            "test_new.py": """
                import os


                def test_prefixed(fs_image_dir, fs_store_path):
                    assert len(list(fs_image_dir.rglob("*.*"))) == 8
                    assert not fs_store_path.exists() and fs_store_path.parent.is_dir()
                    assert os.environ["FEATURESTORE_CACHE_DIR"]  # the catalog cache is kept out of the user's
            """,
            "test_old.py": """
                def test_old_names(image_dir, store_path, fs_image_dir):
                    assert image_dir == fs_image_dir and store_path.name == "store.lance"


                def test_alias_keeps_the_scope(doubled):
                    assert doubled == 84
            """,
        },
    )
    out = _run_pytest(suite)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b3 passed\b", out.stdout), out.stdout
    # one DeprecationWarning per old name (pytest may add its own warnings, e.g. on a fresh install
    # that "featurestore.testing" was imported before it could be assertion-rewritten)
    for name in ("image_dir", "store_path", "answer"):
        assert f"the pytest fixture '{name}' is deprecated" in out.stdout, out.stdout
    for old, new in (("image_dir", "fs_image_dir"), ("store_path", "fs_store_path"), ("answer", "fs_answer")):
        assert f"DeprecationWarning: the pytest fixture '{old}' is deprecated" in out.stdout
        assert f"use '{new}'" in out.stdout
