"""fuse: decide which nodes run as one kernel; the decision is written to `node.meta`, the backend materialises it.

Every node gets `meta["fusion_group"]` (an int, groups numbered in the order their last member stands) and
`meta["fusion_kind"]`, one of

- ``"anchor+epilogue"``: a conv2d / linear / matmul (qconv2d / qlinear / qmatmul after quantization) and the chain
  of elementwise nodes after it (bias, activation, residual add, requantize, qadd);
- ``"reduction"``: one reduction (reduce_*, softmax, log_softmax, layer_norm, qmean) with the elementwise /
  injective trees that feed it and the elementwise nodes that follow it;
- ``"injective"``: a maximal tree of elementwise and injective (reshape, transpose, slice, gather...) nodes;
- ``"single"``: a node that runs alone (opaque ops, or nothing fusible next to it).

A group is an in-tree: every value produced inside it except the last member's output has exactly one user,
which is inside the group, and is no graph output, so fusing never duplicates work, never hides a value that is
needed elsewhere and never creates a cycle between kernels. The group's kernel is emitted where its last member
stands.

Each candidate merge (a producer joining a group, or an epilogue step joining an anchor) consults the cost
model through its `CostModel.predict` interface: the predicted time of the fused kernel against the two kernels
apart. On the CPU the learned model (compile's `cost_model=`, else the shipped one) predicts the groups it covers —
an anchor with the epilogue steps its kernel template folds (bias, activation, residual add, requantize) — and
`qcc.costmodel`'s analytic roofline everything else and everything on CUDA (`AnalyticCostModel`'s clock,
bandwidth and per-launch overhead; the learned model only knows the template kernels, not arbitrary fused
groups; both sides of one comparison always come from the same model): a kernel costs launch overhead +
max(compute, bytes moved / bandwidth), where inlining a producer whose output is smaller than the group's
iteration space recomputes it per element. A merge also has to fit the target's limits: on CUDA the values a
fused kernel keeps per thread block (reduction rows) must fit shared memory and the number of members / kernel
arguments is capped (register pressure); on CPU only the member and materialised-intermediate counts are capped.
The last member of each group carries `meta["fusion"]`: member ops, predicted fused and unfused seconds, which
model predicted them, and the declined merges.

`mode="off"` makes every node a ``"single"`` group (the unfused baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qcc.costmodel import AnalyticCostModel
from qcc.costmodel.features import DTYPE_BITS, node_flops
from qcc.errors import OptionError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.ops import OPS
from qcc.ir.pass_manager import PassContext
from qcc.passes._stats import record_stats

ANCHORS = frozenset({"conv2d", "linear", "matmul", "qconv2d", "qlinear", "qmatmul"})
REDUCTIONS = frozenset({"reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "softmax",
                        "log_softmax", "layer_norm", "qmean"})
INJECTIVE = frozenset({"reshape", "squeeze", "unsqueeze", "transpose", "expand", "slice", "concat", "pad", "tile",
                       "gather", "gather_elements"})
# Elementwise ops beyond the registry's "elementwise" trait (quantization ops act per element too).
EXTRA_ELEMENTWISE = frozenset({"quantize", "dequantize", "requantize", "qadd", "batch_norm", "igelu", "shiftgelu"})
# Rough cost in flops of one element of a transcendental op (the others count one per element).
_TRANSCENDENTAL = {"exp": 10, "log": 10, "erf": 15, "gelu": 20, "tanh": 15, "sigmoid": 12, "silu": 12,
                   "sqrt": 6, "rsqrt": 6, "pow": 20, "div": 4, "softmax": 15, "log_softmax": 15, "layer_norm": 8,
                   "igelu": 6, "shiftgelu": 20, "requantize": 4, "qadd": 5, "sin": 15, "cos": 15, "elu": 12}
KINDS = ("anchor+epilogue", "reduction", "injective", "single")


def op_class(node: Node) -> str:
    """"anchor", "reduction", "elementwise", "injective" or "opaque" (never fused)."""
    if len(node.outputs) != 1:
        return "opaque"
    if node.op in ANCHORS:
        return "anchor"
    if node.op in REDUCTIONS:
        return "reduction"
    if node.op in INJECTIVE:
        return "injective"
    opdef = OPS.get(node.op)
    if node.op in EXTRA_ELEMENTWISE or (opdef is not None and "elementwise" in opdef.traits):
        return "elementwise"
    return "opaque"


def _elems(v: Value) -> int:
    return int(np.prod(v.shape)) if v.shape else 1


def _nbytes(v: Value) -> float:
    return _elems(v) * DTYPE_BITS.get(v.dtype, 32) / 8.0


def _row(node: Node) -> int:
    """Elements one output row of a reduction reads (what a thread block keeps on chip)."""
    x = node.inputs[0]
    axis = node.attrs.get("axis", 0)
    if node.op in ("softmax", "log_softmax") and isinstance(axis, int) and x.shape:
        return int(x.shape[axis])
    if node.op == "layer_norm" and isinstance(axis, int):
        n = 1
        for d in x.shape[axis:]:
            n *= int(d)
        return n
    return max(_elems(x) // max(_elems(node.outputs[0]), 1), 1)


@dataclass
class Limits:
    """What one fused kernel may hold on a device (see the module docstring)."""

    max_members: int
    max_args: int
    max_materialized: int  # intermediates a fused kernel keeps in memory (reduction results)
    block_bytes: float  # bytes one reduction row may keep on chip (CUDA shared memory); inf on CPU

    @staticmethod
    def for_device(device: str) -> Limits:
        if device == "cuda":
            return Limits(max_members=24, max_args=16, max_materialized=2, block_bytes=48 * 1024)
        return Limits(max_members=64, max_args=32, max_materialized=4, block_bytes=float("inf"))


@dataclass
class Candidate:
    """A group under construction: its members in node order and the merges it declined."""

    kind: str
    members: list[Node]
    declined: list[str] = field(default_factory=list)

    @property
    def sink(self) -> Node:
        return self.members[-1]


# IR ops a kernel template folds into its epilogue, as the cost model's epilogue steps (costmodel/features.py).
_EPILOGUE_STEPS = {"relu": "relu", "relu6": "relu6", "gelu": "gelu", "hardswish": "hardswish", "clip": "clip",
                   "add": "add", "requantize": "requantize"}


def learned_model(device: str) -> Any:
    """The `CostModel` fusion asks on `device`: the active one (`qcc.costmodel.using`, i.e. compile's
    `cost_model=`) or the shipped CPU model; None (the analytic roofline) on CUDA, under `using("rule")`, or when
    the active model is the analytic one."""
    if device == "cuda":
        return None
    from qcc.costmodel import active_model

    m = active_model()
    return None if m is None or isinstance(m, AnalyticCostModel) else m


class GroupCost:
    """Predicted seconds of a kernel made of a set of nodes, through the `CostModel.predict` interface: `learned`
    (a CostModel) for a group it covers — an anchor (conv2d / linear / matmul / qconv2d / qlinear) with an
    epilogue of steps its kernel template folds, of a kind the model was trained on — and the analytic roofline
    of qcc.costmodel for everything else."""

    def __init__(self, graph: Graph, model: AnalyticCostModel | None = None, learned: Any = None) -> None:
        m = model or AnalyticCostModel()
        self.clock, self.bandwidth, self.overhead = m.clock_hz, m.bandwidth, m.overhead_s
        self.graph = graph
        self.learned = learned
        self._index: dict[Node, int] | None = None
        meta = getattr(learned, "meta", None)
        self.kinds = set(meta["kinds"]) if isinstance(meta, dict) and meta.get("kinds") else None

    def kernel(self, members: list[Node]) -> dict[str, Any] | None:
        """The cost model's kernel dict of a group the learned model covers, else None."""
        if self.learned is None or members[0].op not in ANCHORS:
            return None
        from qcc.costmodel.describe import describe_node

        k = describe_node(members[0])
        if k is None or (self.kinds is not None and k["kind"] not in self.kinds):
            return None
        for n in members[1:]:
            step = _EPILOGUE_STEPS.get(n.op)
            if step is None or (step == "requantize") != (k["kind"] in ("qconv2d", "qlinear")):
                return None
            if step == "requantize":
                if k["epilogue"]:
                    return None
                k["shape"]["out_dtype"] = n.outputs[0].type.dtype
            k["epilogue"].append([step])
        return k

    def compare(self, group: list[Node], extra: list[Node]) -> tuple[float, float]:
        """(fused, apart) seconds of merging `extra` into `group`: the learned model's where it covers the merged
        kernel and `group` (the extra nodes alone by the roofline), else the roofline for all three, so the two
        sides always come from the same model."""
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.graph.nodes)}
        merged = sorted(group + extra, key=self._index.__getitem__)
        km, kg = self.kernel(merged), self.kernel(group)
        if km is not None and kg is not None:
            fused, alone = (float(x) for x in self.learned.predict([km, kg]))
            return fused, alone + sum(self.roofline([n]) for n in extra)
        return self.roofline(merged), self.roofline(group) + sum(self.roofline([n]) for n in extra)

    def predict(self, members: list[Node]) -> float:
        """Seconds of one kernel of `members`: the learned model's where it covers them, else the roofline."""
        k = self.kernel(members)
        if k is not None:
            return float(self.learned.predict([k])[0])
        return self.roofline(members)

    def roofline(self, members: list[Node]) -> float:
        """The analytic roofline of a kernel of `members` (see the module docstring)."""
        inside = {v for n in members for v in n.outputs}
        sink_out = members[-1].outputs[0]
        space = max((_elems(n.outputs[0]) for n in members), default=1)
        ext: dict[Value, None] = {}
        for n in members:
            for v in n.inputs:
                if v not in inside:
                    ext.setdefault(v, None)
        nbytes = sum(_nbytes(v) for v in ext) + _nbytes(sink_out)
        flops = 0.0
        for n in members:
            per = _TRANSCENDENTAL.get(n.op, 1)
            f = node_flops(n) * (per if n.op not in ANCHORS else 1)
            # An inlined elementwise producer smaller than the kernel's iteration space is recomputed per element.
            if op_class(n) in ("elementwise", "injective") and n is not members[-1] and len(members) > 1:
                f *= max(space / max(_elems(n.outputs[0]), 1), 1.0)
            flops += f
        # Scalar-ish throughput (8 flops/cycle: vectorised elementwise code); compute and memory overlap.
        return self.overhead + max(flops / (8.0 * self.clock), nbytes / self.bandwidth)


