"""Pictures of stored features, written as PNG with matplotlib (``featurestore show …``).

* :func:`patch_picture`: DINOv2's picture of one image's patch tokens: a first PCA of the
  tokens separates foreground from background (its first component, thresholded), a second
  PCA of the foreground tokens gives three components shown as RGB (min-max per component),
  upsampled over the region of the image the model saw (the row's ``crop_box``).
* :func:`search_picture`: a query row and its top-k neighbours by cosine of the stored
  ``cls``, computed here with numpy in one streaming pass, in a grid with scores as titles.
* :func:`map_picture`: a 2-D map of the stored ``cls`` (PCA, or UMAP where ``umap`` is
  installed), coloured by a label file or a ``cluster_k{K}`` column.

matplotlib is optional (``pip install 'featurestore[viz]'``) and imported on first use.
Figures are drawn on matplotlib's ``Figure`` directly, never through pyplot, so no global
backend or figure registry is touched. Sizes are fixed: ``figsize × dpi`` pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import ConfigError, MediaError, MissingDependencyError

DPI = 100
PATCH_FIGSIZE = (8.0, 4.0)  # 800 x 400 px: the image region | its PCA picture
CELL_FIGSIZE = (2.0, 2.3)  # per cell of the search grid: 200 x 230 px
MAP_FIGSIZE = (7.0, 6.0)  # 700 x 600 px
DISPLAY_PX = 448  # the image region is resized to this many pixels on its long side
GREY = (0.6, 0.6, 0.6)


def _figure(figsize: tuple[float, float], dpi: int = DPI) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "matplotlib", "featurestore show (pictures)", install="pip install matplotlib  (or pip install 'featurestore[viz]')"
        ) from exc
    return Figure(figsize=figsize, dpi=dpi, layout="constrained")  # margins fitted; the pixel size stays figsize x dpi


def _save(fig: Any, out: str | Path) -> dict[str, Any]:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"-o {str(path)!r}: pictures are PNG files. Fix: name the output *.png.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
    w, h = fig.get_size_inches() * fig.dpi
    return {"path": str(path), "width": round(w), "height": round(h)}


def _open_table(store: Any, model: str, version: int | str | None = None) -> tuple[Any, Any]:
    from featurestore.readers import _store_path, resolve_version
    from featurestore.store import Store

    st = Store(_store_path(store))
    card = st.card(model)
    table = st.open_table(card.table)
    if version is not None:
        table.checkout(resolve_version(table, version)[0])
    return card, table


def _image_id(image: str | Path) -> tuple[str, bytes]:
    from featurestore.hashing import content_id

    p = Path(image)
    if not p.is_file():
        raise ConfigError(f"image {str(p)!r} does not exist. Fix: pass the path of an image that was extracted into the store.")
    data = p.read_bytes()
    return content_id(data), data


def _row(table: Any, row_id: str, columns: Sequence[str]) -> dict[str, Any] | None:
    """The row with this id, or with this unique hex prefix (>= 6 characters) of one."""
    from featurestore.search import check_id_prefix

    check_id_prefix(row_id)
    ref = row_id.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{6,64}", ref):  # ids are hex SHA-256; this also keeps the SQL literal safe
        raise ConfigError(f"id {row_id!r} is not a row id (hex SHA-256, or a prefix of at least 6 of its characters).")
    cols = list(dict.fromkeys(["id", "uri", *columns]))
    rows = table.search().where(f"id = '{ref}'").select(cols).limit(1).to_arrow().to_pylist()
    if not rows:
        rows = table.search().where(f"id LIKE '{ref}%'").select(cols).limit(2).to_arrow().to_pylist()
        if len(rows) > 1:
            raise ConfigError(f"id prefix {row_id!r} matches several rows of table {table.name}. Fix: pass more of the id.")
    return rows[0] if rows else None


def _not_stored(image: str | Path, row_id: str, table: Any) -> ConfigError:
    return ConfigError(
        f"image {str(image)!r} (id {row_id[:12]}…, the SHA-256 of its bytes) is not in table {table.name}. "
        f"Fix: featurestore extract {image} --store … --backbone … (the same model), then show it."
    )


# -- patch tokens: PCA -> RGB ----------------------------------------------------------------


def _pca(x: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Projections (n, q) of the centred rows on their top ``q`` principal axes (zeros past the
    rank), each axis' sign fixed so its largest-magnitude projection is positive; and the
    explained-variance ratios."""
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    proj = np.zeros((len(x), q))
    m = min(q, vt.shape[0])
    proj[:, :m] = xc @ vt[:m].T
    for j in range(m):
        if proj[np.argmax(np.abs(proj[:, j])), j] < 0:
            proj[:, j] *= -1
    var = s**2
    ratio = np.zeros(q)
    ratio[:m] = var[:m] / var.sum() if var.sum() > 0 else 0.0
    return proj, ratio


