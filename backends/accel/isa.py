"""The accelerator ISA: instruction formats, operand dtypes and the fixed-width binary encoding.

Every instruction is an opcode plus a fixed list of signed integer fields (addresses, shapes, strides, quantization
constants). Scratchpad addresses are byte offsets into the scratchpad; DRAM addresses are byte offsets into the
DRAM image. The semantics of each instruction are in docs/accel-isa.md and implemented by
`qcc.backends.accel.simulator`.

Binary encoding (little-endian): one byte opcode, then each field as a signed 64-bit integer. The field count is
fixed per opcode, so a program is a plain concatenation of records and decodes without lengths.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from qcc.errors import LibraryLoadError

# Element types the scratchpad holds. Activations of 4 bits live in one byte each; 4-bit *weights* of CONV/GEMM
# are packed two per byte ("i4x2"/"u4x2", see `packed_bytes`) and unpacked by the MAC array.
DTYPES: dict[str, int] = {"i8": 1, "u8": 2, "i4": 3, "u4": 4, "i16": 5, "i32": 6, "i4x2": 7, "u4x2": 8}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {"i8": 1, "u8": 1, "i4": 1, "u4": 1, "i16": 2, "i32": 4, "i4x2": 1, "u4x2": 1}
NUMPY = {"i8": "<i1", "u8": "<u1", "i4": "<i1", "u4": "<u1", "i16": "<i2", "i32": "<i4", "i4x2": "<u1",
         "u4x2": "<u1"}
RANGES = {"i4": (-8, 7), "u4": (0, 15), "i8": (-128, 127), "u8": (0, 255), "i16": (-(2**15), 2**15 - 1),
          "i32": (-(2**31), 2**31 - 1), "i4x2": (-8, 7), "u4x2": (0, 15)}
PACKED = {"i4x2": "i4", "u4x2": "u4"}  # packed weight dtype -> element dtype


def packed_bytes(shape: tuple[int, ...], dt: str) -> int:
    """Bytes of a tensor: packed weights hold each leading-axis row (an output channel) in ceil(K / 2) bytes, the
    even element in the low nibble; every other dtype is dense at `ITEMSIZE` bytes per element."""
    n = 1
    for d in shape[1:]:
        n *= d
    if dt in PACKED:
        return (shape[0] if shape else 1) * -(-n // 2)
    return (shape[0] if shape else 1) * n * ITEMSIZE[dt]


def pack_int4(arr: np.ndarray) -> np.ndarray:
    """Pack values in [-8, 15] two per byte along each leading-axis row (low nibble first): u8 [rows, ceil(K/2)]."""
    import numpy as np

    rows = arr.reshape(arr.shape[0], -1).astype(np.int64) & 0xF
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), np.int64)], axis=1)
    return (rows[:, 0::2] | (rows[:, 1::2] << 4)).astype(np.uint8)

# The requantizing output stage shared by CONV, GEMM and REQ: `mul`/`shf` are scratchpad addresses of i32
# multiplier and shift tables of `mlen` entries (1 = per tensor), `izp` the accumulator zero point subtracted first,
# `yzp` the output zero point, [lo, hi] the saturation range. CONV/GEMM with mul = -1 write the raw i32 accumulator.
EPILOGUE = ("mul", "shf", "mlen", "ydt", "yzp", "izp", "lo", "hi")

# name -> (opcode, fields). Fields ending in "dt" hold a DTYPES code (printed by name in assembly).
OPCODES: dict[str, tuple[int, tuple[str, ...]]] = {
    # DMA: n2 x n1 blocks of n0 contiguous bytes; DRAM side strided (s2, s1 bytes), scratchpad side dense.
    "load": (0x01, ("dram", "spm", "n2", "n1", "n0", "s2", "s1")),
    "store": (0x02, ("dram", "spm", "n2", "n1", "n0", "s2", "s1")),
    # Integer conv2d (NCHW x, OIHW w, optional i32 bias (-1 = none)), int32 accumulation; input cells outside
    # [0, h) x [0, wd) read as the real value 0 (x zero point), so pt/pl and the output size give the padding.
    "conv": (0x10, ("x", "w", "bias", "y", "n", "c", "h", "wd", "o", "kh", "kw", "oh", "ow", "sh", "sw", "pt", "pl",
                    "dh", "dw", "groups", "xzp", "wzp", "xdt", "wdt") + EPILOGUE),
    # Integer GEMM y[m, n] = sum_k (x[m, k] - xzp)(w[n, k] - wzp) + bias[n].
    "gemm": (0x11, ("x", "w", "bias", "y", "m", "k", "n", "xzp", "wzp", "xdt", "wdt") + EPILOGUE),
    # Vector requantize of `count` elements; element i uses table entry ((base + i) // inner) % mlen.
    "req": (0x20, ("x", "y", "count", "xdt", "inner", "base") + EPILOGUE),
    # Rescaling add: ((a - azp) am + (b - bzp) bm) rounded-shifted by `shift`, + yzp, saturated to [lo, hi].
    "qadd": (0x21, ("a", "b", "y", "count", "adt", "bdt", "ydt", "am", "bm", "shift", "azp", "bzp", "yzp", "lo",
                    "hi")),
    "clip": (0x22, ("x", "y", "count", "dt", "lo", "hi")),
    # Max pool over `planes` HxW planes; cells outside the plane never win.
    "maxpool": (0x23, ("x", "y", "planes", "h", "wd", "oh", "ow", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw",
                       "dt")),
    # Integer mean of `outer` rows of `inner` elements: (sum + inner // 2) // inner.
    "mean": (0x24, ("x", "y", "outer", "inner", "dt")),
    "copy": (0x25, ("x", "y", "nbytes")),
    # -- the transformer / integer-nonlinear extension (docs/accel-isa.md, "Vector extension") --
    # Batched GEMM of two activations: y[b, m, n] = sum_k (x[b, m, k] - xzp)(w[b, k, n] - wzp) (qmatmul).
    "bmm": (0x12, ("x", "w", "y", "batch", "m", "k", "n", "xzp", "wzp", "xdt", "wdt") + EPILOGUE),
    # Per-vector (group) GEMM: acc = bias[n] + sum_g gsc[n, g] * sum_{k in group g} (x - xzp)(w - wzp).
    "gemmg": (0x13, ("x", "w", "bias", "gsc", "y", "m", "k", "n", "gs", "xzp", "wzp", "xdt", "wdt") + EPILOGUE),
    # Broadcasting rescaling add: b element of a's element i is ((base + i) // binner) % bcount.
    "qaddb": (0x26, ("a", "b", "y", "count", "base", "binner", "bcount", "adt", "bdt", "ydt", "am", "bm", "shift",
                     "azp", "bzp", "yzp", "lo", "hi")),
    # Permute (transpose) of a tensor of shape d0..d5 (left-padded with 1) by p0..p5.
    "permute": (0x27, ("x", "y", "dt", "d0", "d1", "d2", "d3", "d4", "d5", "p0", "p1", "p2", "p3", "p4", "p5")),
    # Integer mean over the middle axis of [outer, red, inner]: (sum + red // 2) // red.
    "rmean": (0x28, ("x", "y", "outer", "red", "inner", "dt")),
    # Row softmax (u8 at 2^-8) of `rows` rows of `cols`: I-BERT i-exp (polynomial pb, pc) / I-ViT shift-exp.
    "isoftmax": (0x29, ("x", "y", "rows", "cols", "xdt", "ln2", "pb", "pc", "nexp", "k")),
    "shiftmax": (0x2A, ("x", "y", "rows", "cols", "xdt", "one", "nexp", "k")),
    # Elementwise integer GELU, i32 out (I-BERT erf polynomial / I-ViT x * shift-sigmoid(1.702x)).
    "igelu": (0x2B, ("x", "y", "count", "xdt", "pb", "one", "shift")),
    "shiftgelu": (0x2C, ("x", "y", "count", "xdt", "one", "nexp", "k")),
    # Row LayerNorm: exact centering, integer sqrt (sqrt 0 = Newton floor, 1 = I-ViT), dyadic affine tables
    # mul/shf and i32 bias of `cols` entries, + yzp, saturated to ydt.
    "lnorm": (0x2D, ("x", "mul", "shf", "bias", "y", "rows", "cols", "xdt", "sqrt", "yzp", "ydt")),
    # Two-input requantizing concat along rows: y[o] = [rq(a[o, :ia]), rq(b[o, :ib])], rq(v) = clamp(dyadic(v - zp,
    # m, s) + yzp).
    "qcat": (0x2E, ("a", "b", "y", "outer", "ia", "ib", "adt", "bdt", "ydt", "am", "ash", "azp", "bm", "bsh",
                    "bzp", "yzp")),
    # Average pool over `planes` planes; divisor = covered cells (+ padding cells when incpad), rounded half up.
    "avgpool": (0x2F, ("x", "y", "planes", "h", "wd", "oh", "ow", "kh", "kw", "sh", "sw", "pt", "pl", "pb", "pr",
                       "incpad", "dt")),
    "barrier": (0x30, ()),
    "halt": (0x3F, ()),
}
BY_CODE = {code: (name, fields) for name, (code, fields) in OPCODES.items()}
DMA_OPS = frozenset({"load", "store"})
_FIELD = struct.Struct("<q")


@dataclass(frozen=True)
class Instr:
    """One instruction: `op` (a key of `OPCODES`) and its field values in `OPCODES` order."""

    op: str
    args: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.op not in OPCODES:
            raise ValueError(f"unknown accelerator instruction {self.op!r}")
        want = OPCODES[self.op][1]
        if len(self.args) != len(want):
            raise ValueError(f"{self.op} takes {len(want)} fields {want}, got {len(self.args)}")

    @staticmethod
    def make(op: str, **fields: int) -> Instr:
        """Build from keyword fields; every field of the opcode must be given (dtype fields accept names)."""
        names = OPCODES[op][1]
        missing = sorted(set(names) - set(fields))
        extra = sorted(set(fields) - set(names))
        if missing or extra:
            raise ValueError(f"{op}: missing fields {missing}, unknown fields {extra}")
        return Instr(op, tuple(_field_value(n, fields[n]) for n in names))

    def __getitem__(self, name: str) -> int:
        return self.args[OPCODES[self.op][1].index(name)]

    def fields(self) -> dict[str, int]:
        return dict(zip(OPCODES[self.op][1], self.args))


def _field_value(name: str, v: int | str) -> int:
    if name.endswith("dt") and isinstance(v, str):
        return DTYPES[v]
    return int(v)


def dtype_name(code: int) -> str:
    """The dtype name of an encoded dtype field; ValueError for an unknown code."""
    try:
        return DTYPE_NAMES[code]
    except KeyError:
        raise ValueError(f"unknown dtype code {code}") from None


def encode(program: list[Instr]) -> bytes:
    """The binary form of a program."""
    out = bytearray()
    for ins in program:
        out.append(OPCODES[ins.op][0])
        for v in ins.args:
            out += _FIELD.pack(v)
    return bytes(out)


def decode(data: bytes) -> list[Instr]:
    """Decode a binary program; LibraryLoadError on an unknown opcode or a truncated record."""
    program, pos = [], 0
    while pos < len(data):
        code = data[pos]
        if code not in BY_CODE:
            raise LibraryLoadError(f"accelerator program: unknown opcode 0x{code:02x} at byte {pos}")
        name, fields = BY_CODE[code]
        end = pos + 1 + 8 * len(fields)
        if end > len(data):
            raise LibraryLoadError(f"accelerator program: truncated {name} instruction at byte {pos}")
        args = tuple(_FIELD.unpack_from(data, pos + 1 + 8 * i)[0] for i in range(len(fields)))
        program.append(Instr(name, args))
        pos = end
    return program
