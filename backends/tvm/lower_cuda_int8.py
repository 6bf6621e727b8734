"""CUDA lowering of qconv2d / qlinear / qmatmul as int8 GEMMs: int8 tensor cores (sm_80+), `__dp4a` (sm_61+).

The generic rules of `lower_quant` compute in int64 on centered operands (exact, slow). On a CUDA target with
dp4a this module lowers the same ops to one pre-scheduled kernel (`schedules.cuda_int8`) that multiplies the
stored 8-bit operands directly into an int32 accumulator and corrects for the zero points:

    Σ_k (x − zx)(w − zw) + bias  =  Σ_k x·w'  +  (bias − zx·Σ_k w')        with w' = w − zw (a constant)

- qlinear x[…, K] · w[N, K]ᵀ: the GEMM on x reshaped to [M, K];
- qconv2d (groups = 1): an implicit GEMM, A[m, k] = x[n, c, oh·s − p + kh·d, …] gathered (im2col) inside the
  shared-memory fetch; padding cells read the zero point zx, i.e. the real value 0, as the reference;
- qmatmul with a constant 2-D right operand: like qlinear; with two activations (zero points 0): a batched GEMM
  with B read transposed.

On sm_80 and later the GEMM runs on tensor cores (WMMA m16n16k16 s8 → s32): they take s8 × s8 only, so u8
activations are shifted to s8 on the fly (x − 128) and 128·Σ_k w' is folded into the bias as well; a u8
qmatmul of two activations keeps dp4a. w' must fit int8 (it does for symmetric i8 / i4 / u4 weights); operands
are i8, u8, i4 or u4 (stored as int8 / uint8). Anything else (grouped convolutions, VS-Quant group scales,
i16, activation zero points on both qmatmul operands, a target without dp4a) goes to the generic rule. The int32
accumulation wraps exactly like the reference's cast to int32 (arithmetic mod 2^32), so the result is bit-exact.
Inside a group of qcc's fuse pass (lower_fused) the kernel declines to compose, so it runs alone and the rest
of the group (requantize, qadd) stays one fused kernel.

The GEMM extents are padded to the tile sizes: A's padding rows/columns read 0 and the packed weight's are 0,
so they add nothing, and the epilogue writes only the real output (the bias-and-correction add, inlined into
the register / shared-memory write-back). `plan_int8_gemm` builds the unscheduled
kernel (which the tests also compile for the CPU to check it against the interpreter); `lower_int8_gemm`
schedules and emits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm import relax, te, tirx

from qcc.backends.tvm import lower_quant  # noqa: F401  (the generic rules this module wraps)
from qcc.backends.tvm.lower_base import LOWER, LowerCtx
from qcc.backends.tvm.schedules import SCHEDULED_ATTR
from qcc.backends.tvm.schedules.cuda_int8 import (
    GEMM_BLOCK,
    choose_tiles,
    choose_wmma_tiles,
    current_target,
    has_dp4a,
    has_int8_tensor_cores,
    round_up,
    schedule_dp4a,
    schedule_wmma,
)
from qcc.ir.graph import Node
from qcc.ir.ops.registry import complete_attrs, get_op

OPS = ("qconv2d", "qlinear", "qmatmul")
STORAGE = {"i8": "int8", "u8": "uint8", "i4": "int8", "u4": "uint8"}  # operand dtypes dp4a reads


@dataclass
class Int8Gemm:
    """An unscheduled int8 GEMM kernel for one node, and how to call it.

    `args`: per kernel parameter before the output, either ("input", i, shape) — the node's runtime input i
    reshaped to `shape` — or ("const", array); `out_shape`: the kernel's output shape (the node's output, maybe
    flattened to 2-D); `b_is_weight`: B is a packed constant read in order."""

    func: tirx.PrimFunc
    tiles: Any  # Tiles (dp4a) or WmmaTiles (tensor cores)
    a_dtype: str
    b_dtype: str
    args: list[tuple[Any, ...]] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()
    b_is_weight: bool = True
    kind: str = "dp4a"  # "dp4a" | "wmma"

    def schedule(self) -> tirx.PrimFunc:
        """The kernel scheduled for CUDA (dp4a or tensor cores)."""
        if self.kind == "wmma":
            return schedule_wmma(self.func, self.tiles)
        return schedule_dp4a(self.func, self.tiles, self.a_dtype, self.b_dtype, vector_b=self.b_is_weight)


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _wrap32(v: np.ndarray) -> np.ndarray:
    """int64 → int32 with two's-complement wrap-around (the reference's astype)."""
    return ((v.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def _gemm(a: te.Tensor, b: te.Tensor, acc: str) -> te.Tensor:
    """C[(batch,) i, j] = Σ_k A[(batch,) i, k] · B[(batch,) j, k] in `acc` (int32, or uint32 for u8×u8)."""
    kp = int(a.shape[-1])
    k = te.reduce_axis((0, kp), name="k")
    if len(a.shape) == 3:
        shape = (int(a.shape[0]), int(a.shape[1]), int(b.shape[1]))
        return te.compute(shape, lambda t, i, j: te.sum(a[t, i, k].astype(acc) * b[t, j, k].astype(acc), axis=k),
                          name=GEMM_BLOCK)
    shape = (int(a.shape[0]), int(b.shape[0]))
    return te.compute(shape, lambda i, j: te.sum(a[i, k].astype(acc) * b[j, k].astype(acc), axis=k),
                      name=GEMM_BLOCK)


def _pack_weight(w: np.ndarray, zw: int, n_pad: int, k_pad: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(w − zw) as int8 [n_pad, k_pad] with zero padding, and its row sums Σ_k (w − zw); None if it overflows."""
    centered = w.astype(np.int64) - int(zw)
    if centered.size and (centered.min() < -128 or centered.max() > 127):
        return None
    packed = np.zeros((n_pad, k_pad), np.int8)
    packed[:centered.shape[0], :centered.shape[1]] = centered
    return packed, centered.sum(axis=1)


