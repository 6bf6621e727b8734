"""run_passes: verify-after-each, failure messages naming the passes, printing, dumps, timings."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from qcc.errors import InfeasibleBudgetError, PassError, VerificationError
from qcc.ir.graph import Graph, GraphBuilder
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.ir.printer import print_graph
from qcc.ir.types import TensorType


def _graph() -> Graph:
    b = GraphBuilder()
    x = b.input((2, 3), "f32", "x")
    return b.output(b.emit("exp", [b.emit("relu", [x])]))


@dataclass(frozen=True)
class Rename:
    """A harmless pass: renames the graph."""

    name: ClassVar[str] = "rename"
    to: str = "renamed"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        g = graph.copy()
        g.name = self.to
        return g


@dataclass(frozen=True)
class DropFirst:
    """Drops the first node: relu -> exp becomes exp of an undefined value (no validation of its own)."""

    name: ClassVar[str] = "drop-first"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        g = graph.copy()
        g.nodes = g.nodes[1:]
        return g


@dataclass(frozen=True)
class Crash:
    """Fails with an ordinary Python exception."""

    name: ClassVar[str] = "crash"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        raise KeyError("missing table entry")


@dataclass(frozen=True)
class OverBudget:
    """Fails with a user-facing qcc error, which must keep its class."""

    name: ClassVar[str] = "over-budget"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        raise InfeasibleBudgetError("needs at least 12 KiB of scratchpad")


def test_passes_run_in_order_and_are_timed():
    ctx = PassContext()
    out = run_passes(_graph(), [Rename(to="a"), Rename(to="b")], ctx)
    assert out.name == "b"
    assert set(ctx.timings) == {"rename"} and ctx.timings["rename"] >= 0.0


def test_verify_after_each_catches_a_broken_graph():
    with pytest.raises(PassError, match=r"pass 'drop-first' failed \(passes run before it: rename\): "
                                        r".*used before it is defined") as info:
        run_passes(_graph(), [Rename(), DropFirst(), Rename()])
    assert isinstance(info.value.__cause__, VerificationError)


def test_without_verification_a_broken_graph_goes_through():
    out = run_passes(_graph(), [DropFirst()], PassContext(verify_each=False))
    assert [n.op for n in out.nodes] == ["exp"]


def test_the_input_graph_is_verified_first():
    g = _graph()
    g.outputs[0].type = TensorType((9,), "f32")
    with pytest.raises(VerificationError, match="typed f32\\[9\\]"):
        run_passes(g, [Rename()])


def test_exceptions_become_pass_errors_naming_the_passes_before():
    with pytest.raises(PassError, match=r"pass 'crash' failed \(passes run before it: rename, drop-first\): "
                                        r"KeyError: 'missing table entry'"):
        run_passes(_graph(), [Rename(), DropFirst(), Crash()], PassContext(verify_each=False))
    with pytest.raises(PassError, match=r"pass 'crash' failed \(passes run before it: none\)"):
        run_passes(_graph(), [Crash()])


def test_user_facing_errors_keep_their_class_with_a_note():
    with pytest.raises(InfeasibleBudgetError, match="12 KiB") as info:
        run_passes(_graph(), [Rename(), OverBudget()])
    assert info.value.__notes__ == ["in pass 'over-budget' (passes run before it: rename)"]


def test_print_after_all_writes_to_ctx_out():
    out = io.StringIO()
    g = run_passes(_graph(), [Rename(to="a"), Rename(to="b")], PassContext(print_after=frozenset({"*"}), out=out))
    text = out.getvalue()
    assert text.count("// ----- IR after rename ----- //") == 2
    assert "func @a(" in text and text.endswith(print_graph(g) + "\n")


def test_print_after_selected_passes_only():
    out = io.StringIO()
    run_passes(_graph(), [Rename(to="a"), DropFirst()],
               PassContext(print_after=frozenset({"drop-first"}), out=out, verify_each=False))
    assert out.getvalue().count("IR after") == 1 and "IR after drop-first" in out.getvalue()
    assert "func @a(" in out.getvalue()


def test_nothing_printed_by_default(capsys):
    run_passes(_graph(), [Rename()])
    assert capsys.readouterr() == ("", "")


def test_dump_dir_gets_one_file_per_pass(tmp_path):
    ctx = PassContext(dump_dir=tmp_path / "dumps")
    g = run_passes(_graph(), [Rename(to="a"), Rename(to="b")], ctx)
    files = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert files == ["00-input.qir", "01-rename.qir", "02-rename.qir"]
    assert (tmp_path / "dumps" / "02-rename.qir").read_text() == print_graph(g)
    assert "func @main(" in (tmp_path / "dumps" / "00-input.qir").read_text()


def test_pipeline_of_real_passes_keeps_semantics():
    from qcc.interpreter import interpret
    from qcc.passes import get_pass

    b = GraphBuilder()
    x = b.input((1, 2, 3, 3), "f32", "x")
    w = b.param(np.ones((2, 2, 1, 1), np.float32), "w")
    s = b.param(np.ones(2, np.float32), "s")
    y = b.emit("conv2d", [x, w], {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1})
    y = b.emit("batch_norm", [y, b.emit("neg", [s]), s, s, s], {"eps": 0.5})
    y = b.emit("reshape", [b.emit("reshape", [y], {"shape": (2, 9)})], {"shape": (1, 2, 3, 3)})
    g = b.output(y)
    ctx = PassContext()
    out = run_passes(g, [get_pass(n) for n in ("constant-folding", "fold-batchnorm", "canonicalize",
                                               "dead-code-elimination")], ctx)
    assert out.op_counts() == {"conv2d": 1}
    assert list(ctx.timings) == ["constant-folding", "fold-batchnorm", "canonicalize", "dead-code-elimination"]
    xs = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(interpret(out, [xs])[0], interpret(g, [xs])[0], rtol=1e-5, atol=1e-6)
