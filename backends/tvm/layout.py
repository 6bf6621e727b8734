"""The layout pass of the CPU backend: which activations live in the packed NCHW[x]c layout.

The conv templates read and write NCHW[x]c (x = the vector width, 16 with AVX-512): channel c of an
[N, C, H, W] tensor at [n, c // x, h, w, c % x], the channels past C zero. Converting costs a pass over
memory, so the pass keeps whole chains of convolutions — and the cheap ops between them — in NCHW[x]c:

1. Forward, in node order, a value is BLOCKED when
   - it is the output of a conv2d group (epilogue_groups) whose template runs on blocks of x channels
     (groups = 1, depthwise, or grouped with C/groups and O/groups multiples of x), or
   - it is the output of a layout-agnostic op with a BLOCKED input: relu, relu6, clip, hardswish; add / mul
     of two same-shaped 4-D tensors; max_pool2d (floor mode); reduce_mean over (2, 3) with keepdims (the
     global average pool; its [N, C, 1, 1] result is the cheapest place to leave the layout).
   Everything else is PLAIN (NCHW / the IR's own layout).
2. Backward, a conv group's BLOCKED output whose users all need PLAIN (and graph outputs) is switched to
   PLAIN: the kernel writes NCHW directly and no transform is needed.

Conversions then happen only where a BLOCKED value meets a PLAIN consumer (one `nchwc_to_nchw` kernel per
value, shared by its users) or a PLAIN value meets a BLOCKED consumer (a residual or elementwise operand).
A conv reading a PLAIN input packs it inside its own padding copy, so the network input needs no separate
transform kernel: ResNet's stem conv reads NCHW and writes NCHW16c, and the only transform left is the
NCHW16c -> NCHW of the pooled [1, 512, 1, 1] features before the classifier.
"""

from __future__ import annotations

from qcc.backends.tvm.epilogue_groups import Group
from qcc.ir.graph import Graph, Node, Value

PLAIN = "NCHW"
BLOCKED = "NCHWc"

BLOCKED_UNARY = ("relu", "relu6", "clip", "hardswish")
BLOCKED_BINARY = ("add", "mul")


def conv_blockable(node: Node, block: int) -> bool:
    """Whether the conv templates run this conv2d on `block`-channel blocks (input and output)."""
    if node.op != "conv2d" or node.inputs[0].dtype != "f32":
        return False
    x, w = node.inputs[0].shape, node.inputs[1].shape
    groups = int(node.attrs.get("groups", 1))
    if groups == 1 or (groups == x[1] and groups == w[0]):
        return True
    return (x[1] // groups) % block == 0 and (w[0] // groups) % block == 0


def blocked_op(node: Node, in_layouts: list[str], graph: Graph) -> bool:
    """Whether a non-anchor node can run on NCHW[x]c inputs (and then does, when one input is BLOCKED)."""
    if BLOCKED not in in_layouts or len(node.outputs) != 1 or node.outputs[0].dtype != "f32":
        return False
    x = node.inputs[0]
    if len(x.shape) != 4 or x.dtype != "f32":
        return False
    if node.op in BLOCKED_UNARY:
        return node.op != "clip" or node.attrs.get("min") is not None or node.attrs.get("max") is not None
    if node.op in BLOCKED_BINARY:
        return len(node.inputs) == 2 and node.inputs[1].shape == x.shape and node.inputs[1].dtype == "f32"
    if node.op == "max_pool2d":
        return not node.attrs.get("ceil_mode", False) and in_layouts[0] == BLOCKED
    if node.op == "reduce_mean":
        return (tuple(sorted(node.attrs.get("axes", ()))) == (2, 3) and bool(node.attrs.get("keepdims"))
                and in_layouts[0] == BLOCKED)
    return False


def assign_layouts(graph: Graph, groups: list[Group], block: int) -> dict[Value, str]:
    """The layout (BLOCKED or PLAIN) of every value the lowering materialises (see the module docstring).

    Values inside an epilogue group (between its anchor and its output) are not materialised and get none."""
    by_last = {g.last: g for g in groups}
    inside = {m for g in groups for m in g.members[:-1]}
    layouts: dict[Value, str] = {v: PLAIN for v in graph.inputs}
    layouts.update({v: PLAIN for v in graph.params})
    for node in graph.nodes:
        if node in inside:
            continue
        g = by_last.get(node)
        if g is not None:
            blocked = g.kind == "conv2d" and conv_blockable(g.anchor, block)
            layouts[g.output] = BLOCKED if blocked else PLAIN
            continue
        ins = [layouts.get(v, PLAIN) for v in node.inputs]
        lay = BLOCKED if blocked_op(node, ins, graph) else PLAIN
        for v in node.outputs:
            layouts[v] = lay
    # Backward: a conv writes NCHW itself when no consumer takes NCHW[x]c.
    users = graph.users()
    outputs = set(graph.outputs)
    for g in groups:
        v = g.output
        if layouts.get(v) != BLOCKED:
            continue
        if v in outputs and not users.get(v):
            layouts[v] = PLAIN
            continue
        if v not in outputs and not any(accepts_blocked(u, v, layouts, by_last, inside, block)
                                        for u in users.get(v, [])):
            layouts[v] = PLAIN
    return layouts


def accepts_blocked(user: Node, v: Value, layouts: dict[Value, str], by_group_last: dict[Node, Group],
                    inside: set[Node], block: int) -> bool:
    """Whether `user` reads `v` in NCHW[x]c without a transform."""
    group = None
    for g in by_group_last.values():
        if user in g.members:
            group = g
            break
    if group is not None:
        if user is group.anchor and user.inputs[0] is v:
            return group.kind == "conv2d" and conv_blockable(user, block)  # the templates read either layout
        return v in group.residuals and layouts.get(group.output) == BLOCKED
    return any(layouts.get(o) == BLOCKED for o in user.outputs)
