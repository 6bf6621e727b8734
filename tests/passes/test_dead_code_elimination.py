"""dead-code-elimination: golden text + interpreter equivalence."""

from __future__ import annotations

from qcc.ir.pass_manager import PassContext
from qcc.passes import DeadCodeElimination


def test_removes_dead_nodes_and_params_but_keeps_inputs(check_pass):
    ctx = PassContext()
    check_pass(DeadCodeElimination(), ctx=ctx, before="""
        func @main(%x: f32[2,4], %unused: f32[3]) -> (f32[2,2]) {
          %w = param "w" : f32[2] dense<[1.0, 2.0]>
          %dead = param "dead" : f32[4] dense<[3.0, 4.0, 5.0, 6.0]>
          %0 = relu(%x) : f32[2,4]
          %1 = exp(%0) : f32[2,4]
          %2 = add(%1, %dead) : f32[2,4]
          %3, %4 = split(%x) {axis=1, sizes=(2, 2)} : f32[2,2], f32[2,2]
          %5 = mul(%4, %w) : f32[2,2]
          return %5
        }""", after="""
        func @main(%x: f32[2,4], %unused: f32[3]) -> (f32[2,2]) {
          %w = param "w" : f32[2] dense<[1.0, 2.0]>
          %0, %1 = split(%x) {axis=1, sizes=(2, 2)} : f32[2,2], f32[2,2]
          %2 = mul(%1, %w) : f32[2,2]
          return %2
        }""")
    assert ctx.stats["dead-code-elimination"] == {"nodes": 3, "params": 1}


def test_params_returned_as_outputs_are_live(check_pass):
    text = """
        func @main(%x: i32[2]) -> (i32[2], i32[2]) {
          %c = param "c" : i32[2] dense<[5, 6]>
          %0 = neg(%x) : i32[2]
          return %0, %c
        }"""
    check_pass(DeadCodeElimination(), before=text, after=text)


def test_everything_dead_but_an_input_passthrough(check_pass):
    check_pass(DeadCodeElimination(), before="""
        func @main(%x: f32[3]) -> (f32[3]) {
          %0 = sigmoid(%x) : f32[3]
          %1 = tanh(%0) : f32[3]
          return %x
        }""", after="""
        func @main(%x: f32[3]) -> (f32[3]) {
          return %x
        }""")
