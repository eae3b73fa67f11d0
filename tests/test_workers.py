"""The workers' forkserver starts before the model is loaded, preloading what the plugin declares."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from featurestore.testing import write_images

pytestmark = pytest.mark.slow  # forkserver processes

# A backbone registered with worker_preload=["fs_marker"]: its factory waits until the module
# fs_marker has been imported by another process (the forkserver), which it can only see if
# that process was started before the factory was called.
SCRIPT = """
import json, os, sys, time
from featurestore import FeatureStore
from featurestore.api import create_backbone
from featurestore.plugins import get_host

marker, model, images, store = sys.argv[1:5]

def factory(name, weights=None):
    deadline = time.monotonic() + 120  # a bound, not a measurement
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = os.path.exists(marker)
    backbone = create_backbone("hf:" + model)
    backbone.seen_preload = seen
    return backbone

get_host().backbones.register("preload_probe", factory, plugin="test", worker_preload=["fs_marker"])
fs = FeatureStore(store)
s = fs.extract([images], backbone="preload_probe", workers=2)
with open(marker) as f:
    pid = int(f.read())
print(json.dumps({"seen": fs.backbone("preload_probe").seen_preload, "other_process": pid != os.getpid(), "written": s.written}))
"""


def test_forkserver_imports_the_declared_modules_while_the_model_loads(tmp_path, fs_tiny_dinov2):
    mods = tmp_path / "mods"
    mods.mkdir()
    marker = tmp_path / "imported_by"
    (mods / "fs_marker.py").write_text(f"import os\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n")
    write_images(tmp_path / "img", 3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]))
    args = [str(marker), str(fs_tiny_dinov2), str(tmp_path / "img"), str(tmp_path / "store")]
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"seen": True, "other_process": True, "written": 3}


STOP = """
import json, os, sys
from featurestore.workers import _server_pid, start_worker_server, stop_worker_server
from featurestore import FeatureStore
from featurestore.errors import WeightsNotFoundError

if __name__ == "__main__":
    model, images, store = sys.argv[1:4]
    fs = FeatureStore(store)
    try:
        fs.extract([images], backbone="hf:acme/not-cached", workers=2)  # the hub is a closed port
    except WeightsNotFoundError:
        failed = True
    after_failure = _server_pid()
    s = fs.extract([images], backbone="hf:" + model, workers=2)  # a new server, and workers from it
    print(json.dumps({"failed": failed, "server_after_failure": after_failure, "written": s.written}))
"""


def test_a_failed_model_load_stops_the_early_server_and_the_next_run_starts_another(tmp_path, fs_tiny_dinov2):
    """A forkserver left importing after a failure would hold the caller's stdout/stderr open."""
    from featurestore.testing import closed_port_url, hub_env

    write_images(tmp_path / "img", 2)
    script = tmp_path / "run.py"
    script.write_text(STOP)
    env = hub_env(tmp_path / "hf-cache", closed_port_url())
    out = subprocess.run([sys.executable, str(script), str(fs_tiny_dinov2), str(tmp_path / "img"), str(tmp_path / "s")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"failed": True, "server_after_failure": None, "written": 2}
