"""Golden-text + interpreter-equivalence checking for pass tests (the `check_pass` fixture).

A pass test writes the IR before and after the pass as text:

    def test_drop_identity_transpose(check_pass):
        check_pass(Canonicalize(), before=\"\"\"...\"\"\", after=\"\"\"...\"\"\")

`check_pass` parses `before`, runs the pass through `run_passes` (verify on), checks that the input graph was not
mutated, compares the printed result with `after` (line by line, ignoring indentation), then interprets both
graphs on seeded random inputs and requires equal outputs: `np.allclose` for floats, `np.array_equal` otherwise.
With QCC_UPDATE_GOLDENS=1 in the environment a text mismatch prints the actual text instead of failing, to paste
into the test after reading it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from qcc.interpreter import interpret
from qcc.ir.graph import Graph
from qcc.ir.parser import parse
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.ir.printer import print_graph
from qcc.ir.types import numpy_dtype


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.strip().splitlines() if ln.strip()]


def random_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Seeded random arrays for the graph inputs: normal floats, small integers, random bools."""
    rng = np.random.default_rng(seed)
    arrays = []
    for v in graph.inputs:
        dt = numpy_dtype(v.dtype)
        if v.dtype == "bool":
            arrays.append(rng.random(v.shape) < 0.5)
        elif v.type.is_float:
            arrays.append(rng.standard_normal(v.shape).astype(dt))
        elif v.dtype.startswith("u"):
            arrays.append(rng.integers(0, 8, v.shape).astype(dt))
        else:
            arrays.append(rng.integers(-5, 6, v.shape).astype(dt))
    return arrays


def assert_same_outputs(want: Sequence[np.ndarray], got: Sequence[np.ndarray], rtol: float = 1e-5,
                        atol: float = 1e-6) -> None:
    """Outputs agree: allclose for floats (NaNs equal), exact for integers and bools."""
    assert len(want) == len(got), f"{len(want)} outputs before the pass, {len(got)} after"
    for i, (w, g) in enumerate(zip(want, got)):
        assert w.shape == g.shape and w.dtype == g.dtype, f"output {i}: {w.dtype}{w.shape} became {g.dtype}{g.shape}"
        if np.issubdtype(w.dtype, np.floating):
            assert np.allclose(w, g, rtol=rtol, atol=atol, equal_nan=True), (
                f"output {i} differs: max abs error {np.max(np.abs(w.astype(np.float64) - g))}")
        else:
            assert np.array_equal(w, g), f"output {i} differs at {np.argwhere(w != g)[:5].tolist()}"


def check_pass(pass_obj: Any, before: str, after: str | None, params: Mapping[str, np.ndarray] | None = None, *,
               inputs: Sequence[np.ndarray] | None = None, seeds: Sequence[int] = (0, 1), rtol: float = 1e-5,
               atol: float = 1e-6, ctx: PassContext | None = None) -> Graph:
    """Run `pass_obj` on the parsed `before` text; check the printed result against `after` (skipped when None)
    and the interpreter outputs before vs after (on `inputs`, or random inputs for each seed). Returns the result.
    """
    graph = parse(before, params)
    text_before = print_graph(graph)
    result = run_passes(graph, [pass_obj], ctx or PassContext())
    assert print_graph(graph) == text_before, "the pass mutated its input graph"
    actual = print_graph(result)
    if after is not None and _lines(actual) != _lines(after):
        if os.environ.get("QCC_UPDATE_GOLDENS"):
            print(f"\n----- actual IR after {pass_obj.name} -----\n{actual}")
        else:
            diff = "\n".join(difflib.unified_diff(_lines(after), _lines(actual), "expected", "actual", lineterm=""))
            pytest.fail(f"IR after {pass_obj.name} differs from the golden text:\n{diff}")
    feeds = [list(inputs)] if inputs is not None else [random_inputs(graph, s) for s in seeds]
    for arrays in feeds:
        assert_same_outputs(interpret(graph, arrays), interpret(result, arrays), rtol, atol)
    return result


@pytest.fixture(name="check_pass")
def check_pass_fixture() -> Any:
    """The `check_pass` helper (a fixture, so test modules need not import a conftest)."""
    return check_pass
