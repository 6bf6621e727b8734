"""conv2d (direct, im2col, depthwise) and layout-transform kernels against qcc.ir.ops.evaluate("conv2d")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qcc.errors import BackendError
from qcc.ir.ops import evaluate

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")

from qcc.backends.tvm.kernels import Conv2dShape, choose_conv_impl, make_kernel, workload  # noqa: E402
from qcc.backends.tvm.kernels.conv2d import pack_conv_weight  # noqa: E402
from qcc.backends.tvm.kernels.depthwise import pack_depthwise_weight  # noqa: E402
from qcc.backends.tvm.kernels.epilogue import reference  # noqa: E402
from qcc.backends.tvm.kernels.layout import from_nchwc, to_nchwc  # noqa: E402
from qcc.backends.tvm.kernels.params import ConvParams, Im2colParams  # noqa: E402

RNG = np.random.default_rng(1)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run_conv(kind: str, x: np.ndarray, w: np.ndarray, attrs: dict[str, Any], epi: tuple = (),
             data_layout: str = "NCHWc", out_layout: str = "NCHWc", params: Any = None,
             bias: np.ndarray | None = None, residual: np.ndarray | None = None) -> np.ndarray:
    """Build the kernel, convert NCHW operands into its layouts, run it, return the NCHW result."""
    k = make_kernel(kind, [x.shape, w.shape], attrs=attrs, params=params, epilogue=epi, data_layout=data_layout,
                    out_layout=out_layout, use_db=False)
    ins = [to_nchwc(x, k.arg("data").shape[-1]) if data_layout == "NCHWc" else x, k.pack_weight(w)]
    if bias is not None:
        ins.append(k.pack_bias(bias))
    if residual is not None:
        ins.append(to_nchwc(residual, k.output.shape[-1]) if out_layout == "NCHWc" else residual)
    y = k.build()(*ins)
    return from_nchwc(y, w.shape[0]) if out_layout == "NCHWc" else y


def ref_conv(x: np.ndarray, w: np.ndarray, attrs: dict[str, Any], epi: tuple = (), bias: Any = None,
             residual: Any = None) -> np.ndarray:
    full = {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1, **attrs}
    y = evaluate("conv2d", [x, w], full)[0]
    return reference(y, epi, bias, [] if residual is None else [residual], 1)


CASES = [  # (x shape, w shape, attrs)
    ((1, 20, 5, 7), (24, 20, 1, 1), {}),                                                   # 1×1 = a GEMM
    ((2, 5, 9, 11), (17, 5, 3, 3), {"stride": (2, 2), "padding": (1, 1, 1, 1)}),          # stride 2, batch 2
    ((1, 16, 10, 9), (16, 16, 3, 3), {"padding": (2, 0, 1, 2), "dilation": (2, 1)}),     # asym. pad, dilation
    ((1, 32, 7, 7), (32, 16, 3, 3), {"padding": (1, 1, 1, 1), "groups": 2}),              # groups
    ((1, 3, 13, 13), (16, 3, 7, 7), {"stride": (2, 2), "padding": (3, 3, 3, 3)}),         # stem-like, C=3
]


@pytest.mark.parametrize("xs,ws,attrs", CASES)
def test_conv2d_direct_bias_residual_relu(xs: tuple, ws: tuple, attrs: dict) -> None:
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    r = rand(*ref_conv(x, w, attrs).shape)
    epi = (("bias",), ("add",), ("relu",))
    y = run_conv("conv2d_direct", x, w, attrs, epi, bias=b, residual=r)
    np.testing.assert_allclose(y, ref_conv(x, w, attrs, epi, b, r), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layouts", [("NCHW", "NCHW"), ("NCHW", "NCHWc"), ("NCHWc", "NCHW")])
def test_conv2d_direct_nchw_facing(layouts: tuple[str, str]) -> None:
    x, w, b = rand(1, 18, 8, 6), rand(20, 18, 3, 3), rand(20)
    attrs = {"stride": (1, 2), "padding": (1, 1, 1, 1)}
    epi = (("bias",), ("relu6",))
    y = run_conv("conv2d_direct", x, w, attrs, epi, *layouts, bias=b)
    np.testing.assert_allclose(y, ref_conv(x, w, attrs, epi, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("params", [None, ConvParams(ic_bn=16, oc_bn=16, ow_bn=3, oc_tile=2, lanes=16,
                                                     unroll_kw=False)])
def test_conv2d_direct_params_padded_width(params: ConvParams | None) -> None:
    # OW=7 not a multiple of ow_bn=3: the tile runs past the row end, the store is guarded
    x, w = rand(1, 16, 7, 7), rand(32, 16, 3, 3)
    attrs = {"padding": (1, 1, 1, 1)}
    np.testing.assert_allclose(run_conv("conv2d_direct", x, w, attrs, params=params), ref_conv(x, w, attrs),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("xs,ws,attrs,layouts", [
    ((2, 5, 9, 11), (17, 5, 3, 3), {"stride": (2, 2), "padding": (1, 1, 1, 1)}, ("NCHW", "NCHWc")),
    ((1, 16, 10, 9), (16, 16, 3, 3), {"padding": (2, 0, 1, 2), "dilation": (2, 1)}, ("NCHWc", "NCHW")),
])
def test_conv2d_im2col(xs: tuple, ws: tuple, attrs: dict, layouts: tuple[str, str]) -> None:
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    epi = (("bias",), ("hardswish",))
    params = Im2colParams(ow_bn=4, oc_bn=16, oc_tile=1, lanes=16, kc=ws[1] * 3)
    y = run_conv("conv2d_im2col", x, w, attrs, epi, *layouts, params=params, bias=b)
    np.testing.assert_allclose(y, ref_conv(x, w, attrs, epi, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,attrs,layouts", [
    (20, {"padding": (1, 1, 1, 1)}, ("NCHWc", "NCHWc")),                    # channels not a block multiple
    (32, {"stride": (2, 2), "padding": (1, 1, 1, 1)}, ("NCHW", "NCHW")),     # stride 2, NCHW-facing
    (16, {"padding": (2, 2, 2, 2), "dilation": (2, 2)}, ("NCHWc", "NCHWc")),
])
def test_depthwise(c: int, attrs: dict, layouts: tuple[str, str]) -> None:
    x, w, b = rand(1, c, 9, 10), rand(c, 1, 3, 3), rand(c)
    attrs = {**attrs, "groups": c}
    epi = (("bias",), ("relu6",))
    assert choose_conv_impl(workload("conv2d", [x.shape, w.shape], attrs)) == "depthwise_conv2d"
    y = run_conv("conv2d", x, w, attrs, epi, *layouts, bias=b)
    np.testing.assert_allclose(y, ref_conv(x, w, attrs, epi, b), rtol=1e-4, atol=1e-4)


def test_choose_conv_impl_and_fallback() -> None:
    assert choose_conv_impl(Conv2dShape(1, 64, 56, 56, 64, 3, 3, padding=(1, 1, 1, 1))) == "conv2d_direct"
    with pytest.raises(BackendError, match="generic lowering"):
        choose_conv_impl(Conv2dShape(1, 12, 8, 8, 12, 3, 3, groups=3))  # 4-channel groups: no template
    with pytest.raises(BackendError, match="do not match"):
        workload("conv2d", [(1, 12, 8, 8), (12, 5, 3, 3)], {})


def test_layout_transform_kernels() -> None:
    x = rand(2, 20, 3, 5)
    to = make_kernel("nchw_to_nchwc", [x.shape], attrs={"block": 16})
    back = make_kernel("nchwc_to_nchw", [x.shape], attrs={"block": 16})
    packed = to.build()(x)
    assert packed.shape == (2, 2, 3, 5, 16) and not packed[:, 1, ..., 4:].any()
    np.testing.assert_array_equal(packed, to_nchwc(x, 16))
    np.testing.assert_array_equal(back.build()(packed), x)


def test_weight_packing_round_trips() -> None:
    w = rand(20, 5, 3, 3)
    wp = pack_conv_weight(w, 5, 16)
    assert wp.shape == (2, 1, 3, 3, 5, 16)
    # wp[ob, cq, kh, kw, ci, oc] == w[ob*16+oc, cq*5+ci, kh, kw]
    back = wp.transpose(0, 5, 1, 4, 2, 3).reshape(32, 5, 3, 3)
    np.testing.assert_array_equal(back[:20], w)
    assert not back[20:].any()
    dw = rand(20, 1, 3, 3)
    dp = pack_depthwise_weight(dw, 16)
    np.testing.assert_array_equal(dp.transpose(0, 3, 1, 2).reshape(32, 3, 3)[:20], dw[:, 0])
    np.testing.assert_array_equal(from_nchwc(to_nchwc(rand(1, 20, 2, 2) * 0 + 1, 16), 20), np.ones((1, 20, 2, 2)))


def test_kernel_runs_inside_a_relax_module() -> None:
    # The backend's path: bb.add_func(kernel.func) + call_tir with the packed weight as a constant.
    import tvm
    from tvm import relax

    from qcc.backends.tvm.kernels import host_target

    x, w, b = rand(1, 16, 6, 6), rand(24, 16, 3, 3), rand(24)
    attrs = {"padding": (1, 1, 1, 1)}
    k = make_kernel("conv2d", [x.shape, w.shape], attrs=attrs, epilogue=(("bias",), ("relu",)),
                    data_layout="NCHW", out_layout="NCHW", use_db=False)
    assert k.func.attrs["tirx.is_scheduled"]
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            gv = bb.add_func(k.func, "conv0")
            args = (xv, relax.const(k.pack_weight(w)), relax.const(k.pack_bias(b)))
            y = bb.emit_output(bb.emit(relax.call_tir(gv, args, relax.TensorType(k.output.shape, "float32"))))
        bb.emit_func_output(y)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target(host_target())), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, ref_conv(x, w, attrs, (("bias",), ("relu",)), b), rtol=1e-4, atol=1e-4)