@dataclass(frozen=True)
class Fuse:
    """Group nodes into kernels and record the grouping in `node.meta` (see the module docstring)."""

    name: ClassVar[str] = "fuse"
    mode: str = "auto"  # "auto" | "off"
    device: str = ""  # "cpu" | "cuda"; default: the context's target device, else cpu

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if self.mode not in ("auto", "off"):
            raise OptionError(f"fusion must be 'auto' or 'off', got {self.mode!r}")
        device = self.device or str(getattr(ctx.target, "device", "") or "cpu")
        out = graph.copy()
        cands = [] if self.mode == "off" else plan(out, device)
        grouped = {n for c in cands for n in c.members}
        cands += [Candidate("single", [n]) for n in out.nodes if n not in grouped]
        order = {n: i for i, n in enumerate(out.nodes)}
        cands.sort(key=lambda c: order[c.sink])
        cost = GroupCost(out, learned=learned_model(device))
        for gid, c in enumerate(cands):
            c.members.sort(key=lambda n: order[n])
            for n in c.members:
                n.meta["fusion_group"] = gid
                n.meta["fusion_kind"] = c.kind
            fused = cost.predict(c.members)
            apart = sum(cost.predict([n]) for n in c.members)
            c.sink.meta["fusion"] = {"ops": [n.op for n in c.members], "predicted_s": fused,
                                     "unfused_s": apart, "declined": list(c.declined),
                                     "cost_model": "learned" if cost.kernel(c.members) else "analytic"}
        record_stats(ctx, self.name, {"kernels_before": len(out.nodes), "kernels_after": len(cands),
                                      "fused_groups": sum(1 for c in cands if len(c.members) > 1)})
        return out


