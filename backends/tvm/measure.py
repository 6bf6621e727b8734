"""The backend side of the cost-model collect job: the candidate space of a kernel and a measuring function.

`qcc.costmodel` sits below the backends and never imports them; the CLI hands it the two callables here:

    space(kind, shapes, attrs)      -> (template kind, workload dict, [params dict, ...])   (no TVM needed)
    Measurer(...)(kind, shapes, attrs, params) -> [seconds per call, one per repeat]

Kernels are described as plain dicts (the kernels' `Shape` / `Params` dataclasses with a "type" field), the
form `qcc.costmodel.features` reads.

Remote measurement uses TVM's RPC, the standard mechanism for measuring on another machine or device:
`Measurer(rpc="host:port")` builds here, uploads the shared library to a `tvm.rpc` server (started on the
device with `python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`) and times it there with the remote
`time_evaluator`; `rpc="tracker:host:port:key"` asks a `tvm.rpc` tracker for a device registered under `key`.
The build then targets this machine's LLVM target unless `target` says otherwise (set it to the device's).
Local measurement (no RPC) is the default.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels import choose_conv_impl, make_kernel, workload
from qcc.backends.tvm.kernels import params as P
from qcc.backends.tvm.kernels.params import CpuInfo, candidates, default_params
from qcc.backends.tvm.kernels.tune import params_from_json, params_to_json, random_inputs
from qcc.errors import BackendError

_SHAPE_TYPES = {c.__name__: c for c in (P.DenseShape, P.BatchMatmulShape, P.Conv2dShape)}


def shape_to_dict(shape: P.Shape) -> dict[str, Any]:
    """A workload as a plain dict: its dataclass fields plus "type" (the class name)."""
    return {"type": type(shape).__name__, **{k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in dataclasses.asdict(shape).items()}}


def cpu_to_dict(cpu: CpuInfo) -> dict[str, Any]:
    """The target features the cost model reads (vector lanes and registers, caches, cores)."""
    return dataclasses.asdict(cpu)


def space(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
          cpu: CpuInfo | None = None) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The template kind (conv2d resolved by `choose_conv_impl`), workload and every valid parameter set of a
    kernel, the rule's default first."""
    cpu = cpu or CpuInfo.detect()
    shape = workload(kind, shapes, attrs or {})
    if kind == "conv2d":
        kind = choose_conv_impl(shape, cpu)  # type: ignore[arg-type]
    d = default_params(kind, shape, cpu)
    cands = [d] + [c for c in candidates(kind, shape, cpu) if c != d]
    return kind, shape_to_dict(shape), [params_to_json(c) for c in cands]


def _parse_rpc(spec: str) -> tuple[str, str, int, str]:
    """"host:port" (a server) or "tracker:host:port:key" -> (mode, host, port, key)."""
    parts = spec.split(":")
    try:
        if parts[0] == "tracker" and len(parts) == 4:
            return "tracker", parts[1], int(parts[2]), parts[3]
        if len(parts) == 2:
            return "server", parts[0], int(parts[1]), ""
    except ValueError:
        pass
    raise BackendError(f"--rpc expects HOST:PORT or tracker:HOST:PORT:KEY, got {spec!r}")


