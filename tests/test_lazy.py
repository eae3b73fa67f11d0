"""featurestore.lazy: LanceDB imported without the REST namespace client's API modules, which
still load, whole, the moment something asks the package for one of its names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # fresh interpreters

SCRIPT = """
import json, sys
from featurestore.lazy import REST_CLIENT, import_lancedb

lancedb = import_lancedb()
api_modules = lambda: sorted(m for m in sys.modules if m.startswith(REST_CLIENT + ".api"))
before = api_modules()
db = lancedb.connect(sys.argv[1])
db.create_table("t", data=[{"x": 1}, {"x": 2}])
rows = db.open_table("t").count_rows()
still = api_modules()
client = sys.modules[REST_CLIENT].ApiClient  # a package-level name: the real __init__ runs now
print(json.dumps({"before": before, "after_use": still, "rows": rows, "client": client.__name__, "loaded": len(api_modules())}))
"""


def test_lancedb_works_and_the_rest_client_loads_on_first_use(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "db")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == [] and got["after_use"] == [] and got["rows"] == 2
    assert got["client"] == "ApiClient" and got["loaded"] > 0


def test_an_earlier_plain_import_is_left_alone():
    code = (
        "import sys, lancedb\n"
        "from featurestore.lazy import REST_CLIENT, import_lancedb\n"
        "assert import_lancedb() is lancedb\n"
        "print(hasattr(sys.modules[REST_CLIENT], 'ApiClient'), '__getattr__' in vars(sys.modules[REST_CLIENT]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
