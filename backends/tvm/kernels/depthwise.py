"""Depthwise conv2d (groups = C = O) on the packed NCHW[x]c layout.

Each output channel reads one input channel, so the vector runs over `c_bn` channels of a block (no
reduction across lanes) and the register tile is `ow_bn` output columns × c_bn/lanes vectors:

    data_pad [N, C/cb, Hp, Wp, cb]                           (padding / NCHW packing: one copy of the input)
    parallel for n, channel block q, output row oh:
      for ow tile:
        for kh, kw (unrolled), owi (unrolled), lane (vectorized):
          acc[owi, :] += data_pad[n, q, oh·sh + kh·dh, (ow·ow_bn + owi)·sw + kw·dw, :] · w_packed[q, kh, kw, :]
        epilogue -> out [N, C/cb, OH, OW, cb]

The weight [C, 1, KH, KW] is packed to [C/cb, KH, KW, cb] at compile time.
"""

from __future__ import annotations

import numpy as np

from qcc.backends.tvm.kernels.conv2d import _ceil, _Io
from qcc.backends.tvm.kernels.epilogue import Epilogue
from qcc.backends.tvm.kernels.kernel import ArgSpec, Kernel, shape_str
from qcc.backends.tvm.kernels.params import Conv2dShape, DepthwiseParams
from qcc.errors import BackendError


def pack_depthwise_weight(w: np.ndarray, cb: int) -> np.ndarray:
    """[C, 1, KH, KW] -> [ceil(C/cb), KH, KW, cb], zero padded."""
    c, one, kh, kw = w.shape
    if one != 1:
        raise BackendError(f"depthwise weight must be [C, 1, KH, KW], got {list(w.shape)}")
    q = _ceil(c, cb)
    wp = np.zeros((q * cb, kh, kw), np.float32)
    wp[:c] = w[:, 0]
    return np.ascontiguousarray(wp.reshape(q, cb, kh, kw).transpose(0, 2, 3, 1))


def depthwise_kernel(s: Conv2dShape, p: DepthwiseParams, epilogue: Epilogue = (), data_layout: str = "NCHWc",
                     out_layout: str = "NCHWc") -> Kernel:
    """The scheduled depthwise convolution. Args: x, w_packed [C/cb, KH, KW, cb], [bias [C/cb, cb]],
    residuals (output layout), y."""
    from tvm import s_tir, te

    if not s.depthwise:
        raise BackendError(f"depthwise_conv2d needs groups == C == O, got {s}")
    cb = p.c_bn
    io = _Io(s, cb, cb, data_layout, out_layout)
    (sh, sw), (dh, dw) = s.stride, s.dilation
    D, OWp = io.padded_input(cb, p.ow_bn)
    needs_copy = D is not io.X
    W = te.placeholder((io.Cb, s.KH, s.KW, cb), "float32", "w_packed")
    rh, rw = te.reduce_axis((0, s.KH), "kh"), te.reduce_axis((0, s.KW), "kw")
    acc = te.compute((s.N, io.Cb, s.OH, OWp, cb), lambda n, q, i, j, v: te.sum(
        D[n, q, i * sh + rh * dh, j * sw + rw * dw, v] * W[q, rh, rw, v], axis=[rh, rw]), name="dw")
    out, extra, specs = io.output(acc, epilogue)
    name = f"qcc_depthwise_{shape_str((s.N, s.C, s.H, s.W, s.KH, s.KW))}_s{sh}"
    sch = s_tir.Schedule(te.create_prim_func([io.X, W, *extra, out]).with_attr("global_symbol", name))
    c = sch.get_sblock("dw")
    n, q, oh, ow, v, kh, kw = sch.get_loops(c)
    owo, owi = sch.split(ow, [None, p.ow_bn])
    vv, vl = sch.split(v, [None, p.lanes])
    sch.reorder(n, q, oh, owo, kh, kw, owi, vv, vl)
    sch.vectorize(vl)
    for lp in (kh, kw, owi, vv):
        sch.unroll(lp)
    o = sch.get_sblock("out")
    sch.reverse_compute_at(o, owo)
    oloops = sch.get_loops(o)
    if int(sch.get(oloops[-1]).extent) % p.lanes == 0:
        sch.vectorize(sch.split(oloops[-1], [None, p.lanes])[1])
    par = sch.fuse(n, q, oh)
    sch.parallel(par)
    sch.decompose_reduction(c, kh)
    if needs_copy:
        pad = sch.get_sblock("data_pad")
        if sh > 1:
            # Strided: the KH padded rows one output row needs are built right before it, in L1 (they overlap
            # little), instead of one more trip of the whole input through memory (1×96×112×112 3×3/2, 1 thread:
            # 26 -> 32 GFLOP/s). At stride 1 the rows would be rebuilt KH times: a root copy is faster there
            # (1×144×56×56 3×3: 71 vs 58).
            sch.compute_at(pad, par)
        else:
            sch.parallel(sch.fuse(*sch.get_loops(pad)[:3]))
        if data_layout == "NCHWc" and cb % p.lanes == 0:
            sch.vectorize(sch.split(sch.get_loops(pad)[-1], [None, p.lanes])[1])
    args = (io.x_spec, ArgSpec("w_packed", (io.Cb, s.KH, s.KW, cb), "weight", f"packed[C/{cb},KH,KW,{cb}]"),
            *specs)
    return Kernel("depthwise_conv2d", s, p, epilogue, sch.mod["main"], args,
                  weight_packer=lambda w: pack_depthwise_weight(w, cb),
                  notes={"data_layout": data_layout, "out_layout": out_layout})
