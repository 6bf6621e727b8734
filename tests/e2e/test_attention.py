"""Attention end to end: `qcc.compile` recognises the attention of the BERT encoder with a padding mask (the digits
ViT is checked through the pipeline in tests/passes/test_recognize_attention.py), of torch SDPA (causal, float
mask, bool mask), of hand-written masked_fill causal attention and of their ONNX exports, lowers it to the tiled
kernel, and matches PyTorch / ONNX Runtime. Options: attention="off", attention_tile=(br, bc); attention="on" on
cpu-int8 (the exact integer qattention kernel)."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.errors import OptionError

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")
from tests.zoo import bert_inputs, bert_tiny, sdpa_block  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.tvm]


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def _compile(model, args, n_attention=1, **options):
    lib = qcc.compile(model, "cpu-fp32", example_inputs=args, num_threads=1, **options)
    nodes = [n for n in lib.graph.nodes if n.op == "attention"]
    assert len(nodes) == n_attention and "softmax" not in lib.graph.op_counts()
    return lib, nodes


def test_bert_with_padding_mask_matches_pytorch():
    model = bert_tiny(embed=False)
    args = bert_inputs(seq=16, hidden=32, mask=True)
    lib, nodes = _compile(model, args, 2)
    assert all(len(n.inputs) == 4 and not n.attrs["causal"] for n in nodes)
    with torch.no_grad():
        _close(lib(*args), model(*args).numpy())


@pytest.mark.parametrize("form", ["causal", "float_mask", "bool_mask", "masked_fill"])
def test_sdpa_forms_match_torch_sdpa(form):
    model, args = sdpa_block(form, seq=19, dim=16, heads=2, batch=2)
    lib, (node,) = _compile(model, args)
    assert node.attrs["causal"] == (form in ("causal", "masked_fill"))
    # the reference is torch's scaled_dot_product_attention: the model calls it, or for the hand-written
    # masked_fill model the same weights (same seed) in the is_causal=True form
    ref_model = sdpa_block("causal", seq=19, dim=16, heads=2, batch=2)[0] if form == "masked_fill" else model
    with torch.no_grad():
        _close(lib(*args), ref_model(*args).numpy())


@pytest.mark.onnx
@pytest.mark.parametrize("form", ["causal", "float_mask"])
def test_onnx_export_of_sdpa(form, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, args = sdpa_block(form, seq=12, dim=16, heads=2)
    path = tmp_path / f"{form}.onnx"
    names = [f"in{i}" for i in range(len(args))]
    torch.onnx.export(model, args, str(path), input_names=names, dynamo=False, external_data=False)
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    lib = qcc.compile(str(path), "cpu-fp32", num_threads=1)
    assert lib.graph.op_counts().get("attention") == 1
    _close(lib(**feeds), expected)


def test_attention_options():
    # attention="off" itself is checked on the pipeline in tests/passes/test_recognize_attention.py
    model, args = sdpa_block("causal", seq=9, dim=8, heads=2)
    lib, (node,) = _compile(model, args, attention_tile=(4, 16))
    assert node.meta["attention_tile"] == (4, 16) and node.meta["attention_tiles"] == (4, 16)
    with torch.no_grad():
        _close(lib(*args), model(*args).numpy())
    with pytest.raises(OptionError, match="attention"):
        qcc.compile(model, "cpu-fp32", example_inputs=args, attention="maybe")


@pytest.mark.slow
def test_int8_bert_uses_the_integer_attention_kernel_bit_exactly():
    model = bert_tiny(embed=False)
    x, mask = (a.numpy() for a in bert_inputs(seq=16, hidden=32, mask=True))
    calib = [tuple(a.numpy() for a in bert_inputs(seq=16, hidden=32, mask=True, seed=s)) for s in (1, 2)]
    lib = qcc.compile(model, "cpu-int8", example_inputs=(x, mask), calibration=calib, progress=False, num_threads=1,
                      attention="on", calibration_runner="interpreter")
    counts = lib.graph.op_counts()
    assert counts.get("qattention") == 2 and "isoftmax" not in counts and "qmatmul" not in counts
    report = lib.report()
    assert "integer-only: yes" in report and "TIR no-float check: passed" in report
    np.testing.assert_array_equal(lib(x, mask), qcc.interpret(lib.graph, [x, mask])[0])
