"""Tiling of accelerator operators whose operands do not fit the scratchpad together.

A `Unit` is one accelerator operation (a conv or GEMM with its fused requantize, a vector op, a pool); a `Tile` is
one instruction's worth of it: the ISA fields plus, for every operand, the `Region` of the DRAM tensor it covers (a
strided 3-D block, exactly what one DMA instruction moves). Convolutions split by output-channel groups and output
row bands (input bands carry their halos; the band's own top padding becomes the instruction's `pt`); GEMMs by
rows and output features; vector ops by contiguous element ranges; pools by row bands; means by rows.
`plan_tiles` picks the fewest tiles whose largest footprint fits, or raises `ScratchpadError` naming the op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from qcc.backends.accel.isa import ITEMSIZE, packed_bytes
from qcc.errors import ScratchpadError


@dataclass(frozen=True)
class Region:
    """Bytes of DRAM tensor `tensor`: n2 x n1 rows of n0 contiguous bytes from `offset`, strides s2, s1."""

    tensor: str
    offset: int
    n2: int
    n1: int
    n0: int
    s2: int
    s1: int

    @property
    def nbytes(self) -> int:
        return self.n2 * self.n1 * self.n0

    @staticmethod
    def flat(tensor: str, offset: int, nbytes: int) -> Region:
        return Region(tensor, offset, 1, 1, nbytes, 0, 0)


@dataclass
class Unit:
    """One accelerator operation: ISA opcode `op`, operand tensors by ISA field, output tensor `out` (field y),
    fixed ISA fields `f`, and the shapes/dtypes of every tensor it touches."""

    op: str
    name: str
    ins: dict[str, str]
    out: str
    f: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    tables: tuple[str, ...] = ()   # fields holding per-channel tables sliced with the output channels
    meta: dict[str, int] = field(default_factory=dict)

    def size(self, t: str) -> int:
        return packed_bytes(self.shapes[t], self.dtypes[t])

    def row_bytes(self, t: str) -> int:
        """Bytes of one leading-axis row of `t` (an output channel of a weight; packed weights round up)."""
        return packed_bytes((1,) + tuple(self.shapes[t][1:]), self.dtypes[t])

    def es(self, field_name: str) -> int:
        t = self.out if field_name == "y" else self.ins[field_name]
        return ITEMSIZE[self.dtypes[t]]


@dataclass(frozen=True)
class Tile:
    """One instruction: its non-address fields and the region each address field covers."""

    fields: dict[str, int]
    regions: dict[str, Region]


def _ranges(total: int, parts: int, gran: int = 1, sample: bool = False) -> list[tuple[int, int]]:
    """[start, end) of `parts` near-equal chunks (multiples of `gran`). `sample` keeps only the first, second and
    last chunk: between them they hold the largest tile (full chunk, full halo, the tail), so a footprint search
    need not build every tile."""
    units = -(-total // gran)
    chunk = -(-units // parts) * gran
    starts = list(range(0, total, chunk))
    if sample and len(starts) > 3:
        starts = [starts[0], starts[1], starts[-1]]
    return [(s, min(s + chunk, total)) for s in starts]


def _band(r0: int, r1: int, out: int, size: int, k: int, s: int, d: int, pad: int) -> tuple[int, int, int]:
    """Input rows [a, b) that output rows [r0, r1) of `out` read, and the tile-local leading padding. The last band
    runs to the end of the input (rows no window reads are harmless), so an untiled op covers the whole tensor."""
    lo = r0 * s - pad
    hi = (r1 - 1) * s - pad + (k - 1) * d + 1
    a, b = max(lo, 0), (size if r1 == out else min(hi, size))
    return a, max(b, a), a - lo


def _table_regions(u: Unit, o0: int, o1: int, full: int) -> dict[str, Region]:
    out = {}
    for fld in u.tables:
        t = u.ins[fld]
        n = u.size(t) // 4
        out[fld] = Region.flat(t, 0, 4 * n) if n != full else Region.flat(t, 4 * o0, 4 * (o1 - o0))
    return out


def conv_tiles(u: Unit, n_oc: int, n_rows: int, sample: bool = False) -> list[Tile]:
    n, c, h, wd = u.shapes[u.ins["x"]]
    o, cg, kh, kw = u.shapes[u.ins["w"]]
    _, _, oh, ow = u.shapes[u.out]
    g = u.f["groups"]
    og = o // g
    xe, ye = u.es("x"), u.es("y")
    tiles = []
    for o0, o1 in _ranges(o, n_oc, og if g > 1 else 1, sample):
        c0, c1 = (o0 // og * cg, o1 // og * cg) if g > 1 else (0, c)
        for (b0, b1), (r0, r1) in _batch_bands(n, oh, n_rows, sample):
            a, b, pt = _band(r0, r1, oh, h, kh, u.f["sh"], u.f["dh"], u.meta["pt"])
            f = {**u.f, "n": b1 - b0, "c": c1 - c0, "h": b - a, "wd": wd, "o": o1 - o0, "oh": r1 - r0, "ow": ow,
                 "pt": pt, "groups": (o1 - o0) // og if g > 1 else 1}
            if u.tables:
                f["mlen"] = (o1 - o0) if u.f["mlen"] == o else 1
            regions = {
                "x": Region(u.ins["x"], ((b0 * c + c0) * h + a) * wd * xe, b1 - b0, c1 - c0, (b - a) * wd * xe,
                            c * h * wd * xe, h * wd * xe),
                "w": Region.flat(u.ins["w"], o0 * u.row_bytes(u.ins["w"]), (o1 - o0) * u.row_bytes(u.ins["w"])),
                "y": Region(u.out, ((b0 * o + o0) * oh + r0) * ow * ye, b1 - b0, o1 - o0, (r1 - r0) * ow * ye,
                            o * oh * ow * ye, oh * ow * ye),
                **_table_regions(u, o0, o1, o),
            }
            if "bias" in u.ins:
                regions["bias"] = Region.flat(u.ins["bias"], 4 * o0, 4 * (o1 - o0))
            tiles.append(Tile(f, regions))
    return tiles


def _band_pairs(n: int, oh: int) -> list[tuple[int, int]]:
    """(batch parts, row parts) choices, largest tiles first (ties: fewer tiles)."""
    pairs = {(kb, kr) for kb in _counts(n) for kr in _counts(oh)}
    return sorted(pairs, key=lambda p: (-(-(-n // p[0]) * -(-oh // p[1])), p[0] * p[1]))


def _batch_bands(n: int, oh: int, index: int, sample: bool = False) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(batch range, output row range) of each tile for choice `index` (1-based) of `_band_pairs`."""
    pairs = _band_pairs(n, oh)
    kb, kr = pairs[min(max(index, 1), len(pairs)) - 1]
    return [(bb, rr) for bb in _ranges(n, kb, 1, sample) for rr in _ranges(oh, kr, 1, sample)]


