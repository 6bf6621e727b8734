"""Calibration observers: the clipping range of a tensor from its values (NumPy only).

Methods (quantization.md §6, §8.1):

- `minmax`: the observed range.
- `percentile`: the p-th percentile of |x| (symmetric) or the (100−p, p) percentiles (asymmetric / unsigned),
  NumPy's linear interpolation.
- `entropy`: TensorRT/ORT KL calibration on a histogram of |x| (`num_bins` bins over [0, max|x|]): for every
  candidate edge i ≥ `levels`, P is the histogram cut at i with the clipped mass added to its last bin, Q merges
  the cut histogram into `levels` groups spread evenly over P's non-empty bins; the threshold is the edge with the
  smallest KL(P‖Q).
- `mse`: OCTAV (Sakr et al. 2022) MSE-optimal clipping by its Newton fixed point
  `s ← Σ_{|x|>s}|x| / ((4^−B / k)·#{|x| ≤ s} + #{|x| > s})`, k = 3 for signed and 12 for unsigned B-bit integers,
  started at mean|x|; also vectorized per channel for weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")


def percentile_threshold(x: np.ndarray, p: float) -> float:
    """The p-th percentile of |x| (linear interpolation)."""
    return float(np.percentile(np.abs(np.asarray(x, np.float64)), p))


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """Move a little mass onto zero bins so KL is finite (ORT's smooth_distribution)."""
    zeros = p == 0
    n_zero, n_nonzero = int(zeros.sum()), int((~zeros).sum())
    if n_nonzero == 0:
        return None
    eps1 = eps * n_zero / n_nonzero
    if eps1 >= 1.0:
        return None
    out = p.astype(np.float64)
    out[zeros] = eps
    out[~zeros] -= eps1
    return out


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(P‖Q) of two unnormalized histograms (normalized here); inf when Q misses mass P has."""
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    if np.any(q[mask] <= 0):
        return float("inf")
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_candidate_kl(hist: np.ndarray, i: int, levels: int) -> float:
    """KL(P‖Q) of cutting histogram `hist` at bin edge i into `levels` quantization levels."""
    sliced = hist[:i].astype(np.float64)
    p = sliced.copy()
    p[-1] += hist[i:].sum()
    nonzero = p != 0
    merged = i // levels
    group = np.minimum(np.arange(i) // merged, levels - 1)  # the last group takes the remainder bins
    totals = np.bincount(group, weights=sliced, minlength=levels)
    norms = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
    q = np.where(nonzero, totals[group] / np.maximum(norms[group], 1.0), 0.0)
    ps, qs = _smooth(p), _smooth(q)
    if ps is None or qs is None:
        return float("inf")
    return kl_divergence(ps, qs)


def entropy_threshold(x: np.ndarray, num_bins: int = 2048, levels: int = 128) -> float:
    """KL-optimal clipping threshold of |x| (returns max|x| when every candidate is equally good)."""
    a = np.abs(np.asarray(x, np.float64)).ravel()
    top = float(a.max(initial=0.0))
    if top == 0.0:
        return 0.0
    levels = min(levels, num_bins)
    hist, edges = np.histogram(a, bins=num_bins, range=(0.0, top))
    kls = [entropy_candidate_kl(hist, i, levels) for i in range(levels, num_bins + 1)]
    best = int(np.argmin(kls))  # first minimum: the smallest threshold among ties
    return float(edges[levels + best])


def octav_clip(x: np.ndarray, bits: int, unsigned: bool = False, iters: int = 50, tol: float = 1e-7) -> float:
    """OCTAV MSE-optimal clip s* of |x| for `bits`-bit quantization (≈2.57σ at 4 bits, 3.95σ at 8 on N(0, σ²))."""
    return float(octav_clip_rows(np.abs(np.asarray(x, np.float64)).reshape(1, -1), bits, unsigned, iters, tol)[0])


def octav_clip_rows(a: np.ndarray, bits: int, unsigned: bool = False, iters: int = 50,
                    tol: float = 1e-7) -> np.ndarray:
    """OCTAV clip of each row of |a| (2-D), vectorized: per-channel weight clipping."""
    a = np.abs(np.asarray(a, np.float64))
    noise = 4.0 ** (-bits) / (12.0 if unsigned else 3.0)
    s = a.mean(axis=1)
    top = a.max(axis=1, initial=0.0)
    for _ in range(iters):
        over = a > s[:, None]
        num = np.where(over, a, 0.0).sum(axis=1)
        den = noise * (~over).sum(axis=1) + over.sum(axis=1)
        new = np.where(den > 0, num / np.maximum(den, 1e-300), s)
        new = np.where(num > 0, new, top)  # nothing above s: the range already fits
        if np.all(np.abs(new - s) <= tol * np.maximum(s, 1e-30)):
            s = new
            break
        s = new
    return np.minimum(s, top)


@dataclass
class Observer:
    """Accumulates the range and a bounded random sample of one tensor over calibration batches."""

    per_batch: int = 1 << 16
    cap: int = 1 << 20
    seed: int = 0
    lo: float = float("inf")
    hi: float = float("-inf")
    count: int = 0
    samples: list[np.ndarray] = field(default_factory=list)

    def update(self, x: np.ndarray) -> None:
        flat = np.asarray(x, np.float64).ravel()
        if flat.size == 0:
            return
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        self.count += flat.size
        if flat.size > self.per_batch:
            rng = np.random.default_rng(self.seed + len(self.samples))
            flat = rng.choice(flat, self.per_batch, replace=False)
        self.samples.append(flat.astype(np.float32))

    def values(self) -> np.ndarray:
        data = np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)
        if data.size > self.cap:
            data = np.random.default_rng(self.seed).choice(data, self.cap, replace=False)
        return data.astype(np.float64)

    def range(self, method: str, bits: int = 8, symmetric: bool = True, percentile: float = 99.99,
              num_bins: int = 2048) -> tuple[float, float]:
        """The (lo, hi) clipping range by `method`. Non-negative tensors get (0, t) (unsigned quantization);
        otherwise (−t, t) when symmetric, or a two-sided range."""
        if self.count == 0:
            return 0.0, 0.0
        unsigned = self.lo >= 0.0
        if method == "minmax":
            t = max(abs(self.lo), abs(self.hi))
            if unsigned:
                return 0.0, self.hi
            return (-t, t) if symmetric else (min(self.lo, 0.0), max(self.hi, 0.0))
        data = self.values()
        if method == "percentile" and not symmetric and not unsigned:
            lo, hi = np.percentile(data, [100.0 - percentile, percentile])
            return min(float(lo), 0.0), max(float(hi), 0.0)
        if method == "percentile":
            t = percentile_threshold(data, percentile)
        elif method == "entropy":
            t = entropy_threshold(data, num_bins, 2 ** bits - 1 if unsigned else 2 ** (bits - 1))
        elif method == "mse":
            t = octav_clip(data, bits, unsigned)
        else:
            raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
        return (0.0, t) if unsigned else (-t, t)
