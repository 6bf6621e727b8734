"""Materialise the fusion pass's groups (`qcc.passes.fuse`): one group of nodes -> one PrimFunc, one call_tir.

The generic lowering rules (`LOWER`) emit TE through `ctx.emit_te(node, fn, *args)`. A group is lowered by
running its members' rules against a `ComposeCtx`, whose `emit_te` applies `fn` to TE tensors directly instead
of emitting a kernel, so the members' TE computations chain into one TE graph. `bb.emit_te` turns that graph
(placeholders for the group's external inputs) into a single PrimFunc; then every intermediate stage that can be
inlined (elementwise and injective stages, including the producers of a reduction) is inlined with
`compute_inline`, so an elementwise / injective group becomes one loop nest and a reduction group keeps only its
reduction buffers. The kernel carries `qcc.op` (the anchor: the conv/matmul, else the reduction, else the first
member), `qcc.ops` (all members), `qcc.fusion_group` and `op_pattern` = opaque, so TVM's FuseOps, which the
build still runs for what qcc left alone (e.g. the layout transposes templates emit as Relax ops), keeps it whole.

A rule that cannot compose (it reaches for the block builder, or returns several values) raises
`NotComposable`; the group then falls back to the anchor alone plus the rest of the group fused, and finally to
one kernel per member. On CPU, qconv2d / qlinear anchors and a requantize right after them go through their own
rules, so that the VNNI template (kernels/int8.py, which fuses the requantize itself) is not traded for a generic
TE loop nest; the rest of their chain (qadd...) still becomes one kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax, te

from qcc.backends.tvm.lower_base import LOWER, LowerCtx
from qcc.errors import BackendError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.ops.registry import complete_attrs, get_op

Rule = Callable[[Node, list[relax.Expr]], list[relax.Expr]]
OPAQUE = 8  # TVM's kOpaque op pattern
OWN_TEMPLATE = ("qconv2d", "qlinear")  # anchors lowered by a template of their own on CPU (see lower_members)


class NotComposable(BackendError):
    """A member's lowering rule cannot be chained in TE (it emits Relax itself)."""


class _NoBuilder:
    """Stands in for the block builder inside a composed group: any use means the rule emits Relax itself."""

    def __getattr__(self, name: str) -> Any:
        raise NotComposable(f"the rule uses the block builder ({name})")