class Measurer:
    """Build a kernel alone with `make_kernel` and time it: `number` calls per repeat, `repeat` repeats, each
    result the mean seconds per call of one repeat. Locally by default, or on a TVM RPC server / tracker device
    (`rpc`, see the module docstring)."""

    def __init__(self, number: int = 3, repeat: int = 3, min_repeat_ms: int = 5, rpc: str | None = None,
                 target: Any = None, cpu: CpuInfo | None = None, timeout: int = 60) -> None:
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.rpc, self.target, self.timeout = rpc, target, timeout
        self.cpu = cpu or CpuInfo.detect()
        self._session: Any = None

    def session(self) -> Any:
        """The RPC session (connected on first use), or None for local measurement."""
        if self.rpc is None:
            return None
        if self._session is None:
            from tvm import rpc

            mode, host, port, key = _parse_rpc(self.rpc)
            try:
                if mode == "tracker":
                    self._session = rpc.connect_tracker(host, port).request(key, session_timeout=self.timeout)
                else:
                    self._session = rpc.connect(host, port, session_timeout=self.timeout)
            except Exception as e:  # TVMError / OSError: say where
                raise BackendError(f"cannot connect to the TVM RPC {mode} at {host}:{port}: {e}") from e
        return self._session

    def __call__(self, kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None,
                 params: dict[str, Any], epilogue: Sequence[Any] = ()) -> list[float]:
        return self.prepare(kind, shapes, attrs, params, epilogue)()

    def prepare(self, kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None,
                params: dict[str, Any], epilogue: Sequence[Any] = ()) -> Callable[[], list[float]]:
        """Build the kernel now and return a timer: each call runs `repeat` timed repeats (seconds per call).
        The collect job builds every candidate of a kernel first and then times them interleaved."""
        import tvm

        from qcc.backends.tvm.kernels.kernel import host_target

        if kind == "attention":
            func, inputs, out_shape = attention_func(shapes, attrs or {}, params)
        else:
            p = params_from_json(params)
            kern = make_kernel(kind, shapes, attrs=attrs, params=p, epilogue=epilogue, cpu=self.cpu, use_db=False)
            func, inputs, out_shape = kern.func, random_inputs(kern), kern.output.shape
        target = tvm.target.Target(self.target or host_target())
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        sess = self.session()
        if sess is None:
            dev, mod = tvm.cpu(), lib.mod
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "kernel.so")
                lib.export_library(path)
                sess.upload(path)
            mod, dev = sess.load_module("kernel.so"), sess.cpu()
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        args.append(tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev))
        timer = mod.time_evaluator("main", dev, number=self.number,
                                   repeat=self.repeat, min_repeat_ms=self.min_repeat_ms)
        timer(*args)  # warm up: first-touch page faults and thread-pool start stay out of the data

        def run() -> list[float]:
            return [float(r) for r in timer(*args).results]

        return run


# ------------------------------------------------------------------------------------------ attention

def attention_shape_dict(shapes: Sequence[Sequence[int]], attrs: dict[str, Any]) -> dict[str, Any]:
    """The workload dict of an attention kernel: shapes [[bh, n, d], [bh, m, d], [bh, m, dv]] (q, k, v flat)."""
    (bh, n, d), (_, m, _), (_, _, dv) = ([int(x) for x in sh] for sh in shapes)
    return {"type": "AttentionShape", "bh": bh, "heads": int(attrs.get("heads", 1)), "n": n, "m": m, "d": d,
            "dv": dv, "causal": bool(attrs.get("causal", False))}


def attention_space(shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
                    cpu: CpuInfo | None = None) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The tile candidates (br, bc) of an attention kernel, the cache rule's `choose_tiles` first."""
    from qcc.backends.tvm.kernels.attention import choose_tiles, tile_candidates

    cpu = cpu or CpuInfo.detect()
    s = attention_shape_dict(shapes, attrs or {})
    shape = _attention_shape(s)
    tiles = tile_candidates(shape, choose_tiles(shape, "cpu", l1d=cpu.l1d, l2=cpu.l2, lanes=cpu.lanes))
    return "attention", s, [{"type": "AttentionParams", "br": br, "bc": bc} for br, bc in tiles]


def _attention_shape(s: dict[str, Any]) -> Any:
    from qcc.backends.tvm.kernels.attention import AttentionShape

    return AttentionShape(bh=s["bh"], heads=s["heads"], n=s["n"], m=s["m"], d=s["d"], dv=s["dv"],
                          scale=1.0 / float(np.sqrt(s["d"])), causal=s["causal"])


def attention_func(shapes: Sequence[Sequence[int]], attrs: dict[str, Any],
                   params: dict[str, Any]) -> tuple[Any, list[np.ndarray], tuple[int, ...]]:
    """(PrimFunc, random q/k/v, output shape) of the CPU attention kernel at tiles params["br"], ["bc"]."""
    from tvm import te

    from qcc.backends.tvm.kernels.attention import check_tiles, gen_cpu

    s = _attention_shape(attention_shape_dict(shapes, attrs))
    br, bc = int(params["br"]), int(params["bc"])
    check_tiles(s, br, bc, "cpu")
    gen = gen_cpu(s, br, bc)
    ph = [te.placeholder(tuple(int(x) for x in sh), "float32", name=nm) for sh, nm in zip(shapes, "qkv")]
    out = te.extern([(s.bh, s.n, s.dv)], ph, lambda i, o: gen(*i, o[0]), dtype=["float32"], name="attention")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(tuple(int(x) for x in sh)).astype(np.float32) for sh in shapes]
    return te.create_prim_func([*ph, out]), inputs, (s.bh, s.n, s.dv)


