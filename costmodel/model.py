"""Cost models behind one interface: `predict(kernels) -> seconds`.

- `AnalyticCostModel`: a roofline-style estimate, max(compute cycles of the register-tiled loop nest at a
  nominal clock, compulsory bytes at a nominal bandwidth) plus a launch overhead. Needs no data; the CUDA
  target and a CPU without a trained model use it.
- `LightGBMCostModel`: gradient-boosted trees on `features.kernel_features`: a regressor of the log latency
  residual against the analytic estimate (residuals extrapolate to unseen sizes far better than raw
  latencies), and a LambdaRank ranker, grouped per kernel and target with labels from the normalised
  throughput min_latency / latency (TenSet / TLP's best objective), for choosing among candidates.

Saved models are JSON envelopes holding both boosters and the feature version; loading one of another version
raises `CostModelError`. LightGBM is imported only when a learned model is trained or loaded.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qcc.costmodel.features import (
    DEFAULT_TARGET,
    FEATURE_NAMES,
    FEATURE_VERSION,
    analytic_cycles,
    feature_matrix,
    traffic,
)
from qcc.errors import CostModelError

MODEL_FORMAT = "qcc-costmodel-lightgbm"
DEFAULT_MODEL = Path(__file__).with_name("default_cpu.lgb")


class CostModel(Protocol):
    """What the passes and the backend use: predicted seconds per call of each kernel dict."""

    def predict(self, kernels: Sequence[Mapping[str, Any]]) -> np.ndarray: ...


def choose(model: CostModel, kernels: Sequence[Mapping[str, Any]]) -> int:
    """Index of the candidate the model expects to be fastest (a ranker's score where the model has one)."""
    if not kernels:
        raise CostModelError("no candidates to choose from")
    score = getattr(model, "score", None)
    return int(np.argmax(score(kernels))) if score is not None else int(np.argmin(model.predict(kernels)))


class AnalyticCostModel:
    """Roofline-style latency: max(cycles / clock, bytes / bandwidth) + overhead (see the module docstring)."""

    def __init__(self, clock_hz: float = 3.0e9, bandwidth: float = 20e9, overhead_s: float = 2e-6) -> None:
        self.clock_hz, self.bandwidth, self.overhead_s = clock_hz, bandwidth, overhead_s

    def predict(self, kernels: Sequence[Mapping[str, Any]]) -> np.ndarray:
        out = np.empty(len(kernels))
        for i, k in enumerate(kernels):
            t = {**DEFAULT_TARGET, **dict(k.get("target") or {})}
            _, read, write = traffic(k["kind"], k["shape"])  # integer kinds: each operand at its width
            cyc = analytic_cycles(k["kind"], k["shape"], k["params"], t)
            out[i] = max(cyc / self.clock_hz, (read + write) / self.bandwidth) + self.overhead_s
        return out


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, str], list[int]]:
    """Row indices per (kernel, target): the candidates among which a schedule is chosen."""
    out: dict[tuple[Any, str], list[int]] = {}
    for i, r in enumerate(rows):
        key = (r.get("kernel_id", json.dumps([r["kind"], r["shape"], r.get("epilogue")], sort_keys=True)),
               json.dumps(r.get("target"), sort_keys=True))
        out.setdefault(key, []).append(i)
    return out


def _lgb() -> Any:
    try:
        import lightgbm
    except ImportError as e:  # pragma: no cover - lightgbm is in the dev extra
        raise CostModelError("the learned cost model needs lightgbm (pip install 'qcc[dev]')") from e
    return lightgbm


_PARAMS = {"learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 5, "feature_fraction": 0.9,
           "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "seed": 0,
           "num_threads": 1, "deterministic": True}


