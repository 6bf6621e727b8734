"""The accelerator executable: program + weights image + metadata, the host wrapper, and the .qbin format.

`AccelExecutable.run` quantizes float inputs on the host (the graph's input `quantize`), writes them into a fresh
DRAM image after the weights, runs the program on the simulator, reads the integer outputs back and dequantizes
them on the host (the graph's output `dequantize`). Everything in between runs on the (simulated) accelerator.

.qbin layout: b"QCCACCEL", u32 format version, u32 header length, the JSON header (sizes, sha256 of code and
weights, DRAM layout of inputs and outputs, host boundary ops, target, timing, report, occupancy, caller metadata),
the binary code (`isa.encode`), the weights image. Written atomically (temporary file, then rename); every field is
checked on load, and any mismatch raises `LibraryLoadError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.backends.accel.isa import NUMPY, Instr, decode, encode
from qcc.backends.accel.lowering import IOSpec
from qcc.backends.accel.simulator import Simulator, Stats, TimingModel
from qcc.errors import LibraryLoadError, ShapeMismatchError
from qcc.target import Target

MAGIC = b"QCCACCEL"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<II")


@dataclass
class Program:
    """A runnable accelerator program: code, the weights image (DRAM prefix), DRAM size, scratchpad capacity, and
    the DRAM addresses of its inputs and outputs."""

    code: list[Instr]
    weights: bytes
    dram_size: int
    capacity: int
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    addresses: dict[str, int]   # DRAM tensor -> address (inputs and outputs)
    timing: TimingModel = field(default_factory=TimingModel)

    def execute(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Stats]:
        """Run on integer input arrays (in `inputs` order); returns the integer outputs and the run's stats."""
        dram = bytearray(self.dram_size)
        dram[:len(self.weights)] = self.weights
        for spec, arr in zip(self.inputs, arrays):
            data = np.ascontiguousarray(arr, NUMPY[spec.dtype]).tobytes()
            a = self.addresses[spec.tensor]
            dram[a:a + len(data)] = data
        stats = Simulator(self.capacity, self.timing).run(self.code, dram)
        outs = []
        for spec in self.outputs:
            a = self.addresses[spec.tensor]
            n = int(np.prod(spec.shape, dtype=np.int64))
            outs.append(np.frombuffer(dram, NUMPY[spec.dtype], n, a).reshape(spec.shape).copy())
        return outs, stats


def _host_op(spec: dict[str, Any], x: np.ndarray) -> np.ndarray:
    from qcc.ir.ops import evaluate

    scale = np.asarray(spec["scale"], spec["scale_dtype"]).reshape(spec["scale_shape"])
    zp = np.asarray(spec["zero_point"], spec["zp_dtype"]).reshape(spec["zp_shape"])
    return evaluate(spec["op"], [x, scale, zp], spec["attrs"])[0]


class AccelExecutable:
    """What `qcc.compile(..., target="accel-*")` builds: the program plus the host boundary ops and a report."""

    def __init__(self, program: Program, target: Target, info: dict[str, Any] | None = None) -> None:
        self.program = program
        self.target = target
        self.info = dict(info or {})      # schedule summary, occupancy, tiles (see `report`)
        self.last_stats: Stats | None = None

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(self.program.inputs):
            raise ShapeMismatchError(f"expected {len(self.program.inputs)} input(s) "
                                     f"{[s.name for s in self.program.inputs]}, got {len(arrays)}")
        ints = []
        for spec, x in zip(self.program.inputs, arrays):
            x = np.asarray(x)
            if tuple(x.shape) != tuple(spec.shape):
                raise ShapeMismatchError(f"input {spec.name!r}: expected shape {list(spec.shape)}, got "
                                         f"{list(x.shape)}")
            ints.append(_host_op(spec.host, x) if spec.host else x)
        outs, self.last_stats = self.program.execute(ints)
        return [_host_op(spec.host, y) if spec.host else y for spec, y in zip(self.program.outputs, outs)]

    def disassemble(self) -> str:
        from qcc.backends.accel.assembler import disassemble

        return disassemble(self.program.code, numbered=True)

    def report(self) -> str:
        from qcc.backends.accel.report import report_text

        return report_text(self)

    accel_report = report  # the name `CompiledModel.report` looks for

    # -- .qbin -------------------------------------------------------------------------------------------------
    def export_library(self, path: str, meta: dict[str, Any] | None = None) -> None:
        """Write the .qbin file atomically."""
        code = encode(self.program.code)
        p = self.program
        header = {
            "format": FORMAT_VERSION, "target": self.target.to_dict(), "capacity": p.capacity,
            "dram_size": p.dram_size, "code_size": len(code), "weights_size": len(p.weights),
            "sha256": hashlib.sha256(code + p.weights).hexdigest(),
            "inputs": [dataclasses.asdict(s) for s in p.inputs], "outputs": [dataclasses.asdict(s) for s in p.outputs],
            "addresses": p.addresses, "timing": dataclasses.asdict(p.timing), "info": self.info, "meta": meta or {},
        }
        head = json.dumps(header, sort_keys=True).encode()
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(MAGIC + _HEAD.pack(FORMAT_VERSION, len(head)) + head + code + p.weights)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def is_qbin(path: str) -> bool:
    """Whether `path` starts with the .qbin magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_qbin(path: str) -> tuple[AccelExecutable, dict[str, Any]]:
    """Read a .qbin written by `export_library`; returns (executable, caller metadata). LibraryLoadError on a
    truncated, corrupt or foreign file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise LibraryLoadError(f"cannot read {path}: {e}") from e
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEAD.size:
        raise LibraryLoadError(f"{path} is not a qcc accelerator library (.qbin)")
    version, hlen = _HEAD.unpack_from(data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise LibraryLoadError(f"{path}: .qbin format version {version}; this qcc reads version {FORMAT_VERSION}")
    start = len(MAGIC) + _HEAD.size
    try:
        header = json.loads(data[start:start + hlen].decode())
        body = data[start + hlen:]
        csize, wsize = int(header["code_size"]), int(header["weights_size"])
        if len(body) != csize + wsize:
            raise LibraryLoadError(f"{path}: expected {csize + wsize} bytes of code and weights, found {len(body)} "
                                   "(truncated or padded file)")
        if hashlib.sha256(body).hexdigest() != header["sha256"]:
            raise LibraryLoadError(f"{path}: code/weights checksum mismatch (corrupt file)")
        target = Target.from_dict(header["target"])
        prog = Program(decode(body[:csize]), bytes(body[csize:]), int(header["dram_size"]), int(header["capacity"]),
                       [_spec(s) for s in header["inputs"]], [_spec(s) for s in header["outputs"]],
                       {k: int(v) for k, v in header["addresses"].items()}, TimingModel(**header["timing"]))
    except LibraryLoadError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise LibraryLoadError(f"{path}: corrupt .qbin header: {e}") from e
    if target.device != "accel":
        raise LibraryLoadError(f"{path}: built for {target.name!r}, not an accelerator target")
    return AccelExecutable(prog, target, header.get("info", {})), header.get("meta", {})


def _spec(d: dict[str, Any]) -> IOSpec:
    return IOSpec(d["name"], d["tensor"], tuple(d["shape"]), d["dtype"], d.get("host"))