def plan(graph: Graph, device: str) -> list[Candidate]:
    """The fused groups (two members or more, and nodes alone by a declined merge) of `graph` for `device`;
    nodes left out run alone."""
    users = graph.users()
    outputs = set(graph.outputs)
    limits = Limits.for_device(device)
    cost = GroupCost(graph, learned=learned_model(device))
    taken: set[Node] = set()
    producer = graph.producers()

    def single_use(v: Value) -> bool:
        return v not in outputs and len(users.get(v, [])) == 1

    def fits(members: list[Node]) -> str | None:
        """Why `members` cannot be one kernel on this device, or None."""
        inside = {v for n in members for v in n.outputs}
        args = {v for n in members for v in n.inputs if v not in inside}
        if len(members) > limits.max_members:
            return "too many members"
        if len(args) + 1 > limits.max_args:
            return "too many kernel arguments"
        reductions = [n for n in members if op_class(n) in ("reduction", "anchor")]
        if sum(1 for n in reductions if n is not members[-1]) > limits.max_materialized:
            return "too many materialised intermediates"
        for n in reductions:
            if op_class(n) == "reduction" and _row(n) * 4.0 * 2 > limits.block_bytes:
                return "reduction row exceeds shared memory"
        return None

    def consult(group: list[Node], extra: Node, cand: Candidate) -> bool:
        """Whether adding `extra` to `group` is predicted faster than two kernels and fits the device."""
        merged = sorted(group + [extra], key=lambda n: index[n])
        why = fits(merged)
        if why is None:
            fused, apart = cost.compare(group, [extra])
            why = "predicted slower" if fused > apart else None
        if why is not None:
            cand.declined.append(f"{extra.op} {extra.name!r}: {why}")
            return False
        return True

    index = {n: i for i, n in enumerate(graph.nodes)}
    cands: list[Candidate] = []

    def layout_producers(node: Node) -> list[Node]:
        """The single-use reshape / transpose chains feeding a CPU qmatmul (attention's head split): its kernel
        (backends/tvm/kernels/int8_matmul.py) repacks both operands per batch anyway and reads through them."""
        found: list[Node] = []
        for v in node.inputs:
            p = producer.get(v)
            while p is not None and p.op in ("reshape", "transpose") and p not in taken and single_use(v):
                found.append(p)
                v = p.inputs[0]
                p = producer.get(v)
        return found if fits([*found, node]) is None else []

    def head_merge(v: Value, members: list[Node]) -> list[Node]:
        """transpose (swapping the two axes before the last) + reshape (merging the last two) after a CPU
        qmatmul's epilogue: attention's head merge, which the qmatmul kernel then writes directly."""
        r = len(v.shape)
        if r < 3 or not single_use(v):
            return []
        t = users[v][0]
        if t in taken or t.op != "transpose" or t.attrs["perm"] != (*range(r - 3), r - 2, r - 3, r - 1):
            return []
        tv = t.outputs[0]
        if not single_use(tv):
            return []
        m = users[tv][0]
        merged = (*tv.shape[:-2], tv.shape[-2] * tv.shape[-1])
        if m in taken or m.op != "reshape" or tuple(m.outputs[0].shape) != merged:
            return []
        return [t, m] if fits([*members, t, m]) is None else []

    # 1. Anchors take the elementwise chain after them as their epilogue (a CPU qmatmul also its layout producers
    #    and the head merge after it).
    for node in graph.nodes:
        if op_class(node) != "anchor" or node in taken:
            continue
        c = Candidate("anchor+epilogue", [node])
        if node.op == "qmatmul" and device == "cpu":
            c.members[:0] = sorted(layout_producers(node), key=index.__getitem__)
        v = node.outputs[0]
        while single_use(v):
            nxt = users[v][0]
            if nxt in taken or op_class(nxt) != "elementwise" or nxt.outputs[0].shape != v.shape:
                break
            if not consult(c.members, nxt, c):
                break
            c.members.append(nxt)
            v = nxt.outputs[0]
        if node.op == "qmatmul" and device == "cpu":
            c.members += head_merge(v, c.members)
        taken.update(c.members)
        if len(c.members) > 1 or c.declined:
            c.kind = c.kind if len(c.members) > 1 else "single"
            cands.append(c)

    # 2. From the last node backwards: every fusible node not yet taken is the sink of a tree that absorbs its
    #    single-use elementwise / injective producers (and one reduction, which then keeps a trailing epilogue).
    for node in reversed(graph.nodes):
        cls = op_class(node)
        if node in taken or cls not in ("reduction", "elementwise", "injective"):
            continue
        c = Candidate("reduction" if cls == "reduction" else "injective", [node])
        taken.add(node)
        has_reduction = cls == "reduction"
        stack = [node]
        while stack:
            m = stack.pop()
            for v in m.inputs:
                p = producer.get(v)
                if p is None or p in taken or not single_use(v):
                    continue
                # Keep the integer region's boundaries as kernel boundaries: an input quantize runs alone (fused, TVM
                # inlines it into its consumer's blocks) and float work before it
                # and after an output dequantize stays out of integer kernels (the TIR no-float check allows
                # float only in the quantize / dequantize blocks themselves).
                if m.op == "quantize" or p.op in ("quantize", "dequantize"):
                    continue
                pcls = op_class(p)
                if pcls == "reduction" and (has_reduction or op_class(m) == "injective"):
                    continue
                if pcls not in ("reduction", "elementwise", "injective"):
                    continue
                if not consult(c.members, p, c):
                    continue
                c.members.append(p)
                taken.add(p)
                if pcls == "reduction":
                    has_reduction, c.kind = True, "reduction"
                stack.append(p)
        if len(c.members) > 1:
            cands.append(c)
        elif c.declined:  # a node alone by decision: keep the reasons for the report
            c.kind = "single"
            cands.append(c)
    return cands


