"""The version is written once, in pyproject.toml: the packages read it, nothing else types it."""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path

import pytest

import featurestore
from featurestore.distinfo import UNKNOWN, dist_version, pyproject_version

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(d for d in (ROOT / "plugins").iterdir() if (d / "pyproject.toml").is_file())


def _declared(pyproject: Path) -> str:
    m = re.search(r'^version = "([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
    assert m, f"{pyproject} declares no version"
    return m.group(1)


def test_core_version_is_the_pyproject_version():
    assert featurestore.__version__ == metadata.version("featurestore") == _declared(ROOT / "pyproject.toml")


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda d: d.name)
def test_each_plugin_version_is_its_pyproject_version(plugin: Path):
    package = importlib.import_module(plugin.name.replace("-", "_"))
    assert package.__version__ == metadata.version(plugin.name) == _declared(plugin / "pyproject.toml")


def test_no_version_number_is_typed_in_the_code():
    """A second copy would drift: only pyproject.toml files may hold ``version = "…"``."""
    offenders = []
    for path in [*ROOT.glob("featurestore/**/*.py"), *ROOT.glob("plugins/*/featurestore_*/**/*.py")]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*__version__\s*=\s*['\"]", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_an_uninstalled_checkout_reads_its_pyproject(tmp_path: Path):
    """No metadata for the name: the pyproject.toml beside the package answers, if it names that distribution."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "Not_Installed.Dist"\nversion = "3.2.1rc1"\n\n[tool.x]\nversion = "9"\n',
        encoding="utf-8",
    )
    assert dist_version("not-installed-dist", tmp_path / "pkg") == "3.2.1rc1"
    # another distribution's pyproject, or none at all: unknown rather than a wrong number
    assert dist_version("another-dist-not-installed", tmp_path / "pkg") == UNKNOWN
    assert dist_version("not-installed-dist", tmp_path / "nowhere" / "pkg") == UNKNOWN


def test_pyproject_version_reads_only_the_project_table(tmp_path: Path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.thing]\nname = "x"\nversion = "9"\n\n[project]\nname = "x"\n', encoding="utf-8")
    assert pyproject_version(path, "x") is None
    assert pyproject_version(ROOT / "pyproject.toml", "featurestore") == _declared(ROOT / "pyproject.toml")
