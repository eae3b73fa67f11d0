"""JSON Schemas of the pydantic models, kept in ``schemas/``.

Regenerate after changing a model in :mod:`featurestore.config`::

    python -m featurestore.schemas
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from featurestore.config import SCHEMA_MODELS

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "schemas"


def render() -> dict[str, str]:
    """File name → schema text for every model in :data:`SCHEMA_MODELS`."""
    out = {}
    for name, model in SCHEMA_MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"featurestore/{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, text in render().items():
        p = directory / fname
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR):
        print(p)
