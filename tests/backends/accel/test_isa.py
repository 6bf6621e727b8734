"""The accelerator ISA: binary encode/decode and text assemble/disassemble round trips, clear errors on bad
programs, and the simulator's memory checks and cycle model."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.backends.accel.assembler import assemble, disassemble
from qcc.backends.accel.isa import DTYPES, OPCODES, Instr, decode, encode
from qcc.backends.accel.simulator import Simulator, TimingModel, exact_matmul
from qcc.errors import BackendError, LibraryLoadError, ScratchpadError


def _random_program(seed: int = 0, n: int = 60) -> list[Instr]:
    rng = np.random.default_rng(seed)
    ops = sorted(OPCODES)
    prog = []
    for _ in range(n):
        op = ops[rng.integers(len(ops))]
        args = tuple(int(rng.choice(list(DTYPES.values()))) if f.endswith("dt") else
                     int(rng.integers(-(2**40), 2**40)) for f in OPCODES[op][1])
        prog.append(Instr(op, args))
    return prog


def test_binary_and_text_round_trip():
    prog = _random_program()
    assert decode(encode(prog)) == prog
    text = disassemble(prog)
    assert assemble(text) == prog
    assert assemble(disassemble(prog, numbered=True)) == prog
    assert disassemble(encode(prog)) == text  # disassembling the binary directly
    # Every opcode appears in a long enough random program, so every format is exercised.
    assert {i.op for i in _random_program(n=400)} == set(OPCODES)


def test_assembly_is_readable_and_errors_name_the_line():
    prog = assemble("""
        # load 64 bytes, then halt
        load dram=0x40 spm=0 n2=1 n1=1 n0=64 s2=0 s1=0
        clip x=0 y=64 count=64 dt=i8 lo=-3 hi=3
        halt
    """)
    assert [i.op for i in prog] == ["load", "clip", "halt"] and prog[1]["dt"] == DTYPES["i8"]
    assert "dt=i8" in disassemble(prog)
    with pytest.raises(LibraryLoadError, match="line 1: unknown instruction"):
        assemble("jump x=1")
    with pytest.raises(LibraryLoadError, match="line 2: .*missing fields"):
        assemble("halt\nclip x=0 y=0 count=1 dt=i8 lo=0")
    with pytest.raises(LibraryLoadError, match="bad value"):
        assemble("clip x=0 y=0 count=1 dt=f32 lo=0 hi=1")
    with pytest.raises(LibraryLoadError, match="unknown opcode"):
        decode(b"\x99" + bytes(8))
    with pytest.raises(LibraryLoadError, match="truncated"):
        decode(encode([Instr.make("copy", x=0, y=8, nbytes=8)])[:-3])


def test_simulator_executes_dma_and_checks_bounds():
    sim = Simulator(256, TimingModel(dram_gbps=32.0, clock_mhz=1000.0))
    dram = bytearray(range(256))
    prog = assemble("""
        load dram=16 spm=0 n2=2 n1=2 n0=4 s2=64 s1=8     # two 2x4-byte blocks
        clip x=0 y=32 count=16 dt=u8 lo=20 hi=90
        store dram=128 spm=32 n2=1 n1=1 n0=16 s2=0 s1=0
        halt
    """)
    stats = sim.run(prog, dram)
    src = [16, 17, 18, 19, 24, 25, 26, 27, 80, 81, 82, 83, 88, 89, 90, 91]
    assert list(dram[128:144]) == [min(max(v, 20), 90) for v in src]
    assert stats.dram_read == 16 and stats.dram_write == 16 and stats.spm_peak == 48
    t = TimingModel(dram_gbps=32.0, clock_mhz=1000.0)
    assert stats.dma_cycles == t.dma(16, 4) + t.dma(16, 1) and stats.cycles == stats.dma_cycles + t.vector(16)
    with pytest.raises(ScratchpadError, match="outside the 256-byte scratchpad"):
        sim.run(assemble("clip x=250 y=0 count=16 dt=u8 lo=0 hi=1"), dram)
    with pytest.raises(ScratchpadError):
        sim.run(assemble("load dram=0 spm=200 n2=1 n1=1 n0=64 s2=0 s1=0"), dram)
    with pytest.raises(BackendError, match="DRAM"):
        sim.run(assemble("load dram=250 spm=0 n2=1 n1=1 n0=16 s2=0 s1=0"), dram)


def test_timing_model_scales_with_bandwidth_and_macs():
    slow, fast = TimingModel(dram_gbps=8.0), TimingModel(dram_gbps=64.0)
    assert slow.dma(1 << 16, 1) > 4 * (fast.dma(1 << 16, 1) - fast.dma_latency)
    t = TimingModel()
    assert t.gemm(256 * 1000, 1) == t.op_overhead + 1000 + 1


def test_exact_matmul_is_exact_on_both_paths():
    rng = np.random.default_rng(3)
    small = rng.integers(-255, 256, (5, 300)), rng.integers(-255, 256, (300, 4))
    big = rng.integers(-(2**40), 2**40, (3, 7)), rng.integers(-(2**20), 2**20, (7, 2))  # beyond float64's 2^53
    for a, b in (small, big):
        assert np.array_equal(exact_matmul(a, b), np.matmul(a, b))
