"""Text search and zero-shot classification over stored image features.

Nothing is re-extracted: the stored ``cls`` vectors are read from the model's table and
only the text is encoded, by the same backbone loaded again. Before any text is encoded
the loaded model is checked against the model card: its weight digest (which covers the
text tower) and its tokenizer spec must equal what was recorded when the images were
extracted, so text and image embeddings are known to come from one model.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from featurestore.backbone import Backbone, ZeroShotHead
from featurestore.config import ModelCard
from featurestore.errors import ConfigError, UnsupportedModelError
from featurestore.hashing import weights_sha256

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
_READ_BATCH = 8192


def check_text_card(card: ModelCard) -> None:
    """The table must hold the model's text-aligned image embedding."""
    if card.text_dim is None:
        why = (
            f"it was extracted with --layers {card.layers}, which stores block outputs, not the text-aligned embedding"
            if card.layers is not None
            else f"backbone {card.backbone!r} ({card.architecture}) has no text tower"
        )
        raise UnsupportedModelError(
            f"table {card.table} cannot be searched with text: {why}. Fix: extract with a CLIP/SigLIP backbone "
            f"(featurestore-openclip) and without --layers."
        )


def verify_backbone(backbone: Backbone, card: ModelCard) -> None:
    """Refuse a text model that is not the one whose image features are stored."""
    digest = weights_sha256(backbone.named_tensors())
    if digest != card.weights_sha256:
        raise ConfigError(
            f"the weights loaded for {card.backbone!r} now (sha256 {digest[:12]}) are not the ones that produced "
            f"table {card.table} (sha256 {card.weights_sha256[:12]}, from {card.weights_source}). "
            f"Fix: pass --weights with the original weights."
        )
    now_text = backbone.preprocess_spec().get("text")
    if now_text != card.preprocessing.get("text"):
        raise ConfigError(
            f"the tokenizer of {card.backbone!r} differs from the one recorded for table {card.table}: "
            f"{now_text!r} vs {card.preprocessing.get('text')!r}. Fix: install the library versions in the card "
            f"({card.library_versions})."
        )
    if backbone.text_dim != card.text_dim:
        raise ConfigError(f"text width {backbone.text_dim} of the loaded model != {card.text_dim} recorded for {card.table}")


def parse_list(value: str | Sequence[str], what: str) -> list[str]:
    """``"cat,dog"`` or ``"@labels.txt"`` (one per line) or a list → non-empty stripped strings."""
    if isinstance(value, str):
        if value.startswith("@"):
            path = value[1:]
            try:
                with open(path, encoding="utf-8") as f:
                    items = [line.strip() for line in f]
            except OSError as exc:
                raise ConfigError(f"cannot read {what} file {path!r}: {exc.strerror}. Fix: check the path after '@'.") from None
        else:
            items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise ConfigError(f"no {what} given. Fix: e.g. --labels 'cat,dog,car' or --labels @labels.txt.")
    dups = sorted({v for v in items if items.count(v) > 1})
    if dups:
        raise ConfigError(f"{what} named more than once: {', '.join(dups)}. Fix: name each once.")
    return items


def check_templates(templates: Sequence[str]) -> list[str]:
    out = list(templates)
    if not out:
        raise ConfigError("no prompt template given. Fix: e.g. --template 'a photo of a {}.'")
    for t in out:
        if t.count("{}") != 1:
            raise ConfigError(f"prompt template {t!r} must contain '{{}}' exactly once (where the label goes), e.g. 'a photo of a {{}}.'")
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def text_embeddings(backbone: Backbone, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm text embeddings (T, D), float32."""
    with torch.inference_mode():
        return _unit(backbone.encode_text(list(texts)).float()).cpu().numpy()


def label_embeddings(backbone: Backbone, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One unit vector per label: the mean of its unit prompt embeddings, renormalised (CLIP's prompt ensembling)."""
    prompts = [t.format(label) for label in labels for t in templates]
    emb = text_embeddings(backbone, prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def search(table: Any, query: np.ndarray, k: int) -> list[dict[str, Any]]:
    """Top ``k`` rows by cosine similarity of stored ``cls`` to ``query`` (D,)."""
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")
    hits = (
        table.search(query.astype(np.float32), vector_column_name="cls")
        .distance_type("cosine")
        .select(["id", "uri", "_distance"])
        .limit(k)
        .to_arrow()
        .to_pylist()
    )
    return [{"rank": i + 1, "id": h["id"], "uri": h["uri"], "score": 1.0 - float(h["_distance"])} for i, h in enumerate(hits)]


def _cls_batches(table: Any) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(ids, uris, cls (B, D)) in bounded batches: a store larger than memory is fine."""
    for rb in table.search().select(["id", "uri", "cls"]).limit(None).to_batches(_READ_BATCH):
        if rb.num_rows == 0:
            continue
        col = rb.column("cls")
        cls = col.values.to_numpy(zero_copy_only=False).reshape(rb.num_rows, col.type.list_size)
        yield rb.column("id").to_pylist(), rb.column("uri").to_pylist(), cls


def classify(table: Any, label_emb: np.ndarray, labels: Sequence[str], head: ZeroShotHead) -> Iterator[dict[str, Any]]:
    """Per stored image: best label, its probability and every label's probability."""
    for ids, uris, cls in _cls_batches(table):
        img = cls / np.maximum(np.linalg.norm(cls, axis=1, keepdims=True), 1e-12)
        logits = head.logit_scale * (img.astype(np.float64) @ label_emb.T.astype(np.float64)) + head.logit_bias  # (B, L)
        if head.activation == "sigmoid":
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        for i in range(len(ids)):
            yield {
                "id": ids[i],
                "uri": uris[i],
                "label": labels[best[i]],
                "score": float(probs[i, best[i]]),
                "scores": {lab: float(probs[i, j]) for j, lab in enumerate(labels)},
            }


__all__ = [
    "DEFAULT_TEMPLATES",
    "check_text_card",
    "verify_backbone",
    "parse_list",
    "check_templates",
    "text_embeddings",
    "label_embeddings",
    "search",
    "classify",
]
