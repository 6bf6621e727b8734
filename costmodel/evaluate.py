"""Evaluation of cost models on measurements: the metrics of TenSet / TLP, held out by model.

- Spearman rank correlation and MAPE of predicted vs measured latency over every held-out measurement;
- per kernel (a group of candidate schedules): top-1 / top-5 hit rate (the fastest measured candidate is the
  model's first / among its first five), the slowdown of the model's pick vs the best measured candidate, the
  TenSet top-1 score (Σ best / Σ picked), and the same slowdown for the rule's default and the analytic model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.costmodel.model import AnalyticCostModel, CostModel, LightGBMCostModel, _groups, spearman
from qcc.errors import CostModelError


def _pick_metrics(rows: Sequence[Mapping[str, Any]], scores: np.ndarray, prefix: str) -> dict[str, float]:
    """Top-1 / top-5 hit rates and mean pick slowdown of `scores` (higher = chosen first) over kernels."""
    secs = np.array([r["seconds"] for r in rows])
    top1, top5, best_sum, pick_sum, n = 0, 0, 0.0, 0.0, 0
    slow: list[float] = []
    for members in _groups(rows).values():
        if len(members) < 2:
            continue
        g = np.array(members)
        order = g[np.argsort(-scores[g], kind="stable")]
        best = g[np.argmin(secs[g])]
        top1 += int(order[0] == best)
        top5 += int(best in order[:5])
        slow.append(float(secs[order[0]] / secs[best] - 1.0))
        best_sum, pick_sum, n = best_sum + float(secs[best]), pick_sum + float(secs[order[0]]), n + 1
    if not n:
        return {}
    return {f"{prefix}top1": top1 / n, f"{prefix}top5": top5 / n, f"{prefix}slowdown": float(np.mean(slow)),
            f"{prefix}slowdown_max": float(np.max(slow)), f"{prefix}slowdown_median": float(np.median(slow)),
            f"{prefix}tenset_top1": best_sum / pick_sum,
            "kernels": float(n)}


def evaluate(model: CostModel, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every metric of the module docstring for `model` on `rows` (plus "_pred", the predictions)."""
    if not rows:
        raise CostModelError("nothing to evaluate: no measurements")
    secs = np.array([float(r["seconds"]) for r in rows])
    pred = np.asarray(model.predict(rows), dtype=np.float64)
    score = getattr(model, "score", None)
    rep: dict[str, Any] = {"measurements": len(rows), "spearman": spearman(pred, secs),
                           "mape": float(np.mean(np.abs(pred - secs) / secs))}
    rep.update(_pick_metrics(rows, np.asarray(score(rows)) if score is not None else -pred, ""))
    rep.update(_pick_metrics(rows, -pred, "regressor_"))
    # The rule's default is each kernel's first stored candidate (collect stores it first).
    first: dict[tuple[Any, str], tuple[Any, int]] = {}
    for i, r in enumerate(rows):
        key = r.get("kernel_id"), str(r.get("target"))
        first[key] = min(first.get(key, (math.inf, i)), (r.get("candidate_id", i), i))
    rule = np.zeros(len(rows))
    for _, i in first.values():
        rule[i] = 1.0
    rep.update(_pick_metrics(rows, rule, "rule_"))
    rep.update(_pick_metrics(rows, -AnalyticCostModel().predict(rows), "analytic_"))
    rep["_pred"] = pred
    return rep


def cross_validate(rows: Sequence[Mapping[str, Any]], holdout: Sequence[str] | None = None,
                   ) -> tuple[dict[str, Any], tuple[list[Any], np.ndarray]]:
    """Leave-one-model-out: for each model (or only `holdout`, as one fold), train on the kernels of every
    other model and predict the held-out model's. Kernels shared with a held-out model are never trained on.
    Returns (metrics over all held-out predictions, with per-model "folds"; (rows, predictions))."""
    from qcc.costmodel.job import model_names, split_by_model

    folds = [list(holdout)] if holdout else [[m] for m in model_names(rows) if m != "random"]
    if not folds:
        raise CostModelError("no model names in the measurements to hold out")
    all_rows: list[Any] = []
    preds: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    per: dict[str, Any] = {}
    for fold in folds:
        train, test = split_by_model(rows, fold)
        model = LightGBMCostModel.fit(train)
        rep = evaluate(model, test)
        per[",".join(fold)] = {k: v for k, v in rep.items() if not k.startswith("_")}
        # Kernels are re-numbered per fold so groups of different folds never merge.
        all_rows += [{**r, "kernel_id": (len(preds), r.get("kernel_id"))} for r in test]
        preds.append(rep["_pred"])
        scores.append(model.score(test))
    pred = np.concatenate(preds)

    class _Fixed:  # the folds' predictions, served as one model for the pooled metrics
        def predict(self, ks: Sequence[Mapping[str, Any]]) -> np.ndarray:
            return pred

        def score(self, ks: Sequence[Mapping[str, Any]]) -> np.ndarray:
            return np.concatenate(scores)

    report = evaluate(_Fixed(), all_rows)
    report.pop("_pred")
    report["folds"] = per
    report["by_family"] = by_family(all_rows, pred, np.concatenate(scores))
    return report, (all_rows, pred)