def groups_of(graph: Graph) -> list[list[Node]]:
    """The groups recorded by the pass, in order (empty when the graph carries no fusion meta)."""
    by: dict[int, list[Node]] = {}
    for n in graph.nodes:
        gid = n.meta.get("fusion_group")
        if gid is None:
            return []
        by.setdefault(int(gid), []).append(n)
    return [by[k] for k in sorted(by)]


def describe(graph: Graph) -> list[str]:
    """One line per fused group (two members or more), e.g. "reduction[add,layer_norm]"."""
    return [f"{g[0].meta['fusion_kind']}[{','.join(n.op for n in g)}]" for g in groups_of(graph) if len(g) > 1]


def summary(graph: Graph) -> dict[str, Any]:
    """Kernel counts before / after fusion and per group its ops and predicted seconds (for reports)."""
    groups = groups_of(graph)
    rows = []
    for g in groups:
        info = g[-1].meta.get("fusion", {})
        rows.append({"name": g[-1].name or g[-1].op, "kind": g[-1].meta.get("fusion_kind", "single"),
                     "ops": [n.op for n in g], "predicted_s": float(info.get("predicted_s", 0.0)),
                     "unfused_s": float(info.get("unfused_s", 0.0)), "declined": list(info.get("declined", []))})
    return {"kernels_before": len(graph.nodes), "kernels_after": len(groups) if groups else len(graph.nodes),
            "groups": rows}
