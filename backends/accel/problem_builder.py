"""From an integer IR graph to a scratchpad scheduling `Problem` plus the DRAM map the emitter needs.

`qcc.backends.accel.lowering` turns the graph into units (the host keeps the float boundary ops; conv/linear fuse
with their requantize). Each unit becomes one task, or several when its operands do not fit the scratchpad together
(`qcc.backends.accel.tiling`). A tensor touched by a tiled operation is *DRAM-resident*: every task touching it
gets a private scratchpad buffer that the emitter fills from DRAM before the instruction (or flushes to DRAM after
it), and 1-byte token buffers order its producers before its consumers. All other tensors are ordinary scheduler
buffers (inputs, weights, activations, outputs) that the scheduler keeps, spills and reloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcc.backends.accel.isa import NUMPY
from qcc.backends.accel.lowering import IOSpec, Lowering, nbytes
from qcc.backends.accel.problem import Buffer, Problem, Task, align_up
from qcc.backends.accel.tiling import Region, Tile, footprint, make_tiles, plan_tiles
from qcc.errors import BackendError
from qcc.ir.graph import Graph


@dataclass(frozen=True)
class Work:
    """A task's payload: one instruction. `operands` maps address fields to buffers; `fills`/`flushes` are private
    buffers the emitter loads from / stores to DRAM around it."""

    op: str
    node: str
    fields: tuple[tuple[str, int], ...]
    operands: tuple[tuple[str, str], ...]
    fills: tuple[tuple[str, Region], ...] = ()
    flushes: tuple[tuple[str, Region], ...] = ()


@dataclass
class AccelPlan:
    """The scheduling problem plus everything the emitter and the runtime need to lay out DRAM."""

    problem: Problem
    tensors: dict[str, tuple[int, int]]           # DRAM tensor -> (address, bytes)
    homes: dict[str, Region]                      # scheduler buffer -> its DRAM region
    weights: bytes                                # DRAM image prefix: the parameters
    dram_size: int
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    tiles: dict[str, int] = field(default_factory=dict)   # operation -> tiles (only those split)


def build_problem(graph: Graph, capacity: int, alignment: int = 64) -> AccelPlan:
    """Lower an integer graph to tasks over scratchpad buffers (tiling what does not fit) and a DRAM map.

    Raises `UnsupportedOperatorError` for an op the ISA lacks and `ScratchpadError` for an op whose smallest tile
    cannot fit the scratchpad (both before anything is emitted)."""
    b = Lowering(graph)
    b.walk()
    usable = capacity // alignment * alignment
    reserve = 4 * alignment  # token buffers a task may hold besides its operands
    # Tile what does not fit (keeping room for the token buffers).
    plans: dict[int, list[Tile]] = {}
    for i, u in enumerate(b.units):
        whole = make_tiles(u, (1, 1))
        plans[i] = whole if footprint(whole, alignment) + reserve <= usable else \
            plan_tiles(u, usable - reserve, alignment)
    # A tensor some tile covers only in part lives in DRAM; one every tile reads whole stays a scheduler buffer.
    in_dram = {r.tensor for tiles in plans.values() for tile in tiles for r in tile.regions.values()
               if b.kinds[r.tensor] != "weight" and r.nbytes != nbytes(b, r.tensor)}

    buffers: dict[str, Buffer] = {}
    homes: dict[str, Region] = {}

    def whole_buffer(t: str) -> str:
        if t not in buffers:
            size = nbytes(b, t)
            buffers[t] = Buffer(t, size, b.kinds[t])
            homes[t] = Region.flat(t, 0, size)
        return t

    tokens: dict[str, str] = {}  # DRAM tensor -> its latest token buffer
    tasks: list[Task] = []
    tiles_count: dict[str, int] = {}
    used: set[str] = set()
    for i, u in enumerate(b.units):
        tiles = plans[i]
        base, n = u.name or u.op, 1
        while u.name in used:  # node names need not be unique; task names must be
            n += 1
            u.name = f"{base}~{n}"
        used.add(u.name)
        if len(tiles) > 1:
            tiles_count[u.name] = len(tiles)
        for k, tile in enumerate(tiles):
            tname = u.name if len(tiles) == 1 else f"{u.name}#{k}"
            reads: list[str] = []
            writes: list[str] = []
            operands, fills, flushes = [], [], []
            for fld, reg in tile.regions.items():
                t = reg.tensor
                full = reg.nbytes == nbytes(b, t)
                if b.kinds[t] == "weight":
                    if full:
                        buf = whole_buffer(t)
                    else:
                        buf = f"{t}[{reg.offset}:{reg.offset + reg.nbytes}]"
                        buffers.setdefault(buf, Buffer(buf, reg.nbytes, "weight"))
                        homes[buf] = reg
                    reads.append(buf)
                elif t in in_dram:
                    buf = f"{tname}.{fld}"
                    buffers[buf] = Buffer(buf, reg.nbytes, "activation")
                    writes.append(buf)
                    (flushes if fld == "y" else fills).append((buf, reg))
                    if fld != "y" and t in tokens:
                        reads.append(tokens[t])
                else:
                    if not full:
                        raise BackendError(f"internal: {u.name!r} field {fld} covers part of {t!r}, which is not "
                                           "DRAM-resident")
                    buf = whole_buffer(t)
                    (writes if fld == "y" else reads).append(buf)
                operands.append((fld, buf))
            if u.out in in_dram:
                if u.out in tokens:
                    reads.append(tokens[u.out])
                tok = f"{u.out}.ready#{k}"
                buffers[tok] = Buffer(tok, 1, "activation")
                writes.append(tok)
                tokens[u.out] = tok
            work = Work(u.op, u.name, tuple(sorted(tile.fields.items())), tuple(operands), tuple(fills),
                        tuple(flushes))
            tasks.append(Task(tname, tuple(dict.fromkeys(reads)), tuple(dict.fromkeys(writes)), work))
    problem = Problem(buffers, tasks, capacity, alignment)
    problem.validate()
    # DRAM layout: parameters (the weights image), then every other tensor, then token/private homes.
    tensors: dict[str, tuple[int, int]] = {}
    image = bytearray()
    for name, arr in b.params.items():
        addr = align_up(len(image), alignment)
        image += bytes(addr - len(image))
        image += np.ascontiguousarray(arr.astype(NUMPY[b.dtypes[name]])).tobytes()
        tensors[name] = (addr, len(image) - addr)
    top = align_up(len(image), alignment)
    for t in b.shapes:
        if t in tensors or b.kinds.get(t) is None or t in b.params:
            continue
        tensors[t] = (top, nbytes(b, t))
        top = align_up(top + nbytes(b, t), alignment)
    for name, buf in buffers.items():
        if name not in homes:  # private and token buffers: a scratch home of their own
            tensors[name] = (top, buf.size)
            homes[name] = Region.flat(name, 0, buf.size)
            top = align_up(top + buf.size, alignment)
    return AccelPlan(problem, tensors, homes, bytes(image), max(top, alignment), b.inputs, b.outputs, tiles_count)