class ComposeCtx(LowerCtx):
    """A lowering context whose `emit_te` chains TE computations instead of emitting kernels."""

    def emit_te(self, node: Node, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Any:
        if not all(isinstance(a, te.Tensor) for a in args):
            raise NotComposable(f"{node.op}: non-tensor arguments")
        out = fn(*args)
        if not isinstance(out, te.Tensor):
            raise NotComposable(f"{node.op}: the rule returns {type(out).__name__}, not one tensor")
        return out


def _anchor_op(members: list[Node]) -> str:
    from qcc.passes.fuse import op_class

    for cls in ("anchor", "reduction"):
        for m in members:
            if op_class(m) == cls:
                return m.op
    return members[0].op


def inline_stages(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Inline every block of `func` that `compute_inline` accepts (spatial stages that are not outputs)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    progress = True
    while progress:
        progress = False
        for blk in sch.get_child_blocks(sch.get_sblock("root")):
            try:
                sch.compute_inline(blk)
            except Exception:  # an output block, a reduction, an extern: it stays
                continue
            progress = True
            break
    return sch.mod["main"]


class FusedLowering:
    """Emits the fused groups recorded in the graph's meta; `lower(node, get, put)` in node order.

    `exclude`: nodes another lowering owns (the template groups of lower_templates); `stats`: a dict to count
    into (fused_kernels, fused_ops, fallbacks)."""

    def __init__(self, ctx: LowerCtx, graph: Graph, rule: Rule, exclude: set[Node] | None = None,
                 stats: Any = None) -> None:
        from qcc.passes.fuse import groups_of

        self.ctx, self.graph, self.rule = ctx, graph, rule
        exclude = exclude or set()
        self.by_last: dict[Node, list[Node]] = {}
        for g in groups_of(graph):
            members = [n for n in g if n not in exclude]
            if len(members) > 1:
                self.by_last[members[-1]] = members
        self.inside = {m for ms in self.by_last.values() for m in ms[:-1]}
        self.stats: Any = stats if stats is not None else {}
        for key in ("fused_kernels", "fused_ops", "fallbacks"):
            self.stats.setdefault(key, 0)

    def drop(self, nodes: set[Node]) -> None:
        """Do not fuse the groups holding any of `nodes` (their members lower one by one)."""
        for last, ms in list(self.by_last.items()):
            if nodes & set(ms):
                del self.by_last[last]
        self.inside = {m for ms in self.by_last.values() for m in ms[:-1]}

    def owns(self, node: Node) -> bool:
        return node in self.inside or node in self.by_last

    def lower(self, node: Node, get: Callable[[Value], relax.Expr], put: Callable[[Value, relax.Expr], None]) -> None:
        """Lower `node` if it belongs to a fused group (members wait for the group's last node)."""
        if node in self.inside:
            return
        self.lower_members(self.by_last[node], get, put)

    def lower_members(self, members: list[Node], get: Callable[[Value], relax.Expr],
                      put: Callable[[Value, relax.Expr], None]) -> None:
        """One kernel for `members`; else the first member alone and the rest fused; else one kernel each."""
        if len(members) == 1:
            self._single(members[0], get, put)
            return
        if members[0].op in OWN_TEMPLATE and self.ctx.device == "cpu" and not self.ctx.float16:
            # qconv2d / qlinear have their own CPU kernel (the VNNI template, kernels/int8.py) whose epilogue the
            # requantize rule fuses itself (int8_fuse): both go through their rules, the rest of the chain (qadd,
            # ...) is one fused kernel.
            anchor_out: dict[Value, relax.Expr] = {}
            self._single(members[0], get, anchor_out.__setitem__)
            if not self._is_template(anchor_out[members[0].outputs[0]]):
                # the template declined: the generic call just emitted stays unused (the build's dead-code
                # elimination drops it) and the whole group is composed as usual
                self.stats["template_declined"] = self.stats.get("template_declined", 0) + 1
                try:
                    put(members[-1].outputs[0], self.emit(members, get))
                    return
                except NotComposable:
                    self.stats["fallbacks"] += 1
            for v, expr in anchor_out.items():
                put(v, expr)
            self.stats["anchor_alone"] = self.stats.get("anchor_alone", 0) + 1
            rest = members[1:]
            if rest[0].op == "requantize":
                self._single(rest[0], get, put)
                rest = rest[1:]
            if rest:
                self.lower_members(rest, get, put)
            return
        if members[0].op == "requantize" and self.ctx.device == "cpu" and not self.ctx.float16:
            from qcc.backends.tvm.kernels import int8_fuse

            if int8_fuse.is_template_gemm(self.ctx, get(members[0].inputs[0])):
                # a requantize of a VNNI template GEMM goes into the GEMM's epilogue (and a following qadd too)
                self._single(members[0], get, put)
                self.lower_members(members[1:], get, put)
                return
        try:
            put(members[-1].outputs[0], self.emit(members, get))
            return
        except NotComposable:
            self.stats["fallbacks"] += 1
        self._single(members[0], get, put)
        self.lower_members(members[1:], get, put)

    def _is_template(self, expr: relax.Expr) -> bool:
        """Whether `expr` is the call of a template kernel (marked opaque when added), not a generic emit_te."""
        binding = self.ctx.bb.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if not isinstance(binding, relax.Call) or not binding.args or not isinstance(binding.args[0], tvm.ir.GlobalVar):
            return True  # a reshape or view of one: leave it alone
        func = self.ctx.bb.get()[binding.args[0]]
        return func.attrs is not None and "op_pattern" in func.attrs

    def _single(self, node: Node, get: Callable[[Value], relax.Expr], put: Callable[[Value, relax.Expr], None]) -> None:
        for v, expr in zip(node.outputs, self.rule(node, [get(v) for v in node.inputs])):
            put(v, expr)

    def emit(self, members: list[Node], get: Callable[[Value], relax.Expr]) -> relax.Var:
        """Emit `members` (an in-tree ending in the last member) as one call_tir; NotComposable if impossible."""
        inside = {v for m in members for v in m.outputs}
        external: list[Value] = []
        for m in members:
            for v in m.inputs:
                if v not in inside and v not in external:
                    external.append(v)
        sink = members[-1].outputs[0]
        cctx = ComposeCtx(_NoBuilder(), device=self.ctx.device, float16=self.ctx.float16)  # type: ignore[arg-type]

        def compose(*tensors: te.Tensor) -> te.Tensor:
            env: dict[Value, Any] = dict(zip(external, tensors))
            for m in members:
                full = Node(m.op, m.inputs, m.outputs, complete_attrs(get_op(m.op), m.attrs), m.meta, m.name)
                try:
                    env[m.outputs[0]] = LOWER[m.op](cctx, full, [env[v] for v in m.inputs])
                except NotComposable:
                    raise
                except Exception as e:  # a rule that does not chain (e.g. it inspects Relax arguments)
                    raise NotComposable(f"{m.op}: {type(e).__name__}: {e}") from e
                if not isinstance(env[m.outputs[0]], te.Tensor):
                    raise NotComposable(f"{m.op}: no TE tensor")
            return env[sink]

        anchor = _anchor_op(members)
        name = "fused_" + "_".join(dict.fromkeys(m.op for m in members))[:60]
        var = self.ctx.bb.emit_te(compose, *[get(v) for v in external], primfunc_name_hint=name)
        binding = self.ctx.bb.lookup_binding(var)
        gv = binding.args[0]
        func = self.ctx.bb.get()[gv]
        try:
            func = inline_stages(func)
        except Exception:  # keep the multi-stage kernel: still one launch
            pass
        gid = members[-1].meta.get("fusion_group", -1)
        func = func.with_attrs({"op_pattern": OPAQUE, "qcc.op": anchor, "qcc.ops": [m.op for m in members],
                                "qcc.fusion_group": int(gid)})
        self.ctx.bb.update_func(gv, func)
        self.ctx.kernel_ops.setdefault(gv.name_hint, anchor)
        self.stats["fused_kernels"] += 1
        self.stats["fused_ops"] += len(members)
        return var


def ensure_meta(graph: Graph, device: str, fusion: str) -> Graph:
    """`graph` with fusion meta: as given when it carries the pass's decisions, else the pass run here."""
    from qcc.ir.pass_manager import PassContext
    from qcc.passes.fuse import Fuse, groups_of

    if groups_of(graph):
        return graph
    return Fuse(mode=fusion, device=device).run(graph, PassContext())


def count_launches(mod: tvm.IRModule, entry: str = "main") -> int:
    """Kernel launches of one call of `entry`: its calls of PrimFuncs (call_tir before VM lowering, direct calls
    after); reshape views and VM builtins are no launches."""
    prims = {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    call_tir = {tvm.ir.Op.get("relax.call_tir"), tvm.ir.Op.get("relax.call_tir_inplace")}
    count = 0

    def visit(expr: Any) -> None:
        nonlocal count
        if isinstance(expr, relax.Call):
            if expr.op in call_tir or (isinstance(expr.op, tvm.ir.GlobalVar) and expr.op.name_hint in prims):
                count += 1

    func = mod[entry]
    relax.analysis.post_order_visit(func.body, visit)
    return count
