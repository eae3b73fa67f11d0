"""Registry on its own: names, families, conflicts, and the errors users see."""

from __future__ import annotations

import pytest

from featurestore.errors import DuplicateNameError, FeatureStoreError, UnknownNameError
from featurestore.registry import Entry, Registry


def make(name):
    return f"built {name}"


def other(name):
    return f"other {name}"


@pytest.fixture
def reg() -> Registry:
    r = Registry("backbone")
    r.register("vit_small", make, plugin="dist-a", dim=384, summary="small")
    r.register("vit_base", make, plugin="dist-a", dim=768)
    r.register("cnn_tiny", other, plugin="dist-b")
    return r


def test_register_and_get(reg):
    e = reg.get("vit_small")
    assert isinstance(e, Entry)
    assert (e.name, e.factory, e.plugin, e.metadata) == ("vit_small", make, "dist-a", {"dim": 384, "summary": "small"})
    assert not e.is_family
    assert e.factory("vit_small") == "built vit_small"
    assert reg.get("cnn_tiny").metadata == {}
    assert "vit_base" in reg and "vit_huge" not in reg


def test_names_sorted_and_pattern(reg):
    assert reg.names() == ["cnn_tiny", "vit_base", "vit_small"]
    assert reg.names("vit_*") == ["vit_base", "vit_small"]
    assert reg.names("*_tiny") == ["cnn_tiny"]
    assert reg.names("vit_[s]*") == ["vit_small"]
    assert reg.names("nothing*") == []
    assert reg.names("") == reg.names() == [e.name for e in reg.entries()]


def test_by_plugin(reg):
    assert reg.by_plugin("dist-a") == ["vit_base", "vit_small"]
    assert reg.by_plugin("dist-b") == ["cnn_tiny"]
    assert reg.by_plugin("dist-c") == []


def test_duplicate_across_plugins_makes_name_unusable(reg):
    with pytest.raises(DuplicateNameError) as ei:
        reg.register("vit_small", other, plugin="dist-b")
    first = str(ei.value)
    assert "'vit_small'" in first and "'dist-a'" in first and "'dist-b'" in first
    assert "FEATURESTORE_DISABLE_PLUGINS" in first
    # not resolved by load order: get raises the same error for either caller
    with pytest.raises(DuplicateNameError) as ei:
        reg.get("vit_small")
    assert str(ei.value) == first
    assert "vit_small" not in reg and "vit_small" not in reg.names()
    assert reg.conflicts() == {"vit_small": ["dist-a", "dist-b"]}
    # both owners still report the name; the other names are untouched
    assert reg.by_plugin("dist-a") == ["vit_base", "vit_small"]
    assert reg.by_plugin("dist-b") == ["cnn_tiny", "vit_small"]
    assert reg.get("vit_base").plugin == "dist-a" and reg.get("cnn_tiny").plugin == "dist-b"
    # a third claimant is added to the list
    with pytest.raises(DuplicateNameError, match="'dist-c'"):
        reg.register("vit_small", make, plugin="dist-c")
    assert reg.conflicts() == {"vit_small": ["dist-a", "dist-b", "dist-c"]}
    # conflicts() hands out copies
    reg.conflicts()["vit_small"].clear()
    assert reg.conflicts()["vit_small"] == ["dist-a", "dist-b", "dist-c"]


def test_duplicate_inside_one_plugin(reg):
    with pytest.raises(DuplicateNameError) as ei:
        reg.register("vit_base", other, plugin="dist-a")
    assert "'vit_base'" in str(ei.value) and "'dist-a', 'dist-a'" in str(ei.value)
    with pytest.raises(DuplicateNameError):
        reg.get("vit_base")
    assert reg.conflicts() == {"vit_base": ["dist-a", "dist-a"]}
    assert reg.names() == ["cnn_tiny", "vit_small"]


def test_duplicate_error_is_catchable_as_value_error():
    r = Registry("aggregator")
    r.register("mean", make, plugin="p")
    with pytest.raises(ValueError):
        r.register("mean", make, plugin="p")
    with pytest.raises(FeatureStoreError, match="aggregator 'mean'"):
        r.get("mean")


