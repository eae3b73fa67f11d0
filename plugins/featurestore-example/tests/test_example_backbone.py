"""The Backbone contract, method by method: preprocessing, specs, forward, card, errors."""

from __future__ import annotations

import json
import pickle
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from featurestore.api import create_backbone
from featurestore.backbone import BackboneOutput, Preprocessed
from featurestore.config import TokenLayout
from featurestore.errors import UnsupportedModelError, WeightsNotFoundError
from featurestore.extract import build_card
from featurestore.hashing import canonical_json
from featurestore.testing import smooth_image
from featurestore_example.backbone import IMAGENET_MEAN, IMAGENET_STD, PatchNetPreprocessor
from featurestore_example.make_weights import write_weights
from featurestore_example.model import PatchNet, PatchNetConfig

NAME = "example_patchnet"


@pytest.fixture(scope="module")
def backbone(example_weights):
    return create_backbone(NAME, weights=str(example_weights))


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(smooth_image(w, h, seed))


# -- preprocessing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((96, 64), (16.0, 0.0, 80.0, 64.0)),  # landscape
        ((64, 97), (0.0, 16.5, 64.0, 80.5)),  # portrait, odd margin: half pixels, not rounded
        ((50, 50), (0.0, 0.0, 50.0, 50.0)),  # square, upscaled
        ((300, 120), (90.0, 0.0, 210.0, 120.0)),  # downscaled
    ],
)
def test_crop_box_is_the_centred_square_in_original_pixels(size, box):
    pre = PatchNetPreprocessor()(_image(*size))
    assert isinstance(pre, Preprocessed)
    assert pre.crop_box == box
    assert pre.pixel_values.shape == (3, 64, 64) and pre.pixel_values.dtype == torch.float32


def test_pixels_come_from_the_crop_box():
    """At scale 1 the resample is a pure crop, so the pixels must be exactly the box's, normalised."""
    img = _image(96, 64, seed=3)
    pre = PatchNetPreprocessor()(img)
    crop = np.asarray(img.crop(tuple(int(v) for v in pre.crop_box)), np.float32) / 255.0  # (64, 64, 3)
    expected = (crop - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(pre.pixel_values.permute(1, 2, 0).numpy(), expected, atol=1e-6, rtol=0)


def test_preprocessor_pickles_and_behaves_the_same(backbone):
    pre = backbone.preprocessor()
    clone = pickle.loads(pickle.dumps(pre))
    img = _image(80, 48, seed=5)
    a, b = pre(img), clone(img)
    assert torch.equal(a.pixel_values, b.pixel_values) and a.crop_box == b.crop_box


def test_specs_are_canonical_json_and_deterministic(backbone, example_weights):
    other = create_backbone(NAME, weights=str(example_weights))
    for spec in (backbone.preprocess_spec(), backbone.output_spec(True), backbone.output_spec(False)):
        assert json.loads(canonical_json(spec)) == spec  # raises on anything not JSON-able
    assert canonical_json(backbone.preprocess_spec()) == canonical_json(other.preprocess_spec())
    assert canonical_json(backbone.output_spec(True)) == canonical_json(other.output_spec(True))
    assert backbone.output_spec(True) != backbone.output_spec(False)


# -- forward, card -------------------------------------------------------------------


def test_forward_is_the_modules_own_forward(backbone, example_weights):
    ref = PatchNet()
    ref.load_state_dict(load_file(example_weights))
    ref.eval()
    px = torch.stack([backbone.preprocessor()(_image(64 + 8 * i, 48, seed=i)).pixel_values for i in range(3)])  # (3, C, H, W)
    with torch.inference_mode():
        out = backbone.forward(px, dense=True)
        tokens = ref(px)  # (3, 65, 64)
        sparse = backbone.forward(px, dense=False)
    assert isinstance(out, BackboneOutput)
    assert out.cls.shape == (3, 64) and out.patches is not None and out.patches.shape == (3, 64, 64)
    torch.testing.assert_close(out.cls, tokens[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.patches, tokens[:, 1:], atol=1e-6, rtol=0)
    assert sparse.patches is None
    torch.testing.assert_close(sparse.cls, out.cls, atol=1e-6, rtol=0)
    lay = out.layout
    assert (lay.grid_h, lay.grid_w, lay.patch_size, lay.num_prefix_tokens, lay.num_register_tokens) == (8, 8, 8, 1, 0)
    assert (lay.input_h, lay.input_w) == (64, 64)


def test_wrong_input_size_is_a_clear_error(backbone):
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\).*\(2, 3, 56, 56\)"):
        backbone.forward(torch.zeros(2, 3, 56, 56), dense=False)


def test_card_info_and_model_card(backbone, example_weights):
    info = backbone.card_info()
    assert info["plugin"] == "featurestore-example"
    assert info["plugin_version"] == metadata.version("featurestore-example")
    assert info["weights_source"] == str(Path(example_weights).resolve())
    assert info["architecture"] == "PatchNet"
    assert {"pillow", "safetensors"} <= set(info["library_versions"])
    assert TokenLayout.model_validate(info["token_layout"]).grid_h == 8
    card = build_card(backbone, NAME, dense=True)
    assert (card.dim, card.patch_dim, card.dense, card.plugin) == (64, None, True, "featurestore-example")
    assert card.output_spec["model"]["heads"] == 4


# -- loading errors -------------------------------------------------------------------


def test_no_weights_says_how_to_make_and_pass_a_file():
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(NAME)
    msg = str(info.value)
    assert "'example_patchnet'" in msg and "no weights file was given" in msg
    assert "--weights FILE" in msg and "python -m featurestore_example.make_weights" in msg
    assert isinstance(info.value, FileNotFoundError)  # catchable as the builtin too


def test_missing_file_and_directory_are_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsNotFoundError, match="no such file") as info:
        create_backbone(NAME, weights=str(missing))
    assert str(missing.resolve()) in str(info.value) and "--weights" in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="is a directory") as info:
        create_backbone(NAME, weights=str(tmp_path))
    assert str(tmp_path.resolve()) in str(info.value)


class _Boom:
    """Unpickling this writes a marker file: proof of whether a loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "marker"
    bad = tmp_path / "patchnet.pt"
    torch.save({"payload": _Boom(marker)}, bad)
    with pytest.raises(WeightsNotFoundError, match="not a readable safetensors file") as info:
        create_backbone(NAME, weights=str(bad))
    assert str(bad.resolve()) in str(info.value)
    assert not marker.exists()


def test_other_tensors_are_named(tmp_path, example_weights):
    narrow = write_weights(tmp_path / "narrow.safetensors", config=PatchNetConfig(dim=32, mlp_dim=64))
    with pytest.raises(UnsupportedModelError) as info:
        create_backbone(NAME, weights=str(narrow))
    msg = str(info.value)
    assert "patch_embed.weight has shape [32, 3, 8, 8], PatchNet needs [64, 3, 8, 8]" in msg
    assert "make_weights" in msg

    tensors = load_file(example_weights)
    del tensors["norm.weight"]
    tensors["head.weight"] = torch.zeros(3)
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, edited)
    with pytest.raises(UnsupportedModelError) as info:
        create_backbone(NAME, weights=str(edited))
    assert "missing ['norm.weight']" in str(info.value) and "unexpected ['head.weight']" in str(info.value)