def kfold_kernels(rows: Sequence[Mapping[str, Any]], kinds: Sequence[str], k: int = 4) -> dict[str, Any]:
    """K-fold over the kernels of `kinds` (for kinds with few model-tagged kernels, e.g. attention, whose shapes
    are mostly random): fold i holds out every kernel of those kinds with id ≡ i (mod k), trains on everything
    else, and the metrics of `evaluate` (with the `noise_floor`) are pooled over the held-out kernels."""
    sel = [i for i, r in enumerate(rows) if r["kind"] in kinds]
    if not sel:
        raise CostModelError(f"no measurements of kernels of kind {', '.join(kinds)}")
    pred = np.zeros(len(sel))
    score = np.zeros(len(sel))
    where = {i: j for j, i in enumerate(sel)}
    for fold in range(k):
        test = [i for i in sel if hash(rows[i]["kernel_id"]) % k == fold]
        if not test:
            continue
        held = set(test)
        model = LightGBMCostModel.fit([r for i, r in enumerate(rows) if i not in held])
        t_rows = [rows[i] for i in test]
        for i, p, sc in zip(test, model.predict(t_rows), model.score(t_rows)):
            pred[where[i]], score[where[i]] = p, sc
    sub = [rows[i] for i in sel]
    rep = evaluate(_Given(pred, score), sub)
    rep.pop("_pred")
    rep.update(noise_floor(sub))
    return rep


