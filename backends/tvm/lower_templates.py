"""CPU fp32 lowering through the hand-scheduled kernel templates (backends/tvm/kernels).

`TemplateLowering` drives the lowering of a whole graph for cpu-fp32:

- `epilogue_groups.find_groups` picks the anchors (conv2d, linear, matmul) and the elementwise chains folded
  into their epilogues; each group becomes one `call_tir` of `kernels.make_kernel(...).func`, added with
  `bb.add_func`. Constant weights and biases are packed once here, with NumPy, and embedded as constants.
- `layout.assign_layouts` decides which activations stay in NCHW[x]c; the cheap ops between convolutions run
  on that layout with the kernels of `nchwc_ops`, and values are converted (once each, cached) only where a
  consumer needs the other layout.
- A group whose template declines (BackendError: e.g. a grouped conv with channel groups that are not
  multiples of the vector width) and every other node go through the generic rules of `LOWER` on NCHW
  inputs.

With `fusion="auto"` the anchors' epilogues are the fuse pass's groups (`epilogue_groups`); the other fused groups
and the tails of anchor groups that a template cannot fold become one generic kernel each (`lower_fused`), except
groups touching a value the layout pass keeps in NCHW[x]c (those run on the blocked kernels, one per node).
`fusion="off"`: anchors fold no epilogue and nothing else fuses.

With `tune`, each template kernel first measures a few parameter candidates (`kernels.tune`) unless the
tuning database already holds a record for it; the winners are stored there and reused by later compiles.
`stats` counts what was emitted (template kernels by kind, fused epilogue steps, layout transforms).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
from tvm import relax

from qcc.backends.tvm import nchwc_ops
from qcc.backends.tvm.epilogue_groups import Group, find_groups
from qcc.backends.tvm.kernels import CpuInfo, choose_conv_impl, choose_params, make_kernel, rank_candidates, workload
from qcc.backends.tvm.kernels import params as P
from qcc.backends.tvm.kernels.layout import layout_kernel, to_nchwc
from qcc.backends.tvm.layout import BLOCKED, PLAIN, assign_layouts, blocked_op, conv_blockable
from qcc.backends.tvm.lower_base import LowerCtx
from qcc.backends.tvm.lower_fused import FusedLowering
from qcc.errors import BackendError
from qcc.ir.graph import Graph, Node, Value


def _prod(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


class TemplateLowering:
    """Lower the nodes of one graph, template kernels first (see the module docstring)."""

    def __init__(self, ctx: LowerCtx, graph: Graph, lower_generic: Any, tune: bool = False, quiet: bool = True,
                 cpu: CpuInfo | None = None, fusion: str = "tvm") -> None:
        self.ctx, self.graph, self.lower_generic = ctx, graph, lower_generic
        self.tune, self.quiet = tune, quiet
        self.cpu = cpu or CpuInfo.detect()
        self.block = self.cpu.lanes
        self.groups = find_groups(graph, fusion)
        self.by_last = {g.last: g for g in self.groups}
        self.inside = {m for g in self.groups for m in g.members[:-1]}
        self.layouts = assign_layouts(graph, self.groups, self.block)
        self.env: dict[Value, relax.Expr] = {}
        self.actual: dict[Value, str] = {}  # the layout each env entry is in
        self.converted: dict[tuple[Value, str], relax.Expr] = {}
        self.stats: Counter[str] = Counter()
        self.fused: FusedLowering | None = None
        if fusion == "auto":
            claimed = {m for g in self.groups for m in g.members}
            self.fused = FusedLowering(ctx, graph, lower_generic, exclude=claimed, stats=self.stats)
            self.fused.drop({n for n in graph.nodes if n not in claimed and n.outputs
                             and self.layouts.get(n.outputs[0], PLAIN) == BLOCKED})

    # -- values and layouts -------------------------------------------------------------------------------
    def set(self, v: Value, expr: relax.Expr, layout: str = PLAIN) -> None:
        self.env[v] = expr
        self.actual[v] = layout

    def get(self, v: Value, layout: str) -> relax.Expr:
        """The expression of `v` in `layout`, converting (once per value and direction) when needed."""
        have = self.actual.get(v, PLAIN)
        if have == layout or len(v.shape) != 4:
            return self.env[v]
        key = (v, layout)
        if key not in self.converted:
            if v in self.graph.params:
                self.converted[key] = relax.const(to_nchwc(np.asarray(self.graph.params[v], np.float32),
                                                           self.block), "float32")
            else:
                kind = "nchw_to_nchwc" if layout == BLOCKED else "nchwc_to_nchw"
                k = layout_kernel(kind, tuple(v.shape), self.block, self.cpu.lanes)  # type: ignore[arg-type]
                self.converted[key] = self.call(k.func, kind, [self.env[v]], k.output.shape, "layout_transform")
                self.stats[kind] += 1
        return self.converted[key]

    def blocked_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        n, c, h, w = shape
        return (n, -(-c // self.block), h, w, self.block)

    def call(self, func: Any, name: str, args: list[relax.Expr], out_shape: tuple[int, ...], op: str,
             ops: list[str] | None = None) -> relax.Var:
        """Add a scheduled PrimFunc to the module and emit its call_tir; `ops`: the qcc ops it computes (the
        `qcc.ops` attribute of the kernel report), default [op]."""
        func = func.without_attr("global_symbol").with_attrs({"op_pattern": 8,  # opaque: never re-fused
                                                              "qcc.ops": list(ops or [op])})
        gv = self.ctx.bb.add_func(func, name)
        var = self.ctx.bb.emit(relax.call_tir(gv, args, relax.TensorType(tuple(int(d) for d in out_shape),
                                                                            "float32")))
        self.ctx.kernel_ops.setdefault(gv.name_hint, op)
        return var

    # -- the node loop ------------------------------------------------------------------------------------
    def lower_node(self, node: Node) -> None:
        """Lower one node in graph order (members of a group wait for the group's last node)."""
        if node in self.inside:
            return
        g = self.by_last.get(node)
        if g is not None:
            try:
                self.lower_group(g)
                return
            except BackendError as e:  # the template declined: generic kernels for every member
                self.stats["declined"] += 1
                if self.tune and not self.quiet:
                    print(f"qcc: {g.anchor.op} {g.anchor.name!r}: generic kernel ({e})", file=sys.stderr)
            if self.fused is not None:  # the anchor's TE and its epilogue as one generic kernel
                self.fused.lower_members(g.members, self._plain, self._put_plain)
                return
            for m in g.members:
                self.generic(m)
            return
        if self.fused is not None and self.fused.owns(node):
            self.fused.lower(node, self._plain, self._put_plain)
            return
        out_layout = self.layouts.get(node.outputs[0], PLAIN) if node.outputs else PLAIN
        if out_layout == BLOCKED and blocked_op(node, [self.actual.get(v, PLAIN) for v in node.inputs] + [BLOCKED],
                                                self.graph):
            self.lower_blocked(node)
        else:
            self.generic(node)

    def _plain(self, v: Value) -> relax.Expr:
        return self.get(v, PLAIN)

    def _put_plain(self, v: Value, expr: relax.Expr) -> None:
        self.set(v, expr, PLAIN)

    def generic(self, node: Node) -> None:
        args = [self.get(v, PLAIN) for v in node.inputs]
        for v, expr in zip(node.outputs, self.lower_generic(node, args)):
            self.set(v, expr, PLAIN)

    def lower_blocked(self, node: Node) -> None:
        """relu / clip / add / max_pool2d / global mean on NCHW[x]c operands."""
        ins = [self.get(v, BLOCKED) for v in node.inputs]
        xs = self.blocked_shape(node.inputs[0].shape)
        ys = self.blocked_shape(node.outputs[0].shape)
        if node.op == "max_pool2d":
            func = nchwc_ops.max_pool(xs, ys, node.attrs, self.cpu.lanes)
        elif node.op == "reduce_mean":
            func = nchwc_ops.global_mean(xs, self.cpu.lanes)
        else:
            func = nchwc_ops.elementwise(node.op, xs, node.attrs, self.cpu.lanes)
        self.set(node.outputs[0], self.call(func, f"{node.op}_nchwc", ins, ys, node.op), BLOCKED)
        self.stats["nchwc_ops"] += 1

    # -- template groups ----------------------------------------------------------------------------------
    def lower_group(self, g: Group) -> None:
        if g.kind == "conv2d":
            self.lower_conv(g)
        elif g.kind == "dense":
            self.lower_dense(g)
        else:
            self.lower_batch_matmul(g)
        self.stats[f"template:{g.kind}"] += 1
        self.stats["fused_steps"] += len(g.steps)

    def params_for(self, kind: str, shapes: list[tuple[int, ...]], attrs: dict[str, Any],
                   fix: Any = None) -> tuple[str, P.Params]:
        """(template kind, parameters): the tuning database's record, else the rule; `fix` adapts parameters
        to the layouts (a conv reading NCHW16c needs a 16-channel input block). With `tune`, unrecorded
        kernels are measured first."""
        from qcc.backends.tvm.kernels.tune import lookup, tune

        fix = fix or (lambda p: p)
        shape = workload(kind, shapes, attrs)
        if kind == "conv2d":
            kind = choose_conv_impl(shape, self.cpu)  # type: ignore[arg-type]
        p = lookup(kind, shape)
        if p is None and self.tune:
            cands = []
            for c in rank_candidates(kind, shape, self.cpu):
                c = fix(c)
                if c not in cands:
                    cands.append(c)
            if not self.quiet:
                print(f"qcc tune: {kind} {shape}: {min(len(cands), 5)} candidates", file=sys.stderr, flush=True)
            p, _ = tune(kind, shapes, attrs=attrs, candidates=cands[:5])
        if p is None or fix(p) != p:
            p = fix(p if p is not None else choose_params(kind, shape, self.cpu))  # cost model, else the rule
        return kind, p

    def lower_conv(self, g: Group) -> None:
        node = g.anchor
        x, w = node.inputs[0], node.inputs[1]
        blockable = conv_blockable(node, self.block)
        data_layout = BLOCKED if blockable and self.actual.get(x) == BLOCKED else PLAIN
        out_layout = self.layouts.get(g.output, PLAIN) if blockable else PLAIN
        attrs = {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups") if k in node.attrs}
        blk = self.block

        def fix(p: P.Params) -> P.Params:
            if isinstance(p, P.ConvParams) and data_layout == BLOCKED and p.ic_bn != blk:
                p = replace(p, ic_bn=blk)
            if isinstance(p, P.ConvParams) and p.oc_bn != blk:
                p = replace(p, oc_bn=blk)
            if isinstance(p, P.DepthwiseParams) and p.c_bn != blk:
                p = replace(p, c_bn=blk)
            return p

        shapes = [x.shape, w.shape]
        kind, p = self.params_for("conv2d", shapes, attrs, fix)
        lay = {BLOCKED: "NCHWc", PLAIN: "NCHW"}
        k = make_kernel(kind, shapes, attrs=attrs, params=p, epilogue=g.steps, data_layout=lay[data_layout],
                        out_layout=lay[out_layout], cpu=self.cpu, use_db=False)
        args = [self.get(x, data_layout), relax.const(k.pack_weight(self.graph.params[w]), "float32")]
        if g.bias is not None:
            args.append(relax.const(k.pack_bias(g.bias), "float32"))
        args += [self.get(r, out_layout) for r in g.residuals]
        self.set(g.output, self.call(k.func, kind, args, k.output.shape, "conv2d",
                                             [m.op for m in g.members]), out_layout)

    def lower_dense(self, g: Group) -> None:
        node = g.anchor
        x, w = node.inputs[0], node.inputs[1]
        w_layout = "KN" if node.op == "matmul" else "NK"
        out_shape = g.output.shape
        k_dim = x.shape[-1]
        m = _prod(x.shape[:-1])
        n = out_shape[-1]
        kind, p = self.params_for("dense", [(m, k_dim), w.shape], {"w_layout": w_layout})
        k = make_kernel("dense", [(m, k_dim), w.shape], attrs={"w_layout": w_layout}, params=p, epilogue=g.steps,
                        cpu=self.cpu, use_db=False)
        args = [self._reshape(self.get(x, PLAIN), x.shape, (m, k_dim)),
                relax.const(k.pack_weight(self.graph.params[w]), "float32")]
        if g.bias is not None:
            args.append(relax.const(k.pack_bias(g.bias), "float32"))
        args += [self._reshape(self.get(r, PLAIN), r.shape, (m, n)) for r in g.residuals]
        y = self.call(k.func, "dense", args, (m, n), node.op, [m_.op for m_ in g.members])
        self.set(g.output, self._reshape(y, (m, n), out_shape), PLAIN)

    def lower_batch_matmul(self, g: Group) -> None:
        node = g.anchor
        a, b = node.inputs
        batch = _prod(a.shape[:-2])
        mm, kk, nn = a.shape[-2], a.shape[-1], b.shape[-1]
        shapes = [(batch, mm, kk), (batch, kk, nn)]
        kind, p = self.params_for("batch_matmul", shapes, {})
        k = make_kernel("batch_matmul", shapes, params=p, epilogue=g.steps, cpu=self.cpu, use_db=False)
        args = [self._reshape(self.get(a, PLAIN), a.shape, shapes[0]),
                self._reshape(self.get(b, PLAIN), b.shape, shapes[1])]
        if g.bias is not None:
            args.append(relax.const(k.pack_bias(g.bias), "float32"))
        args += [self._reshape(self.get(r, PLAIN), r.shape, (batch, mm, nn)) for r in g.residuals]
        y = self.call(k.func, "batch_matmul", args, (batch, mm, nn), "matmul", [m.op for m in g.members])
        self.set(g.output, self._reshape(y, (batch, mm, nn), g.output.shape), PLAIN)

    def _reshape(self, expr: relax.Expr, have: tuple[int, ...], want: tuple[int, ...]) -> relax.Expr:
        """A reshape (a view in the VM: RewriteDataflowReshape), skipped when the shape already fits."""
        if tuple(have) == tuple(want):
            return expr
        return self.ctx.bb.emit(relax.op.reshape(expr, tuple(int(d) for d in want)))