def _band_counts(n: int, oh: int) -> list[int]:
    """The valid choice indices of `_batch_bands`."""
    return list(range(1, len(_band_pairs(n, oh)) + 1))


def gemm_tiles(u: Unit, n_m: int, n_n: int, sample: bool = False) -> list[Tile]:
    m, k, nn = u.meta["m"], u.meta["k"], u.meta["n"]
    xe, ye = u.es("x"), u.es("y")
    tiles = []
    for n0, n1 in _ranges(nn, n_n, 1, sample):
        for m0, m1 in _ranges(m, n_m, 1, sample):
            f = {**u.f, "m": m1 - m0, "k": k, "n": n1 - n0}
            if u.tables:
                f["mlen"] = (n1 - n0) if u.f["mlen"] == nn else 1
            regions = {"x": Region.flat(u.ins["x"], m0 * k * xe, (m1 - m0) * k * xe),
                       "w": Region.flat(u.ins["w"], n0 * u.row_bytes(u.ins["w"]), (n1 - n0) * u.row_bytes(u.ins["w"])),
                       "y": Region(u.out, (m0 * nn + n0) * ye, 1, m1 - m0, (n1 - n0) * ye, 0, nn * ye),
                       **_table_regions(u, n0, n1, nn)}
            if "bias" in u.ins:
                regions["bias"] = Region.flat(u.ins["bias"], 4 * n0, 4 * (n1 - n0))
            tiles.append(Tile(f, regions))
    return tiles