class LightGBMCostModel:
    """The learned model (see the module docstring). `fit(rows)` trains on measurement rows (kernel dicts with
    "seconds"); `predict` gives seconds, `score` a ranking score (higher = faster) for candidate choice."""

    def __init__(self, regressor: Any, ranker: Any = None, meta: dict[str, Any] | None = None) -> None:
        self.regressor, self.ranker, self.meta = regressor, ranker, dict(meta or {})
        self.analytic = AnalyticCostModel()

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, Any]], rounds: int = 300, rank_rounds: int = 150) -> LightGBMCostModel:
        """Train on measurement rows; the ranker only when some kernel has two or more candidates."""
        lgb = _lgb()
        if len(rows) < 2:
            raise CostModelError(f"need at least 2 measurements to train, got {len(rows)}")
        secs = np.array([float(r["seconds"]) for r in rows])
        if not np.all(np.isfinite(secs)) or np.any(secs <= 0):
            raise CostModelError("measurements must be positive, finite seconds")
        x = feature_matrix(rows)
        base = AnalyticCostModel().predict(rows)
        reg = lgb.train(_PARAMS | {"objective": "regression"},
                        lgb.Dataset(x, np.log(secs) - np.log(base), feature_name=list(FEATURE_NAMES)), rounds)
        groups = [g for g in _groups(rows).values() if len(g) >= 2]
        ranker = None
        if groups:
            order = [i for g in groups for i in g]
            labels = np.concatenate([np.floor(30.999 * secs[g].min() / secs[g]) for g in groups])
            ranker = lgb.train(_PARAMS | {"objective": "lambdarank", "lambdarank_truncation_level": 10,
                                          "min_data_in_leaf": 2},
                               lgb.Dataset(x[order], labels, group=[len(g) for g in groups],
                                           feature_name=list(FEATURE_NAMES)), rank_rounds)
        return cls(reg, ranker, {"rows": len(rows), "kernels": len(_groups(rows)),
                                 "kinds": sorted({str(r["kind"]) for r in rows})})

    def predict(self, kernels: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if not kernels:
            return np.zeros(0)
        return AnalyticCostModel().predict(kernels) * np.exp(self.regressor.predict(feature_matrix(kernels)))

    def score(self, kernels: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Ranking scores, higher = expected faster (the LambdaRank model, else minus the predicted time)."""
        if self.ranker is None:
            return -self.predict(kernels)
        return np.asarray(self.ranker.predict(feature_matrix(kernels)))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model (both boosters, the feature version and names) as one JSON file, atomically."""
        doc = {"format": MODEL_FORMAT, "feature_version": FEATURE_VERSION, "feature_names": list(FEATURE_NAMES),
               "meta": self.meta, "regressor": self.regressor.model_to_string(),
               "ranker": self.ranker.model_to_string() if self.ranker is not None else None}
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LightGBMCostModel:
        """Read a saved model; refuses other formats and other feature versions with CostModelError."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise CostModelError(f"cost model {os.fspath(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CostModelError(f"{os.fspath(path)} is not a qcc cost model: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
            raise CostModelError(f"{os.fspath(path)} is not a qcc cost model file")
        if doc.get("feature_version") != FEATURE_VERSION or doc.get("feature_names") != list(FEATURE_NAMES):
            raise CostModelError(f"{os.fspath(path)} was trained on features of version {doc.get('feature_version')}"
                                 f"; this qcc computes version {FEATURE_VERSION}: retrain it with "
                                 "`qcc costmodel train`")
        lgb = _lgb()
        reg = lgb.Booster(model_str=doc["regressor"])
        rank = lgb.Booster(model_str=doc["ranker"]) if doc.get("ranker") else None
        return cls(reg, rank, {**(doc.get("meta") or {}), "path": os.fspath(path)})


def load_model(path: str | os.PathLike[str] | CostModel) -> CostModel:
    """A cost model from a path ("analytic" names the analytic model), or the model itself."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    if os.fspath(path) == "analytic":
        return AnalyticCostModel()
    return LightGBMCostModel.load(path)


@functools.lru_cache(maxsize=1)
def default_model() -> CostModel | None:
    """The model shipped for the CPU target (trained on this project's measurements), or None when it or
    lightgbm is missing."""
    if not DEFAULT_MODEL.exists():
        return None
    try:
        return LightGBMCostModel.load(DEFAULT_MODEL)
    except CostModelError:
        return None


_ACTIVE: list[CostModel | str | None] = []
RULE = "rule"  # `using("rule")`: no cost model, the backends' rule-based defaults


@contextmanager
def using(model: str | os.PathLike[str] | CostModel | None) -> Iterator[CostModel | None]:
    """Within the block, `active_model()` is `model` (a path, "analytic", a model, or "rule" for none at all;
    None keeps the default)."""
    rule = isinstance(model, str) and model == RULE
    m = None if model is None or rule else load_model(model)
    _ACTIVE.append(RULE if rule else m)
    try:
        yield m
    finally:
        _ACTIVE.pop()


def active_model() -> CostModel | None:
    """The model chosen with `using`, else the shipped default (None without one, or under `using("rule")`)."""
    for m in reversed(_ACTIVE):
        if isinstance(m, str):
            return None
        if m is not None:
            return m
    return default_model()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 1 else math.nan