# ------------------------------------------------------------------------------------- integer kernels

INT_OPS = ("qconv2d", "qlinear")


def _int_attrs(kind: str, attrs: dict[str, Any]) -> dict[str, Any]:
    if kind == "qconv2d":
        return {"stride": tuple(attrs.get("stride", (1, 1))), "padding": tuple(attrs.get("padding", (0, 0, 0, 0))),
                "dilation": tuple(attrs.get("dilation", (1, 1))), "groups": int(attrs.get("groups", 1))}
    return {}


def int_space(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
              max_generic_macs: float = 4e6) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The candidate lowerings of an integer kernel (qconv2d / qlinear with weights of attrs["w_bits"] bits and
    activations of attrs["x_dtype"]): the VNNI template where it applies (first: the backend's default), and
    the generic TE rule, only up to `max_generic_macs` MACs (it runs about 500× slower than the template, so
    a large layer would take seconds per call) unless it is the only lowering."""
    from qcc.backends.tvm.kernels import int8
    from qcc.costmodel.describe import int_kernel
    from qcc.costmodel.features import gemm_view

    attrs = dict(attrs or {})
    k = int_kernel(kind, shapes[0], shapes[1], _int_attrs(kind, attrs), x_dtype=str(attrs.get("x_dtype", "u8")),
                   w_bits=int(attrs.get("w_bits", 8)))
    vnni = int8.enabled() and int(attrs.get("groups", 1)) == 1
    g, m, n, kk = gemm_view(kind, k["shape"])
    impls = (["vnni"] + (["generic"] if g * m * n * kk <= max_generic_macs else [])) if vnni else ["generic"]
    return kind, k["shape"], [{"type": "IntParams", "impl": i} for i in impls]


def int_graph(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    """A one-kernel integer graph, x -> qconv2d / qlinear (with bias) -> requantize (u8 output), with random
    weights of attrs["w_bits"] bits, and a random input: what the quantize pass makes of one layer, lowered by
    the real TVM backend. The requantize multipliers are per-tensor unless attrs["per_channel"] (the VNNI
    template's fused per-channel epilogue was being reworked when this was written)."""
    from qcc.ir.graph import GraphBuilder

    rng = np.random.default_rng(seed)
    x_dtype, w_bits = str(attrs.get("x_dtype", "u8")), int(attrs.get("w_bits", 8))
    if x_dtype not in ("u8", "i8") or w_bits not in (4, 8):
        raise BackendError(f"integer kernels are measured with u8/i8 activations and 4/8-bit weights, got "
                           f"{x_dtype} / {w_bits}")
    lo, hi = (0, 255) if x_dtype == "u8" else (-128, 127)
    x_shape, w_shape = tuple(int(d) for d in shapes[0]), tuple(int(d) for d in shapes[1])
    wlim = 2 ** (w_bits - 1)
    b = GraphBuilder()
    x = b.input(x_shape, x_dtype, "x")
    w = b.param(rng.integers(-wlim, wlim, w_shape).astype(np.int8), "w")
    if w_bits == 4:  # i4 values stored in int8 (the IR's i4 dtype)
        from qcc.ir.types import TensorType

        w.type = TensorType(w_shape, "i4")
    o = w_shape[0]
    bias = b.param(rng.integers(-1000, 1000, (o,)).astype(np.int32), "bias")
    zx = 128 if x_dtype == "u8" else 0
    if kind == "qconv2d":
        acc = b.emit("qconv2d", [x, w, bias], {**_int_attrs(kind, attrs), "x_zero_point": zx, "w_zero_point": 0})
        mshape: tuple[int, ...] = (o, 1, 1) if attrs.get("per_channel") else (1,)
    elif kind == "qlinear":
        acc = b.emit("qlinear", [x, w, bias], {"x_zero_point": zx, "w_zero_point": 0, "group_size": None})
        mshape = (o,) if attrs.get("per_channel") else (1,)
    else:
        raise BackendError(f"no integer kernel {kind!r}; known: {', '.join(INT_OPS)}")
    mult = b.param(rng.integers(1 << 13, 1 << 15, mshape).astype(np.int32), "m")
    shift = b.param(np.full(mshape, 24, np.int32), "s")
    y = b.emit("requantize", [acc, mult, shift], {"dtype": "u8", "zero_point": 0})
    return b.output(y), [rng.integers(lo, hi + 1, x_shape).astype(np.int8 if x_dtype == "i8" else np.uint8)]


def preload() -> None:
    """Import TVM's tensor intrinsics (which the VNNI template uses) now. Their TVMScript parsing calls
    `inspect.stack()`, which walks every module of sys.modules per frame: run after torch and the zoo are
    imported, that first import takes minutes instead of seconds."""
    import tvm.s_tir.tensor_intrin  # noqa: F401


class IntMeasurer:
    """Build a one-kernel integer graph (`int_graph`) for the cpu-int8 target through the real lowering
    (`qcc.backends.tvm.build`: whatever templates and fusion it applies) and time it with the VM's
    time_evaluator; params {"impl": "generic"} turns the VNNI template off (QCC_INT8_VNNI=0) for the build.
    A "vnni" candidate whose build did not take the template raises BackendError (stored as a failure).
    Local only: integer kernels are not measured over RPC."""

    def __init__(self, number: int = 3, repeat: int = 3, num_threads: int = 1) -> None:
        self.number, self.repeat, self.num_threads = number, repeat, num_threads

    def __call__(self, kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None,
                 params: dict[str, Any], epilogue: Sequence[Any] = ()) -> list[float]:
        return self.prepare(kind, shapes, attrs, params, epilogue)()

    def prepare(self, kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None,
                params: dict[str, Any], epilogue: Sequence[Any] = ()) -> Callable[[], list[float]]:
        """Build now; return a timer (`repeat` timed repeats per call), as `Measurer.prepare`."""
        from qcc.backends.tvm import build
        from qcc.target import Target

        graph, inputs = int_graph(kind, shapes, dict(attrs or {}))
        impl = params.get("impl", "vnni")
        old = os.environ.get("QCC_INT8_VNNI")
        os.environ["QCC_INT8_VNNI"] = "1" if impl == "vnni" else "0"
        try:
            exe = build(graph, Target("cpu-int8", num_threads=self.num_threads))
        finally:
            if old is None:
                os.environ.pop("QCC_INT8_VNNI", None)
            else:
                os.environ["QCC_INT8_VNNI"] = old
        took = any("vnni" in name for name in exe.kernels)
        if took != (impl == "vnni"):
            raise BackendError(f"{kind} {list(shapes)}: the build {'did not take' if not took else 'took'} the "
                               f"VNNI template, asked for {impl!r}")
        exe.run(inputs)  # warm up (first call allocates)

        def run() -> list[float]:
            return exe.time(inputs, number=self.number, repeat=self.repeat)

        return run


class AnyMeasurer:
    """Dispatch on the kernel kind: integer kernels to `IntMeasurer`, template kernels to `Measurer`."""

    def __init__(self, floats: Measurer, ints: IntMeasurer) -> None:
        self.floats, self.ints = floats, ints

    def __call__(self, kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None,
                 params: dict[str, Any], epilogue: Sequence[Any] = ()) -> list[float]:
        return self.prepare(kind, shapes, attrs, params, epilogue)()

    def prepare(self, kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None,
                params: dict[str, Any], epilogue: Sequence[Any] = ()) -> Callable[[], list[float]]:
        """The dispatched measurer's `prepare` (build now, time later)."""
        m = self.ints if kind in INT_OPS else self.floats
        return m.prepare(kind, shapes, attrs, params, epilogue)


def any_space(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
              cpu: CpuInfo | None = None) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """`int_space` for qconv2d / qlinear, `attention_space` for attention, else `space`."""
    if kind == "attention":
        return attention_space(shapes, attrs, cpu)
    return int_space(kind, shapes, attrs) if kind in INT_OPS else space(kind, shapes, attrs, cpu)