class _Given:
    """Fixed predictions and scores served as a model (for metrics over precomputed held-out predictions)."""

    def __init__(self, pred: np.ndarray, scores: np.ndarray) -> None:
        self.pred, self.scores = pred, scores

    def predict(self, ks: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.pred

    def score(self, ks: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.scores


def by_family(rows: Sequence[Mapping[str, Any]], pred: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The metrics of `evaluate` (and the `noise_floor`) separately over the float template kernels, the integer
    kernels (INT_KINDS) and the attention kernels (ATTN_KINDS) of `rows`, given the (held-out) predictions and
    ranking scores of every row."""
    from qcc.costmodel.features import ATTN_KINDS, INT_KINDS

    def family(kind: str) -> str:
        return "int" if kind in INT_KINDS else "attention" if kind in ATTN_KINDS else "float"

    out: dict[str, Any] = {}
    for fam in ("float", "int", "attention"):
        idx = [i for i, r in enumerate(rows) if family(r["kind"]) == fam]
        if len(idx) < 2:
            continue
        rep = evaluate(_Given(pred[idx], scores[idx]), [rows[i] for i in idx])
        rep.pop("_pred")
        rep.update(noise_floor([rows[i] for i in idx]))
        out[fam] = rep
    return out


def noise_floor(rows: Sequence[Mapping[str, Any]], min_repeats: int = 4) -> dict[str, float]:
    """How much of a pick slowdown measurement noise alone explains: each candidate measured twice — its first two
    independent measurements ("runs", `qcc costmodel collect --remeasure`) where every candidate of the kernel has
    them, else the two halves of its repeats (even and odd rounds of the interleaved collect; at least
    `min_repeats`) — and the candidate that is best by one timed by the other, averaged over kernels and both
    directions: an oracle that picks by one measurement "loses" this much against the other. Also the median
    relative difference of the two and how many kernels used independent runs."""
    slow: list[float] = []
    spread: list[float] = []
    runs = 0
    for members in _groups(rows).values():
        if len(members) < 2:
            continue
        if all(len(rows[i].get("runs") or []) >= 2 for i in members):
            a = np.array([rows[i]["runs"][0] for i in members], dtype=np.float64)
            b = np.array([rows[i]["runs"][1] for i in members], dtype=np.float64)
            runs += 1
        elif all(len(rows[i].get("repeats") or []) >= min_repeats for i in members):
            a = np.array([np.median(rows[i]["repeats"][0::2]) for i in members])
            b = np.array([np.median(rows[i]["repeats"][1::2]) for i in members])
        else:
            continue
        slow.append(0.5 * (b[np.argmin(a)] / b.min() - 1.0 + a[np.argmin(b)] / a.min() - 1.0))
        spread += list(np.abs(a - b) / np.minimum(a, b))
    if not slow:
        return {}
    return {"noise_slowdown": float(np.mean(slow)), "noise_spread_median": float(np.median(spread)),
            "noise_kernels": float(len(slow)), "noise_runs_kernels": float(runs)}


def pct_of(rep: Mapping[str, Any], k: str) -> str:
    """rep[k] as a percentage, or n/a."""
    return f"{100 * rep[k]:.1f}%" if k in rep else "n/a"


def format_report(rep: Mapping[str, Any]) -> str:
    """A few lines of text for the CLI."""
    def pct(k: str) -> str:
        return f"{100 * rep[k]:.1f}%" if k in rep else "n/a"

    lines = [f"measurements {rep['measurements']}, kernels with >=2 candidates {int(rep.get('kernels', 0))}",
             f"Spearman {rep['spearman']:.3f}   MAPE {pct('mape')}",
             f"model pick:     top-1 {pct('top1')}  top-5 {pct('top5')}  mean slowdown vs best {pct('slowdown')} "
             f"(max {pct('slowdown_max')})  TenSet top-1 score {rep.get('tenset_top1', math.nan):.3f}",
             f"regressor pick: top-1 {pct('regressor_top1')}  mean slowdown {pct('regressor_slowdown')}",
             f"rule default:   top-1 {pct('rule_top1')}  mean slowdown {pct('rule_slowdown')}",
             f"analytic pick:  top-1 {pct('analytic_top1')}  mean slowdown {pct('analytic_slowdown')}"]
    for fam, f in (rep.get("by_family") or {}).items():
        lines.append(f"  {fam} kernels: n={f['measurements']} Spearman {f['spearman']:.3f} MAPE {pct_of(f, 'mape')} "
                     f"top-1 {pct_of(f, 'top1')} top-5 {pct_of(f, 'top5')} pick slowdown {pct_of(f, 'slowdown')} "
                     f"(median {pct_of(f, 'slowdown_median')}) "
                     f"(rule {pct_of(f, 'rule_slowdown')}; noise floor {pct_of(f, 'noise_slowdown')}, two "
                     f"measurements of a candidate differ by {pct_of(f, 'noise_spread_median')} in the median)")
    for name, f in (rep.get("folds") or {}).items():
        lines.append(f"  held out {name:10s}: n={f['measurements']:4d} Spearman {f['spearman']:.3f} "
                     f"MAPE {100 * f['mape']:.0f}% top-1 {100 * f.get('top1', math.nan):.0f}% "
                     f"top-5 {100 * f.get('top5', math.nan):.0f}% slowdown {100 * f.get('slowdown', math.nan):.1f}% "
                     f"(rule {100 * f.get('rule_slowdown', math.nan):.1f}%)")
    return "\n".join(lines)


def plot_fit(rows: Sequence[Mapping[str, Any]], pred: np.ndarray, path: str, title: str = "") -> None:
    """Predicted vs measured latency, log-log, one colour per model, to a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is in the dev extra
        raise CostModelError("the plot needs matplotlib (pip install 'qcc[dev]')") from e
    secs = np.array([r["seconds"] for r in rows])
    models = [",".join(r.get("models", [r.get("model", "")])) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 6))
    for m in sorted(set(models)):
        idx = [i for i, x in enumerate(models) if x == m]
        ax.scatter(secs[idx] * 1e3, pred[idx] * 1e3, s=8, alpha=0.6, label=m)
    lo, hi = min(secs.min(), pred.min()) * 1e3, max(secs.max(), pred.max()) * 1e3
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured ms")
    ax.set_ylabel("predicted ms")
    ax.set_title(title or "predicted vs measured", fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
