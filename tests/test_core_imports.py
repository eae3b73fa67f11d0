import subprocess
import sys
from pathlib import Path

import pytest

import featurestore

CORE = sorted(p.stem for p in Path(featurestore.__file__).parent.glob("*.py") if p.stem not in ("__init__", "__main__"))
MODEL_LIBS = ("transformers", "open_clip", "timm", "torchvision")


@pytest.mark.slow  # a fresh interpreter
def test_core_modules_import_no_model_library():
    code = (
        "import sys, importlib\n"
        f"for m in {CORE!r}: importlib.import_module('featurestore.' + m)\n"
        f"bad = [m for m in {MODEL_LIBS!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"core imported a model library: {out}"
    assert "extract" in CORE and "store" in CORE  # the list really covers the core


def test_import_featurestore_is_light():
    code = "import sys, featurestore; print(int('torch' in sys.modules), int('lancedb' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]


def test_no_core_source_mentions_a_model_library_import():
    for p in Path(featurestore.__file__).parent.glob("*.py"):
        text = p.read_text()
        for lib in MODEL_LIBS:
            assert f"import {lib}" not in text and f"from {lib}" not in text, f"{p.name} imports {lib}"
