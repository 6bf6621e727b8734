"""canonicalize: golden text + interpreter equivalence, one test per rule and the cases each rule must decline."""

from __future__ import annotations

import pytest

from qcc.ir.pass_manager import PassContext
from qcc.passes import Canonicalize


def _func(sig: str, body: str, ret: str) -> str:
    lines = "\n".join(f"  {ln.strip()}" for ln in body.strip().splitlines())
    return f"func @main({sig}) -> ({ret}) {{\n{lines}\n}}"


def _unchanged(check_pass, sig: str, body: str, ret: str) -> None:
    text = _func(sig, body, ret)
    check_pass(Canonicalize(), before=text, after=text)


def test_reshape_to_same_shape_and_chain(check_pass):
    ctx = PassContext()
    check_pass(Canonicalize(), ctx=ctx, before="""
        func @main(%x: f32[2,6]) -> (f32[3,4], f32[2,6]) {
          %0 = reshape(%x) {shape=(2, 6)} : f32[2,6]
          %1 = reshape(%0) {shape=(12,)} : f32[12]
          %2 = reshape(%1) {shape=(3, 4)} : f32[3,4]
          %3 = reshape(%x) {shape=(4, 3)} : f32[4,3]
          %4 = reshape(%3) {shape=(2, 6)} : f32[2,6]
          return %2, %4
        }""", after="""
        func @main(%x: f32[2,6]) -> (f32[3,4], f32[2,6]) {
          %0 = reshape(%x) {shape=(3, 4)} : f32[3,4]
          return %0, %x
        }""")
    assert ctx.stats["canonicalize"] == {"drop_noop_reshape": 1, "fold_reshape_chain": 2}


def test_squeeze_unsqueeze_pairs_cancel(check_pass):
    check_pass(Canonicalize(), before="""
        func @main(%x: f32[1,3,1,2], %y: f32[3,2]) -> (f32[1,3,1,2], f32[3,2], f32[3,1,2]) {
          %0 = squeeze(%x) {axes=(0, 2)} : f32[3,2]
          %1 = unsqueeze(%0) {axes=(0, 2)} : f32[1,3,1,2]
          %2 = unsqueeze(%y) {axes=(1,)} : f32[3,1,2]
          %3 = squeeze(%2) {axes=(1,)} : f32[3,2]
          %4 = squeeze(%x) {axes=(0,)} : f32[3,1,2]
          %5 = squeeze(%4) {axes=(1,)} : f32[3,2]
          %6 = unsqueeze(%5) {axes=(1,)} : f32[3,1,2]
          return %1, %3, %6
        }""", after="""
        func @main(%x: f32[1,3,1,2], %y: f32[3,2]) -> (f32[1,3,1,2], f32[3,2], f32[3,1,2]) {
          %0 = reshape(%x) {shape=(3, 1, 2)} : f32[3,1,2]
          return %x, %y, %0
        }""")


def test_empty_squeeze_vanishes_but_a_real_one_stays(check_pass):
    check_pass(Canonicalize(), before="""
        func @main(%x: f32[1,3]) -> (f32[3]) {
          %0 = unsqueeze(%x) {axes=()} : f32[1,3]
          %1 = squeeze(%0) {axes=(0,)} : f32[3]
          return %1
        }""", after="""
        func @main(%x: f32[1,3]) -> (f32[3]) {
          %0 = squeeze(%x) {axes=(0,)} : f32[3]
          return %0
        }""")


def test_transposes_compose_or_cancel(check_pass):
    ctx = PassContext()
    check_pass(Canonicalize(), ctx=ctx, before="""
        func @main(%x: f32[2,3,4]) -> (f32[2,3,4], f32[3,4,2], f32[2,3,4]) {
          %0 = transpose(%x) {perm=(1, 2, 0)} : f32[3,4,2]
          %1 = transpose(%0) {perm=(2, 0, 1)} : f32[2,3,4]
          %2 = transpose(%x) {perm=(0, 2, 1)} : f32[2,4,3]
          %3 = transpose(%2) {perm=(2, 1, 0)} : f32[3,4,2]
          %4 = transpose(%x) {perm=(0, 1, 2)} : f32[2,3,4]
          return %1, %3, %4
        }""", after="""
        func @main(%x: f32[2,3,4]) -> (f32[2,3,4], f32[3,4,2], f32[2,3,4]) {
          %0 = transpose(%x) {perm=(1, 2, 0)} : f32[3,4,2]
          return %x, %0, %x
        }""")
    assert ctx.stats["canonicalize"] == {"drop_identity_transpose": 1, "fold_transpose_pair": 2}


def test_transpose_pair_with_a_shared_inner_keeps_the_inner(check_pass):
    check_pass(Canonicalize(), before="""
        func @main(%x: f32[2,3]) -> (f32[3,2], f32[2,3]) {
          %0 = transpose(%x) {perm=(1, 0)} : f32[3,2]
          %1 = transpose(%0) {perm=(1, 0)} : f32[2,3]
          return %0, %1
        }""", after="""
        func @main(%x: f32[2,3]) -> (f32[3,2], f32[2,3]) {
          %0 = transpose(%x) {perm=(1, 0)} : f32[3,2]
          return %0, %x
        }""")