def flat_tiles(u: Unit, chunk: int, sample: bool = False) -> list[Tile]:
    """Element ranges of an elementwise op (req, qadd, clip); tables stay whole (`base` indexes them)."""
    total = u.f["count"]
    tiles = []
    for e0, e1 in _ranges(total, -(-total // chunk), 1, sample):
        f = {**u.f, "count": e1 - e0}
        if "base" in f:
            f["base"] = e0
        regions = {fld: (Region.flat(t, 0, u.size(t)) if fld in u.tables
                         else Region.flat(t, e0 * u.es(fld), (e1 - e0) * u.es(fld))) for fld, t in u.ins.items()}
        regions["y"] = Region.flat(u.out, e0 * u.es("y"), (e1 - e0) * u.es("y"))
        tiles.append(Tile(f, regions))
    return tiles


def pool_tiles(u: Unit, n_rows: int, sample: bool = False) -> list[Tile]:
    p, h, wd, oh, ow = (u.f[k] for k in ("planes", "h", "wd", "oh", "ow"))
    e = u.es("x")
    tiles = []
    for (p0, p1), (r0, r1) in _batch_bands(p, oh, n_rows, sample):
        a, b, pt = _band(r0, r1, oh, h, u.f["kh"], u.f["sh"], u.f["dh"], u.meta["pt"])
        f = {**u.f, "planes": p1 - p0, "h": b - a, "oh": r1 - r0, "pt": pt}
        tiles.append(Tile(f, {"x": Region(u.ins["x"], (p0 * h + a) * wd * e, 1, p1 - p0, (b - a) * wd * e, 0,
                                          h * wd * e),
                              "y": Region(u.out, (p0 * oh + r0) * ow * e, 1, p1 - p0, (r1 - r0) * ow * e, 0,
                                          oh * ow * e)}))
    return tiles


def mean_tiles(u: Unit, n_rows: int, sample: bool = False) -> list[Tile]:
    inner, e = u.f["inner"], u.es("x")
    return [Tile({**u.f, "outer": r1 - r0}, {"x": Region.flat(u.ins["x"], r0 * inner * e, (r1 - r0) * inner * e),
                                             "y": Region.flat(u.out, r0 * e, (r1 - r0) * e)})
            for r0, r1 in _ranges(u.f["outer"], n_rows, 1, sample)]


# Row-wise operations: the ISA field counting their rows. Every operand not in `Unit.tables` splits evenly by rows.
ROW_FIELDS = {"bmm": "batch", "gemmg": "m", "rmean": "outer", "isoftmax": "rows", "shiftmax": "rows",
              "lnorm": "rows", "qcat": "outer", "avgpool": "planes"}


def row_field(u: Unit) -> str | None:
    """The field counting `u`'s rows (for a permute, the input axis that becomes the output's leading one)."""
    if u.op == "permute":
        return f"d{u.meta['lead']}" if u.meta.get("lead", -1) >= 0 else None
    return ROW_FIELDS.get(u.op)


def row_tiles(u: Unit, parts: int, sample: bool = False) -> list[Tile]:
    """`parts` bands of whole rows (a softmax or LayerNorm row never splits); tables stay whole. A permute's
    output rows are one index range of the input axis that becomes leading (a strided input slab)."""
    fld = row_field(u)
    rows = u.f[fld] if fld else 1
    tiles = []
    for r0, r1 in _ranges(rows, parts if fld else 1, 1, sample):
        f = dict(u.f)
        if fld:
            f[fld] = r1 - r0
        regions = {}
        for name, t in list(u.ins.items()) + [("y", u.out)]:
            per = u.size(t) // rows
            regions[name] = (Region.flat(t, 0, u.size(t)) if name in u.tables
                             else Region.flat(t, r0 * per, (r1 - r0) * per))
        if u.op == "permute" and fld:  # rows of the output are a strided slab of the input along axis `lead`
            a = u.meta["lead"]
            dims = [u.f[f"d{i}"] for i in range(6)]
            pre, post = math.prod(dims[:a]), math.prod(dims[a + 1:]) * u.es("x")
            regions["x"] = Region(u.ins["x"], r0 * post, 1, pre, (r1 - r0) * post, 0, dims[a] * post)
        tiles.append(Tile(f, regions))
    return tiles


def footprint(tiles: list[Tile], align: int) -> int:
    """Aligned bytes of the largest tile (every region resident at once)."""
    return max(sum(-(-r.nbytes // align) * align for r in t.regions.values()) for t in tiles)


def _counts(total: int, gran: int = 1) -> list[int]:
    """Distinct useful split counts of `total` items in groups of `gran`: 1, 2, ... (each a different chunk)."""
    units = -(-total // gran)
    seen, out = set(), []
    for parts in range(1, units + 1):
        chunk = -(-units // parts)
        if chunk not in seen:
            seen.add(chunk)
            out.append(-(-units // chunk))
    return out


def _fewest(make: Callable[[int, int, bool], list[Tile]], a_counts: list[int], b_counts: list[int], budget: int,
            align: int) -> list[Tile] | None:
    """The tiling with the fewest tiles whose largest tile fits `budget`: for each split count along the first
    axis, a binary search along the second, probing sampled tilings (`make(a, b, True)`)."""
    best: list[Tile] | None = None
    for a in a_counts:
        lo, hi = 0, len(b_counts) - 1
        if footprint(make(a, b_counts[hi], True), align) > budget:
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if footprint(make(a, b_counts[mid], True), align) <= budget:
                hi = mid
            else:
                lo = mid + 1
        tiles = make(a, b_counts[lo], False)
        if (best is None or len(tiles) < len(best)) and footprint(tiles, align) <= budget:
            best = tiles
        if len(best or ()) == 2:  # nothing but the untiled op (checked before) has fewer
            break
    return best


def make_tiles(u: Unit, splits: tuple[int, int], sample: bool = False) -> list[Tile]:
    """The tiles of `u` for split counts `splits` (meaning per op; (1, 1) is the untiled op)."""
    a, b = splits
    if u.op == "conv":
        return conv_tiles(u, a, b, sample)
    if u.op == "gemm":
        return gemm_tiles(u, a, b, sample)
    if u.op == "maxpool":
        return pool_tiles(u, b, sample)
    if u.op == "mean":
        return mean_tiles(u, b, sample)
    if u.op in ROW_FIELDS or u.op == "permute":
        return row_tiles(u, b, sample)
    return flat_tiles(u, -(-u.f["count"] // b), sample)


def plan_tiles(u: Unit, budget: int, align: int) -> list[Tile]:
    """The fewest tiles of `u` whose every tile needs at most `budget` aligned scratchpad bytes."""
    whole = make_tiles(u, (1, 1))
    if footprint(whole, align) <= budget:
        return whole
    if u.op == "conv":
        o, oh = u.shapes[u.ins["w"]][0], u.shapes[u.out][2]
        og = o // u.f["groups"] if u.f["groups"] > 1 else 1
        found = _fewest(lambda a, b, s: conv_tiles(u, a, b, s), _counts(o, og),
                        _band_counts(u.shapes[u.out][0], oh), budget, align)
    elif u.op == "gemm":
        found = _fewest(lambda a, b, s: gemm_tiles(u, b, a, s), _counts(u.meta["n"]), _counts(u.meta["m"]), budget,
                        align)
    elif u.op in ROW_FIELDS or u.op == "permute":
        fld = row_field(u)
        found = _fewest(lambda a, b, s: row_tiles(u, b, s), [1], _counts(u.f[fld] if fld else 1), budget, align)
    else:
        counts = (_band_counts(u.f["planes"], u.f["oh"]) if u.op == "maxpool"
                  else _counts(u.f["outer"] if u.op == "mean" else u.f["count"]))
        found = _fewest(lambda a, b, s: make_tiles(u, (1, b), s), [1], counts, budget, align)
    if found is None:
        smallest = footprint(make_tiles(u, (10**9, 10**9) if u.op in ("conv", "gemm") else (1, 10**9), True), align)
        what = " (one whole row: a row never splits)" if u.op in ("isoftmax", "shiftmax", "lnorm") else ""
        raise ScratchpadError(f"{u.op} {u.name!r}: even its smallest tile{what} needs {smallest} bytes of scratchpad "
                              f"but only {budget} are available; enlarge the scratchpad (scratchpad_kb)")
    return found
