"""The pass registry: naming conventions (file, pass and test named alike) and `get_pass` options."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from qcc.errors import OptionError
from qcc.passes import PASSES, ConstantFolding, get_pass

TESTS = Path(__file__).parent


@pytest.mark.parametrize("name", sorted(PASSES))
def test_pass_is_named_like_its_file_and_test(name):
    cls = PASSES[name]
    module = name.replace("-", "_")
    assert cls.name == name
    # A pass lives in qcc.passes.<module> or in a sub-package qcc.passes.<package>.<module>, tested alike.
    package = cls.__module__.removeprefix("qcc.passes.").removesuffix(module).rstrip(".")
    assert cls.__module__ == ".".join(p for p in ("qcc.passes", package, module) if p)
    assert (TESTS / package / f"test_{module}.py").is_file(), f"no tests/passes/{package}/test_{module}.py"
    assert cls.__doc__ and importlib.import_module(cls.__module__).__doc__
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert callable(cls().run)


def test_get_pass_builds_with_options_and_coerces_strings():
    assert get_pass("constant-folding") == ConstantFolding()
    assert get_pass("constant-folding", max_growth="10").max_growth == 10
    assert get_pass("canonicalize", max_iters=3).max_iters == 3


def test_get_pass_rejects_unknown_names_and_options():
    with pytest.raises(OptionError, match="unknown pass 'fold-everything'.*canonicalize"):
        get_pass("fold-everything")
    with pytest.raises(OptionError, match="unknown option.*'bits'.*accepted options: max_growth"):
        get_pass("constant-folding", bits=4)
    with pytest.raises(OptionError, match="not a valid int"):
        get_pass("constant-folding", max_growth="lots")
