import json
from pathlib import Path

from featurestore.schemas import DEFAULT_DIR, render


def test_committed_schemas_match_the_models():
    rendered = render()
    on_disk = {p.name for p in Path(DEFAULT_DIR).glob("*.schema.json")}
    assert on_disk == set(rendered), "schemas/ has extra or missing files: run python -m featurestore.schemas"
    for name, text in rendered.items():
        assert (DEFAULT_DIR / name).read_text() == text, f"{name} drifted: run python -m featurestore.schemas"


def test_schema_requires_the_documented_model_json_keys():
    schema = json.loads(render()["model_card.schema.json"])
    for key in ("model_hash", "weights_sha256", "backbone", "table", "dim", "preprocessing", "output_spec", "library_versions"):
        assert key in schema["required"]