def patch_pca_rgb(
    tokens: np.ndarray, grid: tuple[int, int], *, threshold: float | None = 0.0
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """DINOv2's patch picture of one image: (grid_h, grid_w, 3) RGB in [0, 1] and the foreground mask.

    The first principal component of all tokens is oriented so that the tokens on the grid's
    border score lower on average than those inside it (objects sit away from the frame edge
    more often than not; a grid without an inside, under 3 rows or columns, is oriented so
    the minority of tokens is positive). Tokens whose component, in units of its standard
    deviation, exceeds ``threshold`` (default 0: above the mean) are foreground; None keeps
    every token. A second PCA of the foreground tokens gives three components, min-max
    scaled over the foreground to R, G, B; background tokens are black.

    Args:
        tokens: (N, P) patch tokens, row-major over the grid.
        grid: (grid_h, grid_w) with grid_h * grid_w == N.
    """
    gh, gw = grid
    t = np.asarray(tokens, np.float64)
    if t.ndim != 2 or t.shape[0] != gh * gw:
        raise ConfigError(f"{t.shape[0] if t.ndim == 2 else t.shape} patch tokens do not fill a {gh}x{gw} grid.")
    pc1 = _pca(t, 1)[0][:, 0].reshape(gh, gw)
    border = np.ones((gh, gw), bool)
    border[1:-1, 1:-1] = False
    if (~border).any():
        flip = pc1[border].mean() > pc1[~border].mean()
    else:
        flip = (pc1 > 0).sum() > (pc1 < 0).sum()
    pc1 = -pc1 if flip else pc1
    std = pc1.std()
    z = pc1 / std if std > 0 else np.zeros_like(pc1)
    fg = np.ones((gh, gw), bool) if threshold is None else z > threshold
    rgb = np.zeros((gh, gw, 3))
    ratio = np.zeros(3)
    if fg.sum() >= 2:
        flat_fg = fg.reshape(-1)
        sub = t[flat_fg]
        proj, ratio = _pca(sub, 3)  # (n_fg, 3)
        lo, hi = proj.min(0), proj.max(0)
        scaled = np.where(hi > lo, (proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0.5)
        rgb.reshape(-1, 3)[flat_fg] = scaled
    elif fg.sum() == 1:
        rgb[fg] = 1.0  # one foreground token: nothing to spread, show it white
    info = {"foreground": float(fg.mean()), "threshold": threshold, "explained_variance": [float(r) for r in ratio]}
    return rgb, fg, info


def grid_box(crop_box: Sequence[float], grid: tuple[int, int], layout: Any, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom) of the original image that the patch grid covers:
    the crop box, less any input margin the grid does not reach (as the card's layout says)."""
    left, top, right, bottom = (float(v) for v in crop_box)
    if not all(math.isfinite(v) for v in (left, top, right, bottom)) or right <= left or bottom <= top:
        left, top, right, bottom = 0.0, 0.0, float(image_size[0]), float(image_size[1])  # geometry unknown: the whole image
    gh, gw = grid
    if layout is not None and (layout.grid_h, layout.grid_w) == (gh, gw):
        right = left + gw * layout.patch_size * (right - left) / layout.input_w
        bottom = top + gh * layout.patch_size * (bottom - top) / layout.input_h
    return left, top, right, bottom


def _upsample(a: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(h, w, C) → (H, W, C) with torch's ``interpolate`` (bilinear: align_corners=False)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None]  # (1, C, h, w)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(t, size=size, mode=mode, **kw)[0].permute(1, 2, 0).numpy()


def render_overlay(crop: np.ndarray, rgb: np.ndarray, fg: np.ndarray, *, upsample: str = "bilinear", alpha: float = 0.8) -> np.ndarray:
    """The PCA colours over the image region: (H, W, 3) floats in [0, 1].

    Foreground pixels blend ``alpha`` of the colour with the region's grey; background
    pixels (removed) show the region's grey, darkened, so the object stands out.
    """
    if upsample not in ("nearest", "bilinear"):
        raise ConfigError(f"--upsample {upsample!r}: use nearest or bilinear.")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha {alpha}: must be between 0 and 1.")
    h, w = crop.shape[:2]
    colour = _upsample(rgb, (h, w), upsample).clip(0, 1)
    mask = _upsample(fg[..., None].astype(np.float32), (h, w), upsample)[..., 0] > 0.5
    grey = (crop.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    grey3 = np.repeat(grey[..., None], 3, axis=2)
    out = 0.35 * grey3
    out[mask] = alpha * colour[mask] + (1.0 - alpha) * grey3[mask]
    return out


def patch_picture(
    store: Any, model: str, image: str | Path, out: str | Path, *, threshold: float | None = 0.0,
    upsample: str = "bilinear", alpha: float = 0.8,
) -> dict[str, Any]:
    """PNG of an image's stored patch tokens (see :func:`patch_pca_rgb`) next to the region seen.

    The row is found by the image file's content hash (its id). Returns the picture's path,
    size in pixels, the row id, grid and the foreground fraction.

    Raises:
        ConfigError: The image is not stored in this table, or the table holds no patch tokens.
    """
    from PIL import Image

    from featurestore.media import decode_image

    if upsample not in ("nearest", "bilinear"):
        raise ConfigError(f"--upsample {upsample!r}: use nearest or bilinear.")
    card, table = _open_table(store, model)
    if "patches" not in table.schema.names:
        raise ConfigError(
            f"table {table.name} holds no patch tokens (extracted without --dense). Fix: extract again with --dense."
        )
    row_id, data = _image_id(image)
    row = _row(table, row_id, ["patches", "grid_h", "grid_w", "crop_box"])
    if row is None or row["id"] != row_id:
        raise _not_stored(image, row_id, table)
    grid = (int(row["grid_h"]), int(row["grid_w"]))
    rgb, fg, info = patch_pca_rgb(np.asarray(row["patches"], np.float32), grid, threshold=threshold)
    img = decode_image(data, str(image))
    box = grid_box(row["crop_box"], grid, card.token_layout, img.size)
    region = img.crop(tuple(round(v) for v in box))
    scale = DISPLAY_PX / max(region.size)
    region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))), Image.BICUBIC)
    crop = np.asarray(region)
    overlay = render_overlay(crop, rgb, fg, upsample=upsample, alpha=alpha)
    fig = _figure(PATCH_FIGSIZE)
    for ax, pic, title in zip(
        fig.subplots(1, 2), (crop, overlay), ("region the model saw", f"PCA of {grid[0]}x{grid[1]} patch tokens")
    ):
        ax.imshow(pic, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{Path(str(image)).name} · {table.name}", fontsize=9)
    return {**_save(fig, out), "id": row_id, "uri": row["uri"], "grid": list(grid), "crop_box": list(box), "upsample": upsample, **info}


# -- search grid -------------------------------------------------------------------------------


def top_k_cosine(
    store: Any, model: str, query: np.ndarray, k: int, exclude: str | None = None, version: int | str | None = None
) -> list[dict[str, Any]]:
    """The ``k`` stored rows of highest cosine of ``cls`` to ``query``, best first (one scan)."""
    from featurestore.readers import FeatureDataset

    ds = FeatureDataset(store, model, columns=["cls", "uri"], version=version)
    q = np.asarray(query, np.float64)
    q = q / (np.linalg.norm(q) or 1.0)
    best_s, best_id, best_uri = np.empty(0), [], []
    for chunk in ds.iter_arrow(["cls", "uri"]):
        cls = chunk.column("cls").combine_chunks()
        x = cls.flatten().to_numpy(zero_copy_only=False).reshape(len(cls), cls.type.list_size).astype(np.float64)
        sims = (x @ q) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)
        ids = chunk.column("id").to_pylist()
        if exclude is not None:
            sims = np.where(np.array(ids, dtype=object) == exclude, -np.inf, sims)
        s = np.concatenate([best_s, sims])
        id_all, uri_all = best_id + ids, best_uri + chunk.column("uri").to_pylist()
        keep = np.argsort(-s, kind="stable")[:k]  # ties: the earlier row first
        best_s, best_id, best_uri = s[keep], [id_all[i] for i in keep], [uri_all[i] for i in keep]
    return [
        {"rank": r + 1, "score": float(s), "id": i, "uri": u}
        for r, (s, i, u) in enumerate(zip(best_s, best_id, best_uri))
        if np.isfinite(s)
    ]


def _thumbnail(uri: str | None, row_id: str, roots: Any = None) -> tuple[np.ndarray | None, str]:
    """A small RGB array of the stored file, or None and why there is none ("missing" when
    the source is not where the stored uri, re-rooted by ``roots``, says)."""
    from featurestore.hashing import content_id
    from featurestore.media import decode_image
    from featurestore.paths import find_source

    if not uri:
        return None, "missing"
    try:
        path = find_source(uri, roots)
        data = Path(path).read_bytes()
    except OSError:  # SourceMissingError, or unreadable
        return None, "missing"
    try:
        img = decode_image(data, path)
    except (MediaError, OSError):  # a video file or an unreadable one: the picture shows a placeholder
        return None, "no preview"
    img.thumbnail((256, 256))
    return np.asarray(img), "" if content_id(data) == row_id else " (file changed)"


def search_picture(
    store: Any, model: str, out: str | Path, *, row_id: str | None = None, image: str | Path | None = None,
    k: int = 8, cols: int = 5, version: int | str | None = None, roots: Any = None,
) -> dict[str, Any]:
    """PNG grid: the query row, then its ``k`` nearest stored rows (cosine of ``cls``) with scores.

    The query is a stored row, named by ``row_id`` (or a unique prefix) or by an ``image``
    file whose content is stored; it is left out of its own results. Thumbnails are read
    from the stored uris through :func:`featurestore.paths.find_source` (``roots``: re-root
    mappings ``{old: new}`` / ``["OLD=NEW"]``); a cell whose source is not there says
    "missing: <uri>", and ``missing`` in the result lists those uris.
    """
    from featurestore.paths import parse_roots

    roots = parse_roots(roots)
    if (row_id is None) == (image is None):
        raise ConfigError("show search needs exactly one query: --id ID or --image PATH (a stored image).")
    if k < 1 or cols < 1:
        raise ConfigError(f"-k {k} / --cols {cols}: both must be at least 1.")
    _, table = _open_table(store, model, version)
    if image is not None:
        ref, _ = _image_id(image)
        row = _row(table, ref, ["cls"])
        if row is None or row["id"] != ref:
            raise _not_stored(image, ref, table)
    else:
        row = _row(table, str(row_id), ["cls"])
        if row is None:
            raise ConfigError(f"no row with id {row_id!r} in table {table.name}. Fix: take an id from `featurestore export` or search output.")
    hits = top_k_cosine(store, table.name, np.asarray(row["cls"]), k, exclude=row["id"], version=version)
    cells = [(row["uri"], row["id"], "query")] + [(h["uri"], h["id"], f"#{h['rank']}  {h['score']:.3f}") for h in hits]
    ncols = min(cols, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig = _figure((CELL_FIGSIZE[0] * ncols, CELL_FIGSIZE[1] * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    for ax in axes:
        ax.axis("off")
    missing: list[str] = []
    for ax, (uri, rid, title) in zip(axes, cells):
        pic, note = _thumbnail(uri, rid, roots)
        if pic is None:
            ax.imshow(np.full((8, 8, 3), 0.85))
            if note == "missing":
                if (uri or rid) not in missing:  # video frames share their file's uri
                    missing.append(uri or rid)
                note = "missing:\n" + _wrap(uri or rid, 24)
            ax.text(3.5, 3.5, note, ha="center", va="center", fontsize=6, color="C3" if note.startswith("missing") else "black")
        else:
            ax.imshow(pic)
        name = Path(uri).name if uri else rid[:12]
        ax.set_title(f"{title}\n{name[:22]}{note if pic is not None else ''}", fontsize=8, color="C3" if title == "query" else "black")
    saved = _save(fig, out)
    return {**saved, "query": {"id": row["id"], "uri": row["uri"]}, "hits": hits, "table": table.name, "missing": missing}


def _wrap(text: str, width: int, lines: int = 6) -> str:
    """A long path in lines of ``width`` characters (the end kept: it names the file)."""
    tail = text[-width * lines :]
    return "\n".join(tail[i : i + width] for i in range(0, len(tail), width))


# -- map ---------------------------------------------------------------------------------------


def embed_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates of the L2-normalised rows: ``pca``, ``umap`` or ``auto`` (UMAP when
    the ``umap`` package imports, else PCA). Returns the coordinates and the method used."""
    if method not in ("auto", "pca", "umap"):
        raise ConfigError(f"--method {method!r}: use auto, pca or umap.")
    u = np.asarray(x, np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    if method in ("auto", "umap") and len(u) > 3:
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError as exc:
            if method == "umap":
                raise MissingDependencyError("umap-learn", "--method umap") from exc
        else:
            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=min(15, len(u) - 1))
            return np.asarray(reducer.fit_transform(u), np.float64), "umap"
    if len(u) < 2:
        return np.zeros((len(u), 2)), "pca"
    return _pca(u, 2)[0], "pca"


def _categories(values: list[Any]) -> list[Any]:
    """Distinct non-null values, numerically ordered when they are numbers."""
    uniq = {v for v in values if v is not None}
    try:
        return sorted(uniq, key=lambda v: (float(v), str(v)))
    except (TypeError, ValueError):
        return sorted(uniq, key=str)


def _palette(n: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i)[:3] for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i)[:3] for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1))[:3] for i in range(n)]


def map_picture(
    store: Any, model: str, out: str | Path, *, color_by: str | None = None, labels: str | Path | None = None,
    k: int | None = None, method: str = "auto", max_points: int = 20000, seed: int = 0, legend: bool = True,
    version: int | str | None = None,
) -> dict[str, Any]:
    """PNG scatter of every stored row's ``cls`` in 2-D (see :func:`embed_2d`).

    Args:
        color_by: None, ``label`` (needs ``labels``: a file with ``id`` or ``uri`` and
            ``label``) or ``cluster`` (the ``cluster_k{k}`` column; ``k`` may be left out
            when the table has one such column). Rows without a value are grey.
        max_points: rows drawn at most (a seeded random sample beyond it).
    """
    from featurestore.cluster import cluster_columns
    from featurestore.readers import FeatureDataset

    if color_by not in (None, "label", "cluster"):
        raise ConfigError(f"--color-by {color_by!r}: use label or cluster.")
    if color_by == "label" and labels is None:
        raise ConfigError("--color-by label needs --labels FILE (columns id or uri, and label).")
    if max_points < 1:
        raise ConfigError(f"--max-points {max_points}: must be at least 1.")
    _, table = _open_table(store, model, version)
    extra: list[str] = []
    if color_by == "cluster":
        ks = cluster_columns(table.schema)
        if k is None and len(ks) == 1:
            k = ks[0]
        if k is None or k not in ks:
            have = ", ".join(f"--k {v}" for v in ks) or "none"
            raise ConfigError(
                f"table {table.name} has no cluster column{'' if k is None else f' for k={k}'} to colour by (it has: {have}). "
                f"Fix: run `featurestore cluster --model {table.name} --k K` first{', or pass --k' if len(ks) > 1 else ''}."
            )
        extra = [f"cluster_k{k}"]
    ds = FeatureDataset(store, table.name, columns=["uri", *extra], version=version)
    ids = list(ds.ids)
    if len(ids) > max_points:  # a seeded sample, in table order
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), max_points, replace=False))
        ds = FeatureDataset(store, table.name, columns=["uri", *extra], ids=[ids[i] for i in pick], version=ds.version)
    data = ds.to_numpy(["cls", "uri", *extra])
    n = len(ds)
    if n == 0:
        raise ConfigError(f"table {table.name} has no rows to map. Fix: extract some images first.")
    values: list[Any] = [None] * n
    what = "nothing"
    if color_by == "label":
        from featurestore.probe import read_label_file

        lab, key = read_label_file(labels)  # type: ignore[arg-type]
        from featurestore.paths import uri_key

        norm = (lambda k: k) if key == "id" else uri_key  # relative uris: from the current directory
        lookup = dict(zip(map(norm, lab.column(key).to_pylist()), lab.column("label").to_pylist()))
        keys = data["id"] if key == "id" else [uri_key(u) for u in data["uri"]]
        values = [lookup.get(v) for v in keys]
        what = f"label ({sum(v is not None for v in values)} of {n} labelled)"
    elif color_by == "cluster":
        values = list(data[extra[0]])
        what = f"{extra[0]}"
    xy, used = embed_2d(data["cls"], method, seed)
    cats = _categories(values)
    colours = _palette(len(cats))
    fig = _figure(MAP_FIGSIZE)
    ax = fig.subplots()
    size = float(np.clip(4000.0 / n, 2.0, 40.0))
    none = np.array([v is None for v in values])
    if none.any():
        ax.scatter(xy[none, 0], xy[none, 1], s=size, color=GREY, label="none" if color_by else None, linewidths=0)
    vals = np.array(values, dtype=object)
    for c, col in zip(cats, colours):
        m = vals == c
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=col, label=str(c), linewidths=0)
    if legend and color_by and 0 < len(cats) <= 20:
        ax.legend(fontsize=7, markerscale=max(1.0, 20.0 / size) ** 0.5, loc="best", title=color_by, title_fontsize=7)
    ax.set_title(f"{table.name}: {used.upper()} of {n} cls, coloured by {what}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    saved = _save(fig, out)
    counts = {str(c): int((vals == c).sum()) for c in cats}
    return {**saved, "table": table.name, "version": ds.version, "points": n, "method": used, "color_by": color_by, "counts": counts}