def _weight_gemm(x_dtype: str, m: int, k: int, w2d: np.ndarray, zx: int, zw: int, bias: np.ndarray | None,
                 a_fn: Any, out_shape: tuple[int, ...], out_fn: Any, x_arg: tuple[Any, ...],
                 tensor_cores: bool) -> Int8Gemm | None:
    """A GEMM of activations A (from `a_fn`) and a constant weight [N, K]; `out_fn(C, bias', *idx)` is the
    epilogue over `out_shape`. Tensor cores take s8 × s8 only: u8 activations are shifted by −128 on the fly
    (x − zx = (x − 128) + (128 − zx)), the constant part folded into the bias like the zero point."""
    n = int(w2d.shape[0])
    tiles: Any = choose_wmma_tiles(m, n) if tensor_cores else choose_tiles(m, n, k)
    mp, np_, kp = round_up(m, tiles.bm), round_up(n, tiles.bn), round_up(k, tiles.bk)
    packed = _pack_weight(w2d, zw, np_, kp)
    if packed is None:
        return None
    wq, wsum = packed
    offset = 128 if tensor_cores and x_dtype == "uint8" else 0
    corrected = (np.zeros(n, np.int64) if bias is None else bias.astype(np.int64)) + (offset - int(zx)) * wsum
    bias_c = _wrap32(corrected)
    x = te.placeholder(tuple(int(d) for d in x_arg[2]), x_dtype, name="x")
    w = te.placeholder((np_, kp), "int8", name="w")
    bc = te.placeholder((n,), "int32", name="bias")
    a_dtype = "int8" if offset else x_dtype

    def a_body(i: Any, kk: Any) -> Any:
        v = a_fn(x, i, kk)
        return (v.astype("int32") - offset).astype("int8") if offset else v

    a = te.compute((mp, kp), a_body, name="a_pad")
    c = _gemm(a, w, "int32")
    out = te.compute(out_shape, lambda *idx: out_fn(c, bc, *idx), name="epilogue")
    func = te.create_prim_func([x, w, bc, out])
    return Int8Gemm(func, tiles, a_dtype, "int8", [x_arg, ("const", wq), ("const", bias_c)], out_shape, True,
                    "wmma" if tensor_cores else "dp4a")


def _plan_linear(x_dtype: str, x_shape: tuple[int, ...], w2d: np.ndarray, zx: int, zw: int,
                 bias: np.ndarray | None, tensor_cores: bool) -> Int8Gemm | None:
    k = int(x_shape[-1]) if x_shape else 1
    m = _prod(x_shape[:-1])
    n = int(w2d.shape[0])
    zero = tirx.const(zx, x_dtype)

    def a_fn(x: te.Tensor, i: Any, kk: Any) -> Any:
        return tirx.if_then_else(tirx.all(i < m, kk < k), x[i, kk], zero)

    def out_fn(c: te.Tensor, bc: te.Tensor, i: Any, j: Any) -> Any:
        return c[i, j] + bc[j]

    return _weight_gemm(x_dtype, m, k, w2d, zx, zw, bias, a_fn, (m, n), out_fn, ("input", 0, (m, k)), tensor_cores)