def test_expand_noop_and_pair(check_pass):
    check_pass(Canonicalize(), before="""
        func @main(%x: f32[1,3]) -> (f32[1,3], f32[2,4,3]) {
          %0 = expand(%x) {shape=(1, 3)} : f32[1,3]
          %1 = expand(%x) {shape=(4, 3)} : f32[4,3]
          %2 = expand(%1) {shape=(2, 4, 3)} : f32[2,4,3]
          return %0, %2
        }""", after="""
        func @main(%x: f32[1,3]) -> (f32[1,3], f32[2,4,3]) {
          %0 = expand(%x) {shape=(2, 4, 3)} : f32[2,4,3]
          return %x, %0
        }""")


def test_full_slice_vanishes(check_pass):
    check_pass(Canonicalize(), before="""
        func @main(%x: f32[3,1,4]) -> (f32[3,1,4]) {
          %0 = slice(%x) {axes=(0, 1, 2), ends=(3, -2, 4), starts=(0, 0, 0), steps=(1, -1, 1)} : f32[3,1,4]
          return %0
        }""", after="""
        func @main(%x: f32[3,1,4]) -> (f32[3,1,4]) {
          return %x
        }""")


@pytest.mark.parametrize("attrs,shape", [
    ("{axes=(1,), ends=(-5,), starts=(3,), steps=(-1,)}", "f32[2,4]"),  # reverses: same shape, not identity
    ("{axes=(1,), ends=(3,), starts=(1,), steps=(1,)}", "f32[2,2]"),
])
def test_partial_or_reversing_slice_stays(check_pass, attrs, shape):
    _unchanged(check_pass, "%x: f32[2,4]", f"%0 = slice(%x) {attrs} : {shape}\nreturn %0", shape)


def test_zero_pad_noop_cast_single_concat(check_pass):
    check_pass(Canonicalize(), before="""
        func @main(%x: f32[2,3], %i: i32[2]) -> (f32[2,3], i32[2], f32[2,3]) {
          %0 = pad(%x) {mode="reflect", pads=(0, 0, 0, 0), value=0.0} : f32[2,3]
          %1 = cast(%i) {dtype="i32"} : i32[2]
          %2 = concat(%0) {axis=1} : f32[2,3]
          return %0, %1, %2
        }""", after="""
        func @main(%x: f32[2,3], %i: i32[2]) -> (f32[2,3], i32[2], f32[2,3]) {
          return %x, %i, %x
        }""")


def test_real_pad_cast_and_concat_stay(check_pass):
    _unchanged(check_pass, "%x: f32[2,3], %i: i32[2]", """
        %0 = pad(%x) {mode="constant", pads=(0, 1, 0, 0), value=0.0} : f32[2,4]
        %1 = cast(%i) {dtype="f32"} : f32[2]
        %2 = concat(%x, %x) {axis=0} : f32[4,3]
        return %0, %1, %2""", "f32[2,4], f32[2], f32[4,3]")


def test_additive_and_multiplicative_identities(check_pass):
    ctx = PassContext()
    check_pass(Canonicalize(), ctx=ctx, before="""
        func @main(%x: f32[2,3], %n: i64[3]) -> (f32[2,3], i64[3]) {
          %z = param "z" : f32[3] dense<[0.0, -0.0, 0.0]>
          %one = param "one" : f32[1,1] dense<[1.0]>
          %ione = param "ione" : i64[] dense<[1]>
          %0 = add(%z, %x) : f32[2,3]
          %1 = sub(%0, %z) : f32[2,3]
          %2 = mul(%one, %1) : f32[2,3]
          %3 = div(%2, %one) : f32[2,3]
          %4 = add(%3, %z) : f32[2,3]
          %5 = div(%n, %ione) : i64[3]
          %6 = mul(%5, %ione) : i64[3]
          return %4, %6
        }""", after="""
        func @main(%x: f32[2,3], %n: i64[3]) -> (f32[2,3], i64[3]) {
          return %x, %n
        }""")
    assert ctx.stats["canonicalize"] == {"drop_add_zero": 2, "drop_div_one": 2, "drop_mul_one": 2,
                                         "drop_sub_zero": 1}


def test_identities_that_are_not_identities_stay(check_pass):
    _unchanged(check_pass, "%x: f32[3]", """
        %z = param "z" : f32[2,3] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %two = param "two" : f32[3] dense<[1.0, 2.0, 1.0]>
        %zz = param "zz" : f32[3] dense<[0.0, 0.0, 0.0]>
        %0 = add(%x, %z) : f32[2,3]
        %1 = mul(%x, %two) : f32[3]
        %2 = sub(%zz, %x) : f32[3]
        %3 = div(%zz, %x) : f32[3]
        return %0, %1, %2, %3""", "f32[2,3], f32[3], f32[3], f32[3]")


def test_rules_cascade_to_a_fixed_point(check_pass):
    # Dropping the zero pad exposes a transpose pair, whose removal exposes a reshape chain.
    ctx = PassContext()
    check_pass(Canonicalize(), ctx=ctx, before="""
        func @main(%x: f32[2,3]) -> (f32[2,3]) {
          %0 = reshape(%x) {shape=(3, 2)} : f32[3,2]
          %1 = transpose(%0) {perm=(1, 0)} : f32[2,3]
          %2 = pad(%1) {mode="constant", pads=(0, 0, 0, 0), value=0.0} : f32[2,3]
          %3 = transpose(%2) {perm=(1, 0)} : f32[3,2]
          %4 = reshape(%3) {shape=(2, 3)} : f32[2,3]
          return %4
        }""", after="""
        func @main(%x: f32[2,3]) -> (f32[2,3]) {
          return %x
        }""")
    assert ctx.stats["canonicalize"]["drop_zero_pad"] == 1
