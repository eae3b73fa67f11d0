"""``linear-head``: a linear classifier on frozen features, trained on labels.

With ``standardize`` the rows are first standardized, ``z = (x - mean) / std``, with the
fit rows' mean and standard deviation (a dimension constant on them gets ``std = 1``).
Then::

    dim=null:  logits = z W + b                          output: the C class logits
    dim=K:     h = z A + a,  logits = h B + c            output: h, a K-wide learned space

trained by full-batch L-BFGS (torch, float64, strong-Wolfe line search) on the mean
cross-entropy plus ``l2`` times the sum of the squared weights (not the biases). The
bottleneck is linear on purpose: its output is a linear map of the features, so distances
in it stay meaningful for search. The head ``B, c`` is kept in the state (hashed), though
:meth:`LinearHead.transform` does not use it. The initial weights come from a torch
generator seeded with ``seed``; torch's global random state is left alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from featurestore.errors import ConfigError, MissingDependencyError
from featurestore_adapters.base import FittedAdapter, blockwise, row_blocks


class LinearHead(FittedAdapter):
    """Linear classifier (or linear bottleneck + classifier) trained on class labels."""

    name = "linear-head"
    needs_labels: ClassVar[bool] = True
    invertible: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._classes: list[str] | None = None

    def _layout(self) -> dict[str, int]:
        layout = {"mean": 1, "std": 1, "weight": 2, "bias": 1}
        if self._params["dim"] is not None:
            layout.update(head_weight=2, head_bias=1)
        return layout

    # -- fitting ---------------------------------------------------------------------------
    def _labels(self, x: np.ndarray, labels: Any, classes: list[str] | None) -> tuple[np.ndarray, int]:
        fix = "Fix: pass labels (featurestore adapt fit … --labels FILE)."
        if labels is None:
            raise ConfigError(f"adapter 'linear-head' is trained on class labels and got none. {fix}")
        y = np.asarray(labels)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(
                f"adapter 'linear-head': labels must be {len(x)} integer class indices, one per fit row; "
                f"got {y.dtype}{tuple(y.shape)}. {fix}"
            )
        n_classes = len(classes) if classes is not None else int(y.max()) + 1
        if y.min() < 0 or y.max() >= n_classes:
            raise ConfigError(
                f"adapter 'linear-head': labels range {int(y.min())}..{int(y.max())}, outside the {n_classes} classes "
                f"{list(classes) if classes is not None else ''} (indices 0..{n_classes - 1}). Fix: index labels into classes."
            )
        present = len(np.unique(y))
        if present < 2:
            raise ConfigError(
                f"adapter 'linear-head': the {len(x)} fit rows carry {present} class; a classifier needs at least 2. "
                "Fix: label rows of two or more classes."
            )
        return y.astype(np.int64), n_classes

    def _fit(self, x: np.ndarray, labels: np.ndarray | None, classes: list[str] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        y, n_classes = self._labels(x, labels, classes)  # before the (slow) torch import
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:  # pragma: no cover - torch is a dependency of featurestore itself
            raise MissingDependencyError("torch", "adapter 'linear-head'") from None
        n, d = x.shape
        if self._params["standardize"]:
            mean = x.sum(axis=0, dtype=np.float64) / n
            std = np.sqrt(sum(np.square(x[s].astype(np.float64) - mean).sum(axis=0) for s in row_blocks(n)) / n)
            std = np.where(std > 0, std, 1.0)  # a constant dimension carries nothing: leave it at 0
        else:
            mean, std = np.zeros(d), np.ones(d)
        # train from the float32-rounded mean and std the state stores, like the transform
        mean, std = mean.astype(np.float32).astype(np.float64), std.astype(np.float32).astype(np.float64)
        z = torch.from_numpy((x.astype(np.float64) - mean) / std)  # (n, D)
        target = torch.from_numpy(y)

        gen = torch.Generator().manual_seed(self._params["seed"])
        k = self._params["dim"]
        f64 = torch.float64
        if k is None:
            weights = [(0.01 * torch.randn(d, n_classes, generator=gen, dtype=f64)).requires_grad_()]
            biases = [torch.zeros(n_classes, dtype=f64, requires_grad=True)]
        else:  # scaled so that the bottleneck starts away from the saddle at zero
            weights = [
                (torch.randn(d, k, generator=gen, dtype=f64) / d**0.5).requires_grad_(),
                (torch.randn(k, n_classes, generator=gen, dtype=f64) / k**0.5).requires_grad_(),
            ]
            biases = [torch.zeros(k, dtype=f64, requires_grad=True), torch.zeros(n_classes, dtype=f64, requires_grad=True)]

        def forward() -> Any:
            out = z @ weights[0] + biases[0]
            return out if k is None else out @ weights[1] + biases[1]

        l2 = self._params["l2"]
        opt = torch.optim.LBFGS(
            weights + biases,
            lr=1.0,
            max_iter=self._params["max_iter"],
            history_size=20,
            line_search_fn="strong_wolfe",  # no learning rate to tune
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )

        def closure() -> Any:
            opt.zero_grad()
            loss = F.cross_entropy(forward(), target) + l2 * sum((w * w).sum() for w in weights)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            loss = float(F.cross_entropy(forward(), target) + l2 * sum((w * w).sum() for w in weights))
        f32 = [t.detach().numpy().astype(np.float32) for t in (*weights, *biases)]
        state = {"mean": mean.astype(np.float32), "std": std.astype(np.float32), "weight": f32[0]}
        if k is None:
            state["bias"] = f32[1]
        else:
            state.update(head_weight=f32[1], bias=f32[2], head_bias=f32[3])
        self._classes = [str(c) for c in classes] if classes is not None else None
        metrics = {
            "n_fit": n,
            "n_classes": n_classes,
            "classes": self._classes,
            "loss": loss,
            "lbfgs_iterations": int(opt.state_dict()["state"][0]["n_iter"]),
        }
        return state, metrics

    def _fitted_metrics(self, x: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        pred = self.logits(x).argmax(axis=1)
        return {"train_accuracy": float(np.mean(pred == np.asarray(labels)))}

    def _use_state(self, state: dict[str, np.ndarray]) -> None:
        d, width = state["weight"].shape
        ok = state["mean"].shape == (d,) and state["std"].shape == (d,) and state["bias"].shape == (width,)
        ok = ok and bool((state["std"] > 0).all())
        k = self._params["dim"]
        if k is not None:
            c = state["head_bias"].shape[0]
            ok = ok and width == k and state["head_weight"].shape == (k, c)
        if not ok:
            shapes = {key: tuple(v.shape) for key, v in state.items()}
            raise ConfigError(f"adapter 'linear-head': state tensors {shapes} do not fit dim={k}. Fix: load them with the params they were fitted with, or fit again.")
        self._f64 = {key: v.astype(np.float64) for key, v in state.items()}

    def load_state(self, tensors: Any) -> None:
        """Restore a fit; class names are not tensors, so :meth:`classes` answers None after this."""
        super().load_state(tensors)
        self._classes = None

    # -- widths and outputs ---------------------------------------------------------------------
    def in_dim(self) -> int:
        """D, the width of the fit rows."""
        return int(self._require_state("in_dim")["weight"].shape[0])

    def out_dim(self) -> int:
        """The number of classes (``dim=null``) or ``dim``."""
        return int(self._require_state("out_dim")["weight"].shape[1])

    def classes(self) -> list[str] | None:
        """Class names of the logits, when fitted in this process with names and ``dim=null``.

        None for the bottleneck (its outputs are not classes) and after :meth:`load_state`:
        the names are not tensors, so they live in the fit metrics (``classes``) instead.
        """
        return self._classes if self._params["dim"] is None else None

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, D) → (n, C) float32 logits, or (n, dim) float32 bottleneck outputs."""
        self._require_state("transform")
        x = self._input(x, self.in_dim())
        p = self._f64
        return blockwise(x, self.out_dim(), "float32", lambda b: ((b - p["mean"]) / p["std"]) @ p["weight"] + p["bias"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n, D) → (n, C) float32 class logits, through the bottleneck when there is one."""
        if self._params["dim"] is None:
            return self.transform(x)
        p = self._f64
        return blockwise(self.transform(x), p["head_bias"].shape[0], "float32", lambda h: h @ p["head_weight"] + p["head_bias"])


__all__ = ["LinearHead"]