def _plan_conv(node: Node, x_dtype: str, w: np.ndarray, bias: np.ndarray | None,
               tensor_cores: bool) -> Int8Gemm | None:
    a = node.attrs
    if int(a["groups"]) != 1:
        return None
    nb, cin, h, wd = node.inputs[0].shape
    cout, _, kh, kw = w.shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (dh, dw) = a["stride"], a["dilation"]
    pt, pl = a["padding"][0], a["padding"][1]
    zx, zw = int(a["x_zero_point"]), int(a["w_zero_point"])
    m, k = nb * oh * ow, cin * kh * kw
    zero = tirx.const(zx, x_dtype)

    def a_fn(x: te.Tensor, i: Any, kk: Any) -> Any:
        n_, r = i // (oh * ow), i % (oh * ow)
        c_, q = kk // (kh * kw), kk % (kh * kw)
        ih = (r // ow) * sh - pt + (q // kw) * dh
        iw = (r % ow) * sw - pl + (q % kw) * dw
        inside = tirx.all(i < m, kk < k, ih >= 0, ih < h, iw >= 0, iw < wd)
        return tirx.if_then_else(inside, x[n_, c_, ih, iw], zero)  # padding: the zero point, i.e. real 0

    def out_fn(c: te.Tensor, bc: te.Tensor, n_: Any, o: Any, y: Any, z: Any) -> Any:
        return c[(n_ * oh + y) * ow + z, o] + bc[o]

    return _weight_gemm(x_dtype, m, k, w.reshape(cout, k), zx, zw, bias, a_fn, (nb, cout, oh, ow), out_fn,
                        ("input", 0, (nb, cin, h, wd)), tensor_cores)


def _plan_batched(node: Node, a_dtype: str, b_dtype: str, tensor_cores: bool) -> Int8Gemm | None:
    """qmatmul of two activations with zero points 0: [T, M, K] × [T, K, N] (b may be 2-D, shared)."""
    if int(node.attrs["a_zero_point"]) or int(node.attrs["b_zero_point"]):
        return None
    ashape, bshape = node.inputs[0].shape, node.inputs[1].shape
    if len(ashape) < 2 or len(bshape) < 2 or (len(bshape) > 2 and tuple(bshape[:-2]) != tuple(ashape[:-2])):
        return None
    t, m, k, n = _prod(ashape[:-2]), int(ashape[-2]), int(ashape[-1]), int(bshape[-1])
    shared_b = len(bshape) == 2
    wmma = tensor_cores and a_dtype == b_dtype == "int8"  # s8 × s8 only; u8 would need row sums
    tiles: Any = choose_wmma_tiles(m, n) if wmma else choose_tiles(m, n, k)
    mp, np_, kp = round_up(m, tiles.bm), round_up(n, tiles.bn), round_up(k, tiles.bk)
    acc = "uint32" if (a_dtype, b_dtype) == ("uint8", "uint8") else "int32"
    x = te.placeholder((t, m, k), a_dtype, name="a")
    y = te.placeholder((k, n) if shared_b else (t, k, n), b_dtype, name="b")
    za, zb = tirx.const(0, a_dtype), tirx.const(0, b_dtype)
    ap = te.compute((t, mp, kp), lambda s, i, kk: tirx.if_then_else(tirx.all(i < m, kk < k), x[s, i, kk], za),
                    name="a_pad")
    bp = te.compute((t, np_, kp), lambda s, j, kk: tirx.if_then_else(
        tirx.all(j < n, kk < k), y[kk, j] if shared_b else y[s, kk, j], zb), name="b_pad")
    c = _gemm(ap, bp, acc)
    out = te.compute((t, m, n), lambda s, i, j: c[s, i, j].astype("int32"), name="epilogue")
    func = te.create_prim_func([x, y, out])
    args = [("input", 0, (t, m, k)), ("input", 1, (k, n) if shared_b else (t, k, n))]
    return Int8Gemm(func, tiles, a_dtype, b_dtype, args, (t, m, n), False, "wmma" if wmma else "dp4a")


def plan_int8_gemm(node: Node, consts: Sequence[np.ndarray | None], tensor_cores: bool = False) -> Int8Gemm | None:
    """The unscheduled int8 GEMM kernel for `node`, or None when the op/operands do not fit (module docstring).

    `consts[i]`: the constant value of input i, or None for a runtime value; `tensor_cores`: plan for the
    WMMA schedule (s8 operands, 16×16×16 fragments) where the operands allow it, else for dp4a."""
    if node.op not in OPS or len(node.inputs) < 2:
        return None
    node = Node(node.op, node.inputs, node.outputs, complete_attrs(get_op(node.op), node.attrs), node.meta,
                node.name)
    x_ir, w_ir = node.inputs[0].dtype, node.inputs[1].dtype
    if x_ir not in STORAGE or w_ir not in STORAGE:
        return None
    x_dtype = STORAGE[x_ir]
    bias = consts[2] if len(consts) > 2 else None
    if len(node.inputs) > 2 and bias is None:
        return None  # a runtime bias (never produced by realize-integer): the generic rule
    if node.op == "qconv2d":
        return None if consts[1] is None else _plan_conv(node, x_dtype, np.asarray(consts[1]), bias, tensor_cores)
    if node.op == "qlinear":
        if consts[1] is None or node.attrs.get("group_size") or len(node.inputs) > 3:
            return None
        a = node.attrs
        return _plan_linear(x_dtype, node.inputs[0].shape, np.asarray(consts[1]), int(a["x_zero_point"]),
                            int(a["w_zero_point"]), bias, tensor_cores)
    # qmatmul
    a = node.attrs
    if consts[1] is not None and len(node.inputs[1].shape) == 2 and consts[0] is None:
        return _plan_linear(x_dtype, node.inputs[0].shape, np.asarray(consts[1]).T, int(a["a_zero_point"]),
                            int(a["b_zero_point"]), None, tensor_cores)
    if consts[0] is None and consts[1] is None:
        return _plan_batched(node, x_dtype, STORAGE[w_ir], tensor_cores)
    return None


def lower_int8_gemm(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr | None:
    """Emit `node` as a dp4a kernel on a CUDA target with dp4a, else None (the generic rule applies)."""
    target = current_target()
    if ctx.device != "cuda" or not has_dp4a(target):
        return None
    from tvm.ir.expr import Constant

    consts = [a.value.numpy() if isinstance(a, Constant) else None for a in args]
    plan = plan_int8_gemm(node, consts, tensor_cores=has_int8_tensor_cores(target))
    if plan is None:
        return None
    func = plan.schedule()
    call_args: list[relax.Expr] = []
    for spec in plan.args:
        if spec[0] == "const":
            call_args.append(relax.const(spec[1]))
        else:
            expr, have = args[spec[1]], tuple(node.inputs[spec[1]].shape)
            call_args.append(expr if have == spec[2] else ctx.bb.emit(relax.op.reshape(expr, spec[2])))
    func = func.without_attr("global_symbol").with_attrs({"op_pattern": 8, "qcc.ops": [node.op],
                                                          SCHEDULED_ATTR: True})
    gv = ctx.bb.add_func(func, f"{node.op}_{plan.kind}")
    ctx.kernel_ops.setdefault(gv.name_hint, node.op)
    y = ctx.bb.emit(relax.call_tir(gv, call_args, relax.TensorType(plan.out_shape, "int32")))
    want = tuple(int(d) for d in node.outputs[0].shape)
    return y if plan.out_shape == want else ctx.bb.emit(relax.op.reshape(y, want))


def _may_take(node: Node) -> bool:
    """Whether `node` can become an int8 GEMM kernel, judged from its types and attributes alone."""
    if node.op not in OPS or len(node.inputs) < 2:
        return False
    if node.inputs[0].dtype not in STORAGE or node.inputs[1].dtype not in STORAGE:
        return False
    if node.op == "qconv2d":
        return int(node.attrs.get("groups", 1)) == 1
    if node.op == "qlinear":
        return not node.attrs.get("group_size") and len(node.inputs) <= 3
    return len(node.inputs[0].shape) >= 2 and len(node.inputs[1].shape) >= 2


def _with_cuda_int8(op: str, generic: Any) -> Any:
    def rule(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> Any:
        if ctx.device == "cuda" and any(isinstance(a, te.Tensor) for a in args):
            # Composed into a fused group (lower_fused): the kernel needs the constant weight and its own
            # schedule, so the anchor runs alone and the rest of the group (requantize, qadd) is fused.
            if _may_take(node) and has_dp4a(current_target()):
                from qcc.backends.tvm.lower_fused import NotComposable

                raise NotComposable(f"{node.op}: the CUDA int8 GEMM kernel runs alone")
            return generic(ctx, node, args)
        fast = lower_int8_gemm(ctx, node, args)
        return fast if fast is not None else generic(ctx, node, args)

    rule.__name__ = f"_lower_{op}_cuda_int8"
    rule.__doc__ = f"{op}: the dp4a kernel on CUDA (lower_cuda_int8), else {generic.__name__}."
    rule.qcc_generic = generic  # type: ignore[attr-defined]
    return rule


for _op in OPS:
    if not hasattr(LOWER[_op], "qcc_generic"):  # wrap once, even if this module is reloaded
        LOWER[_op] = _with_cuda_int8(_op, LOWER[_op])
