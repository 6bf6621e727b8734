"""Text assembly for the accelerator ISA: `assemble(text) -> [Instr]`, `disassemble(program) -> text`.

One instruction per line: the mnemonic, then `field=value` pairs in any order (`#` starts a comment). Dtype fields
take names (`xdt=u8`), every other field a decimal or 0x-hex integer. `disassemble` writes every field in the
opcode's order, so `assemble(disassemble(p)) == p` and `decode(encode(p)) == p` for every program.
"""

from __future__ import annotations

from qcc.backends.accel.isa import DTYPES, OPCODES, Instr, decode, dtype_name
from qcc.errors import LibraryLoadError

_ADDR_FIELDS = frozenset({"dram", "spm", "x", "w", "bias", "y", "a", "b", "mul", "shf", "gsc"})


def format_instr(ins: Instr) -> str:
    """One line of assembly for `ins`."""
    parts = []
    for name, v in ins.fields().items():
        if name.endswith("dt"):
            parts.append(f"{name}={dtype_name(v)}")
        elif name in _ADDR_FIELDS and v >= 0:
            parts.append(f"{name}=0x{v:x}")
        else:
            parts.append(f"{name}={v}")
    head = f"{ins.op:<8}" if len(ins.op) < 8 else ins.op + " "  # mnemonics pad to a column, always one space
    return head + " ".join(parts) if parts else ins.op


def disassemble(program: list[Instr] | bytes, numbered: bool = False) -> str:
    """Assembly text of a program (instructions or their binary encoding); `numbered` prefixes indices."""
    if isinstance(program, (bytes, bytearray)):
        program = decode(bytes(program))
    lines = [format_instr(ins) for ins in program]
    if numbered:
        lines = [f"{i:6d}: {line}" for i, line in enumerate(lines)]
    return "\n".join(lines) + ("\n" if lines else "")


def assemble(text: str) -> list[Instr]:
    """Parse assembly text; LibraryLoadError naming the line for an unknown mnemonic, field or value."""
    program = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ":" in line.split()[0]:  # a `numbered` listing: drop the index
            line = line.split(":", 1)[1].strip()
        op, *pairs = line.split()
        if op not in OPCODES:
            raise LibraryLoadError(f"line {lineno}: unknown instruction {op!r}")
        fields: dict[str, int] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name not in OPCODES[op][1]:
                raise LibraryLoadError(f"line {lineno}: {op} has no field {name!r} (fields: {OPCODES[op][1]})")
            if name in fields:
                raise LibraryLoadError(f"line {lineno}: field {name!r} given twice")
            try:
                fields[name] = DTYPES[value] if name.endswith("dt") else int(value, 0)
            except (KeyError, ValueError):
                raise LibraryLoadError(f"line {lineno}: bad value {value!r} for field {name!r}") from None
        missing = [n for n in OPCODES[op][1] if n not in fields]
        if missing:
            raise LibraryLoadError(f"line {lineno}: {op} is missing fields {missing}")
        program.append(Instr(op, tuple(fields[n] for n in OPCODES[op][1])))
    return program
