"""The cost-model retraining job: collect measurements, train, evaluate on held-out models.

    specs = kernels_of_graph(graph, "resnet18") + random_variants(specs, 20)
    collect(specs, db, space, measure, target)      # space / measure come from the backend (the CLI hands them in)
    model = train(db.rows(), holdout={"mobilenet"})  # never trains on a held-out model's kernels
    report = evaluate(model, held_out_rows)

A kernel spec is a plain dict {"kind": "conv2d" | "dense" | "batch_matmul", "shapes": [...], "attrs": {...},
"epilogue": [...], "model": name}; integer kernels (`integer_specs`) have kind "qconv2d" | "qlinear", attrs with
"x_dtype" and "w_bits", "dtype" and "layout"; attention kernels (`random_attention`, recognized attention nodes)
kind "attention" with q, k, v shapes [bh, n|m, d] and attrs heads / causal, their tiles the schedules.
`space(kind, shapes, attrs) -> (template kind, workload dict, [params dict, ...])` enumerates schedules (the
rule's default first); `measure(kind, shapes, attrs, params, epilogue) -> [seconds per repeat]` builds and times
one, and `measure.prepare(...)`, where the measurer has it, builds now and returns a timer (the interleaved
protocol of `collect`). This module imports neither the backends nor TVM.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from qcc.costmodel.database import MeasurementDB, canonical
from qcc.errors import CostModelError, QccError

Space = Callable[[str, Sequence[Sequence[int]], dict[str, Any]], tuple[str, dict[str, Any], list[dict[str, Any]]]]
Measure = Callable[..., list[float]]

# Elementwise ops a kernel template folds into its epilogue (IR op -> epilogue step).
_EPILOGUE_OPS = {"relu": ("relu",), "relu6": ("relu6",), "gelu": ("gelu",), "hardswish": ("hardswish",)}


def _prod(xs: Iterable[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def kernels_of_graph(graph: Any, model: str) -> list[dict[str, Any]]:
    """The template kernels of an IR graph: every conv2d, linear and matmul with the bias / residual add /
    activation chain that follows it (a single-use chain, as the backend fuses it)."""
    users = graph.users()
    specs: list[dict[str, Any]] = []
    for node in graph.nodes:
        epi: list[list[Any]] = []
        if node.op == "conv2d":
            x, w = node.inputs[0].type.shape, node.inputs[1].type.shape
            attrs = {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups") if k in node.attrs}
            spec = {"kind": "conv2d", "shapes": [list(x), list(w)], "attrs": attrs}
            if len(node.inputs) > 2:
                epi.append(["bias"])
        elif node.op == "attention" and len(node.inputs) == 3:  # the tiled kernel (masked ones left out)
            q, k, v = (t.type.shape for t in node.inputs[:3])
            bh = _prod(q[:-2])
            specs.append({"kind": "attention", "shapes": [[bh, q[-2], q[-1]], [bh, k[-2], k[-1]], [bh, v[-2], v[-1]]],
                          "attrs": {"heads": int(q[-3]) if len(q) > 2 else 1,
                                    "causal": bool(node.attrs.get("causal", False))},
                          "epilogue": [], "model": model})
            continue
        elif node.op in ("linear", "matmul"):
            a, b = node.inputs[0].type.shape, node.inputs[1].type.shape
            if node.op == "linear" or (len(b) == 2 and node.inputs[1] in graph.params):
                spec = {"kind": "dense", "shapes": [[_prod(a[:-1]), a[-1]], list(b)],
                        "attrs": {"w_layout": "NK" if node.op == "linear" else "KN"}}
            elif len(a) >= 3 and len(b) == len(a) and a[:-2] == b[:-2]:
                batch = _prod(a[:-2])
                spec = {"kind": "batch_matmul", "shapes": [[batch, a[-2], a[-1]], [batch, b[-2], b[-1]]], "attrs": {}}
            else:
                continue
            if node.op == "linear" and len(node.inputs) > 2:
                epi.append(["bias"])
        else:
            continue
        out = node.outputs[0]
        while len(users.get(out, [])) == 1:
            nxt = users[out][0]
            if nxt.op in _EPILOGUE_OPS:
                epi.append(list(_EPILOGUE_OPS[nxt.op]))
            elif nxt.op == "add" and len(nxt.inputs) == 2 and nxt.outputs[0].type.shape == out.type.shape:
                epi.append(["add"])
            else:
                break
            out = nxt.outputs[0]
        specs.append({**spec, "epilogue": epi, "model": model})
    return specs


def _scale(d: int, f: float, minimum: int = 1) -> int:
    return max(minimum, int(round(d * f)))


def random_variants(specs: Sequence[Mapping[str, Any]], n: int, seed: int = 0,
                    model: str = "random") -> list[dict[str, Any]]:
    """`n` kernels like `specs` with shapes scaled at random (channels / features ×0.5–2 in multiples of 8,
    spatial size ×0.5–2, batch rows ×0.25–4), so training sees shapes beyond the zoo's."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    base = [s for s in specs if s["kind"] in ("conv2d", "dense", "batch_matmul")]
    while base and len(out) < n:
        s = dict(rng.choice(base))

        def f() -> float:
            return rng.choice((0.5, 0.75, 1.0, 1.5, 2.0))

        def ch(c: int) -> int:
            return _scale(c, f(), 8) // 8 * 8 if c >= 16 else c

        if s["kind"] == "conv2d":
            (n_, c, h, w), (o, cg, kh, kw) = s["shapes"]
            g = int(s["attrs"].get("groups", 1))
            hw = _scale(h, f(), max(kh, 4))
            if g > 1 and g == c == o:
                c = o = g = ch(c)
                shapes = [[n_, c, hw, hw], [o, 1, kh, kw]]
            else:
                c, o = ch(c), ch(o)
                shapes = [[n_, c, hw, hw], [o, c // g, kh, kw]]
            s["shapes"], s["attrs"] = shapes, {**s["attrs"], "groups": g}
        elif s["kind"] == "dense":
            (m, k), wshape = s["shapes"]
            nn_ = wshape[0] if s["attrs"].get("w_layout", "NK") == "NK" else wshape[1]
            m, k, nn_ = _scale(m, rng.choice((0.25, 0.5, 1.0, 2.0, 4.0))), ch(k), ch(nn_)
            s["shapes"] = [[m, k], [nn_, k] if s["attrs"].get("w_layout", "NK") == "NK" else [k, nn_]]
        else:
            (b, m, k), (_, _, nn_) = s["shapes"]
            b, m, k, nn_ = _scale(b, f()), _scale(m, f(), 4), ch(k), _scale(nn_, f(), 4)
            s["shapes"] = [[b, m, k], [b, k, nn_]]
        s["model"] = model
        out.append(s)
    return out


def integer_specs(specs: Sequence[Mapping[str, Any]], bits: Sequence[int] = (4, 8),
                  x_dtype: str = "u8") -> list[dict[str, Any]]:
    """The integer kernels the quantized build of `specs`' layers runs: every conv2d becomes a qconv2d and every
    dense a qlinear (x [M, K], w [N, K]) with a requantize epilogue, once per weight width in `bits` (W4A8 and
    W8A8 by default; activations `x_dtype`). Batched matmuls (qmatmul, no template) are left out."""
    out: list[dict[str, Any]] = []
    for s in specs:
        if s["kind"] == "conv2d":
            kind, shapes = "qconv2d", [list(s["shapes"][0]), list(s["shapes"][1])]
            attrs = {k: s["attrs"][k] for k in ("stride", "padding", "dilation", "groups") if k in s["attrs"]}
        elif s["kind"] == "dense":
            (m, k), w = s["shapes"]
            n = w[0] if s["attrs"].get("w_layout", "NK") == "NK" else w[1]
            kind, shapes, attrs = "qlinear", [[m, k], [n, k]], {}
        else:
            continue
        for b in bits:
            out.append({"kind": kind, "shapes": shapes, "attrs": {**attrs, "x_dtype": x_dtype, "w_bits": int(b)},
                        "epilogue": [["requantize"]], "dtype": x_dtype, "layout": "NCHW",
                        "model": s.get("model", "")})
    return out


def random_int_variants(specs: Sequence[Mapping[str, Any]], n: int, seed: int = 0, bits: Sequence[int] = (4, 8),
                        model: str = "random") -> list[dict[str, Any]]:
    """`n` integer kernels like `specs` with shapes scaled at random (as `random_variants`) and the weight width
    and activation type (u8 / i8) drawn at random."""
    rng = random.Random(seed + 1)
    out: list[dict[str, Any]] = []
    base = [s for s in specs if s["kind"] in ("conv2d", "dense")]
    for s in random_variants(base, n, seed, model):
        x_dtype = rng.choice(("u8", "i8"))
        out += integer_specs([s], (rng.choice(tuple(bits)),), x_dtype)
    return out


def random_attention(n: int, seed: int = 0, model: str = "random", max_work: int = 1 << 27) -> list[dict[str, Any]]:
    """`n` attention kernels (q, k, v [bh, n|m, d]) of random batch·heads, sequence lengths and head widths, at
    most `max_work` = bh·n·m·d (a few ms per call), about one in six causal."""
    rng = random.Random(seed + 2)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        bh, d = rng.choice((1, 2, 4, 8, 16)), rng.choice((16, 32, 64, 64, 128))
        sq = rng.choice((16, 32, 64, 128, 128, 197, 256, 384, 512, 1024))
        sk = sq if rng.random() < 0.8 else rng.choice((64, 128, 256, 512))
        if bh * sq * sk * d > max_work:
            continue
        out.append({"kind": "attention", "shapes": [[bh, sq, d], [bh, sk, d], [bh, sk, d]],
                    "attrs": {"heads": bh, "causal": sq == sk and rng.random() < 0.17}, "epilogue": [],
                    "model": model})
    return out


def _sample(params: list[dict[str, Any]], k: int, key: str) -> list[dict[str, Any]]:
    """The rule's default (first) plus k-1 others drawn deterministically per kernel."""
    if len(params) <= k:
        return params
    rng = random.Random(key)
    return [params[0], *rng.sample(params[1:], k - 1)]


def collect(specs: Sequence[Mapping[str, Any]], db: MeasurementDB, space: Space, measure: Measure,
            target: Mapping[str, Any], candidates_per_kernel: int = 8, max_kernels: int | None = None,
            quiet: bool = False, log: Any = None, rounds: int = 1, refine: int = 3,
            remeasure: bool = False) -> dict[str, Any]:
    """Measure up to `candidates_per_kernel` schedules of each distinct kernel of `specs` on `target` and
    store them in `db`; (kernel, schedule) pairs already measured there are skipped, so an interrupted run
    resumes where it stopped. A candidate that fails to build or run is stored with its error. Returns counts
    and the throughput (measurements per minute).

    With `rounds` > 1 and a measurer that has `prepare` (build now, return a timer), a kernel's candidates are
    all built first and then timed interleaved: `rounds` rounds, each timing every candidate once in a shuffled
    order, so load from other processes on a shared machine hits all candidates alike; each round's value is
    the least of its repeats (interference only ever adds time), and the `refine` fastest candidates by median
    get `rounds` more rounds (the choice among the best few is what matters). Every round's value is stored
    as one repeat, in order (`evaluate.noise_floor` compares the even and odd rounds). `remeasure` measures
    candidates already in the database again (a second, independent measurement: the database keeps both, rows
    take the least disturbed, and `noise_floor` compares the two)."""
    log = log or sys.stderr
    tid, mid = db.target_id(target), db.machine_id()
    done = set() if remeasure else db.measured(tid)
    seen: set[str] = set()
    skipped = 0
    work: list[tuple[Mapping[str, Any], str, int, list[tuple[int, dict[str, Any]]]]] = []
    for s in specs:
        key = canonical([s["kind"], s["shapes"], s.get("attrs", {}), s.get("epilogue", [])])
        try:
            kind, shape, params = space(s["kind"], s["shapes"], dict(s.get("attrs", {})))
        except QccError as e:  # no template applies (e.g. a grouped conv): not a kernel this backend tunes
            print(f"skip {s['kind']} {s['shapes']}: {e}", file=log) if not quiet else None
            continue
        kid = db.add_kernel({"kind": kind, "shape": shape, "epilogue": s.get("epilogue", []),
                             "dtype": s.get("dtype", "f32"), "layout": s.get("layout", "NCHWc")},
                            str(s.get("model", "")))
        if key in seen:
            continue
        seen.add(key)
        chosen = _sample(params, candidates_per_kernel, key)
        cids = db.add_candidates(kid, chosen)
        todo = [(c, p) for c, p in zip(cids, chosen) if c not in done]
        skipped += len(chosen) - len(todo)
        work.append((s, kind, kid, todo))
        if max_kernels is not None and len(work) >= max_kernels:
            break
    total = sum(len(w[3]) for w in work)
    bar = _progress(total, quiet, log)
    stats: dict[str, Any] = {"kernels": len(work), "measured": 0, "failed": 0, "skipped": skipped, "seconds": 0.0}
    t0 = time.perf_counter()
    prepare = getattr(measure, "prepare", None) if rounds > 1 else None
    for s, _kind, _kid, todo in work:
        if prepare is not None:
            n_ok, n_bad = _interleaved(s, todo, db, tid, mid, prepare, rounds, refine)
            stats["measured"] += n_ok
            stats["failed"] += n_bad
            bar.update(len(todo))
            continue
        for cid, p in todo:
            try:
                reps = measure(s["kind"], s["shapes"], dict(s.get("attrs", {})), p, s.get("epilogue", []))
                db.add_measurement(cid, tid, mid, reps)
                stats["measured"] += 1
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a schedule that fails to build is data too: stored, not retried
                db.add_measurement(cid, tid, mid, [], error=f"{type(e).__name__}: {e}"[:500])
                stats["failed"] += 1
            bar.update(1)
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    stats["per_minute"] = 60.0 * (stats["measured"] + stats["failed"]) / max(stats["seconds"], 1e-9)
    stats["kernels_per_minute"] = 60.0 * sum(1 for w in work if w[3]) / max(stats["seconds"], 1e-9)
    stats["pending_before"] = total
    return stats


def _interleaved(s: Mapping[str, Any], todo: Sequence[tuple[int, dict[str, Any]]], db: MeasurementDB, tid: int,
                 mid: int, prepare: Callable[..., Callable[[], list[float]]], rounds: int,
                 refine: int) -> tuple[int, int]:
    """Build every candidate of one kernel, then time them in interleaved rounds (see `collect`); returns
    (measured, failed)."""
    timers: dict[int, Callable[[], list[float]]] = {}
    for cid, p in todo:
        try:
            timers[cid] = prepare(s["kind"], s["shapes"], dict(s.get("attrs", {})), p, s.get("epilogue", []))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a schedule that fails to build is data too: stored, not retried
            db.add_measurement(cid, tid, mid, [], error=f"{type(e).__name__}: {e}"[:500])
    times: dict[int, list[float]] = {cid: [] for cid in timers}
    rng = random.Random(canonical([s["kind"], s["shapes"]]))

    def run(ids: list[int], n: int) -> None:
        for _ in range(n):
            order = list(ids)
            rng.shuffle(order)
            for cid in order:
                if cid not in timers:
                    continue
                try:
                    times[cid].append(min(timers[cid]()))
                except Exception as e:  # a run-time failure: stored as the candidate's error
                    db.add_measurement(cid, tid, mid, [], error=f"{type(e).__name__}: {e}"[:500])
                    del timers[cid], times[cid]

    run(list(timers), rounds)
    if refine and len(timers) > 1:
        best = sorted(times, key=lambda c: statistics.median(times[c]))[:refine]
        run(best, rounds)
    for cid, reps in times.items():
        db.add_measurement(cid, tid, mid, reps)
    return len(times), len(todo) - len(times)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, quiet: bool, log: Any) -> Any:
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="measure", unit="schedule", file=log, dynamic_ncols=True)


def split_by_model(rows: Sequence[Mapping[str, Any]], holdout: Iterable[str]) -> tuple[list[Any], list[Any]]:
    """(train, test): a row is held out when any model using its kernel is held out, so held-out models'
    kernels are never seen in training."""
    hold = set(holdout)
    train: list[Any] = []
    test: list[Any] = []
    for r in rows:
        (test if hold & set(r.get("models", [r.get("model", "")])) else train).append(r)
    if not test:
        raise CostModelError(f"no measurements of the held-out models {sorted(hold)}")
    if not train:
        raise CostModelError("holding out those models leaves nothing to train on")
    return train, test


def model_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every model named in the rows, sorted."""
    return sorted({m for r in rows for m in r.get("models", [r.get("model", "")]) if m})