@pytest.mark.parametrize("name", ["", "   ", None, 3, b"vit"])
def test_empty_or_non_string_name(reg, name):
    with pytest.raises(ValueError, match="'dist-x'.*empty or non-string name"):
        reg.register(name, make, plugin="dist-x")
    assert reg.names() == ["cnn_tiny", "vit_base", "vit_small"] and reg.conflicts() == {}


@pytest.mark.parametrize("factory", [None, "make", 42, object()])
def test_non_callable_factory(reg, factory):
    with pytest.raises(TypeError, match="'dist-x'.*'new_net'.*non-callable factory"):
        reg.register("new_net", factory, plugin="dist-x")
    assert "new_net" not in reg.names() and reg.conflicts() == {}


def test_refused_registration_does_not_shadow_an_existing_name(reg):
    with pytest.raises(TypeError):
        reg.register("vit_small", None, plugin="dist-x")
    assert reg.get("vit_small").plugin == "dist-a" and reg.conflicts() == {}


def test_family_answers_every_suffix_and_exact_names_win():
    r = Registry("backbone")
    r.register("hf:", make, plugin="dist-a")
    r.register("hf:pinned", other, plugin="dist-b")
    fam = r.get("hf:facebook/dinov2-small")
    assert fam.name == "hf:" and fam.is_family
    assert r.get("hf:/models/my:vit").name == "hf:"  # only the first colon splits
    assert r.get("hf:pinned").plugin == "dist-b"  # exact beats family
    assert r.names() == ["hf:", "hf:pinned"]
    for missing in ("hf", "hfx:thing", "other:thing"):
        with pytest.raises(UnknownNameError):
            r.get(missing)


def test_conflicting_family_blocks_its_members():
    r = Registry("backbone")
    r.register("toy:", make, plugin="dist-a")
    r.register("toy:exact", make, plugin="dist-a")
    with pytest.raises(DuplicateNameError):
        r.register("toy:", other, plugin="dist-b")
    with pytest.raises(DuplicateNameError, match="'dist-a', 'dist-b'"):
        r.get("toy:anything")
    assert r.get("toy:exact").plugin == "dist-a"  # an exact name is not part of the conflict


def test_unknown_name_lists_known_names(reg):
    with pytest.raises(UnknownNameError) as ei:
        reg.get("vit_huge")
    msg = str(ei.value)
    assert msg.startswith("unknown backbone 'vit_huge'")
    assert "cnn_tiny, vit_base, vit_small" in msg
    assert "featurestore backbones" in msg and "pip install" not in msg
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, FeatureStoreError)
    assert not msg.startswith(('"', "'"))  # not KeyError's repr()


def test_unknown_name_in_empty_registry():
    with pytest.raises(UnknownNameError, match=r"\(none: no plugin registers any\)"):
        Registry("adapter").get("pca")


@pytest.mark.parametrize(
    "name, dist",
    [
        ("open_clip:ViT-B-32", "featurestore-openclip"),
        ("timm:resnet50", "featurestore-timm"),
        ("resnet50", "featurestore-timm"),
        ("ConvNeXt_tiny", "featurestore-timm"),  # prefix match ignores case
        ("siglip_base", "featurestore-openclip"),
        ("dinov2_vits14", "featurestore-transformers"),
        ("hf:facebook/dinov2-small", "featurestore-transformers"),
    ],
)
def test_unknown_name_suggests_the_distribution(reg, name, dist):
    with pytest.raises(UnknownNameError) as ei:
        reg.get(name)
    msg = str(ei.value)
    assert f"pip install {dist}" in msg and repr(name) in msg
    assert msg.count("pip install") == 1


def test_suggestions_are_per_kind():
    r = Registry("aggregator")
    with pytest.raises(UnknownNameError) as ei:
        r.get("timm:resnet50")
    assert "pip install" not in str(ei.value) and "featurestore aggregators" in str(ei.value)


def test_bare_family_name_is_refused_with_a_hint():
    from featurestore.errors import UnknownNameError
    from featurestore.registry import Registry

    reg = Registry("backbone")
    reg.register("fam:", lambda name, **kw: name, plugin="p")
    with pytest.raises(UnknownNameError, match="needs a name after the colon"):
        reg.get("fam:")
    assert reg.get("fam:x").plugin == "p"
