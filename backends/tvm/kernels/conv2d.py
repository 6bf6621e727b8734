"""conv2d kernels on the packed NCHW[x]c layout: direct convolution and im2col + GEMM.

Direct (`conv2d_direct`), for every x and w of docs/ops.md (stride, padding, dilation, groups whose channel
counts are multiples of the blocks; 1×1 is the same template with a one-tap window):

    data_pad [N, C/icb, Hp, Wp, icb]  (padding and, for NCHW input, packing: one copy of the input)
    parallel for n, output-block group obo, output row oh:
      for ow tile owo:
        for icq, kh, kw (unrolled), ici:                      # the reduction
          for owi < ow_bn (unrolled), obi < oc_tile (unrolled), lane (vectorized):
            acc[owi, obi, :] += data_pad[n, icq, oh·sh + kh·dh, (owo·ow_bn + owi)·sw + kw·dw, ici]
                                · w_packed[obo·oc_tile + obi, icq, kh, kw, ici, :]
        epilogue on the tile -> out [N, O/ocb, OH, OW, ocb]   (or NCHW when out_layout="NCHW")

The weight OIHW becomes [O/ocb, C/groups/icb, KH, KW, icb, ocb] at compile time (`pack_conv_weight`).

im2col (`conv2d_im2col`): per output row, the [OW, C·KH·KW] patch matrix is built once (padding resolved
there, not in the inner loop) and multiplied by the packed weight [O/ocb, C, KH, KW, ocb] with the same
register tile; one long unit-stride reduction loop instead of three short ones, which wins when C is small
(the 3-channel stem).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcc.backends.tvm.kernels.epilogue import Epilogue, apply_steps, has_bias, num_residuals
from qcc.backends.tvm.kernels.kernel import ArgSpec, Kernel, shape_str
from qcc.backends.tvm.kernels.params import Conv2dShape, ConvParams, Im2colParams
from qcc.errors import BackendError


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def pack_conv_weight(w: np.ndarray, icb: int, ocb: int, groups: int = 1) -> np.ndarray:
    """OIHW [O, C/groups, KH, KW] -> [ceil(O/ocb), ceil(C/groups/icb), KH, KW, icb, ocb], zero padded."""
    o, cg, kh, kw = w.shape
    ob, cb = _ceil(o, ocb), _ceil(cg, icb)
    wp = np.zeros((ob * ocb, cb * icb, kh, kw), np.float32)
    wp[:o, :cg] = w
    return np.ascontiguousarray(wp.reshape(ob, ocb, cb, icb, kh, kw).transpose(0, 2, 4, 5, 3, 1))


def pack_im2col_weight(w: np.ndarray, c_eff: int, ocb: int) -> np.ndarray:
    """OIHW [O, C, KH, KW] -> [ceil(O/ocb), c_eff, KH, KW, ocb] (C zero padded to c_eff, O to a block)."""
    o, c, kh, kw = w.shape
    ob = _ceil(o, ocb)
    wp = np.zeros((ob * ocb, c_eff, kh, kw), np.float32)
    wp[:o, :c] = w
    return np.ascontiguousarray(wp.reshape(ob, ocb, c_eff, kh, kw).transpose(0, 2, 3, 4, 1))


class _Io:
    """Input placeholder, layout bookkeeping and the epilogue/output stage shared by both conv templates."""

    def __init__(self, s: Conv2dShape, icb: int, ocb: int, data_layout: str, out_layout: str):
        from tvm import te

        if data_layout not in ("NCHWc", "NCHW") or out_layout not in ("NCHWc", "NCHW"):
            raise BackendError(f"conv2d layouts are NCHW or NCHWc, got {data_layout!r} -> {out_layout!r}")
        self.s, self.icb, self.ocb = s, icb, ocb
        self.data_layout, self.out_layout = data_layout, out_layout
        self.Cb = _ceil(s.C, icb)
        self.Ob = _ceil(s.O, ocb)
        if data_layout == "NCHWc":
            self.X = te.placeholder((s.N, self.Cb, s.H, s.W, icb), "float32", "x")
            self.x_spec = ArgSpec("x", (s.N, self.Cb, s.H, s.W, icb), "data", f"NCHW{icb}c")
        else:
            self.X = te.placeholder((s.N, s.C, s.H, s.W), "float32", "x")
            self.x_spec = ArgSpec("x", (s.N, s.C, s.H, s.W), "data", "NCHW")

    def x_at(self, n: Any, c: Any, h: Any, w: Any) -> Any:
        """The input element of (logical, possibly padding) channel c at unpadded row h, column w, or 0."""
        from tvm import te

        s = self.s
        inside = te.all(h >= 0, h < s.H, w >= 0, w < s.W)
        hh, ww = te.min(te.max(h, 0), s.H - 1), te.min(te.max(w, 0), s.W - 1)
        if self.data_layout == "NCHWc":
            return te.if_then_else(inside, self.X[n, c // self.icb, hh, ww, c % self.icb], 0.0)
        return te.if_then_else(te.all(inside, c < s.C), self.X[n, te.min(c, s.C - 1), hh, ww], 0.0)

    def padded_input(self, block: int, ow_bn: int) -> tuple[Any, int]:
        """The input as [N, Cb, Hn, Wn, block] covering every row/column a direct conv touches (padding and the
        output width rounded up to `ow_bn` included), or X itself when no copy is needed; returns (D, OWp)."""
        from tvm import te

        s = self.s
        (sh, sw), (dh, dw) = s.stride, s.dilation
        pt, pl, _, _ = s.padding
        OWp = _ceil(s.OW, ow_bn) * ow_bn
        Hn = (s.OH - 1) * sh + (s.KH - 1) * dh + 1  # rows / columns of the padded input the conv touches
        Wn = (OWp - 1) * sw + (s.KW - 1) * dw + 1
        if self.data_layout == "NCHW" or pt or pl or Hn > s.H or Wn > s.W:
            return te.compute((s.N, self.Cb, Hn, Wn, block),
                              lambda n, q, h, w, v: self.x_at(n, q * block + v, h - pt, w - pl), name="data_pad"), OWp
        return self.X, OWp

    def output(self, acc: Any, epilogue: Epilogue, name: str = "out") -> tuple[Any, list[Any], list[ArgSpec]]:
        """The epilogue stage reading acc [N, Ob, OH, OW(p), ocb]; returns (out, extra inputs, their specs)."""
        from tvm import te

        s, ocb = self.s, self.ocb
        B = te.placeholder((self.Ob, ocb), "float32", "bias") if has_bias(epilogue) else None
        specs = [ArgSpec("bias", (self.Ob, ocb), "bias", f"packed[O/{ocb},{ocb}]")] if B is not None else []
        if self.out_layout == "NCHWc":
            oshape: tuple[int, ...] = (s.N, self.Ob, s.OH, s.OW, ocb)
            R = [te.placeholder(oshape, "float32", f"residual{i}") for i in range(num_residuals(epilogue))]
            out = te.compute(oshape, lambda n, ob, i, j, v: apply_steps(
                acc[n, ob, i, j, v], epilogue, (lambda: B[ob, v]) if B is not None else None,
                [lambda r=r: r[n, ob, i, j, v] for r in R]), name=name)
            lay = f"NCHW{ocb}c"
        else:
            oshape = (s.N, s.O, s.OH, s.OW)
            R = [te.placeholder(oshape, "float32", f"residual{i}") for i in range(num_residuals(epilogue))]
            out = te.compute(oshape, lambda n, o, i, j: apply_steps(
                acc[n, o // ocb, i, j, o % ocb], epilogue, (lambda: B[o // ocb, o % ocb]) if B is not None
                else None, [lambda r=r: r[n, o, i, j] for r in R]), name=name)
            lay = "NCHW"
        specs += [ArgSpec(f"residual{i}", oshape, "residual", lay) for i in range(len(R))]
        specs.append(ArgSpec("y", oshape, "output", lay))
        return out, ([B] if B is not None else []) + R, specs


def _schedule_tile(sch: Any, acc: str, out: str, n_red: int, ow_bn: int, oc_tile: int, lanes: int,
                   ocb: int, par_depth: int, unroll: list[int]) -> Any:
    """Register-tile the accumulation block (loops n, ob, oh, ow, oc, then `n_red` reduction loops) and put the
    epilogue stage under the ow tile. The parallel loop fuses the first `par_depth` of (n, obo, oh) —
    or (n, oh) when the caller reorders; returns it."""
    c = sch.get_sblock(acc)
    n, ob, oh, ow, oc, *red = sch.get_loops(c)
    obo, obi = sch.split(ob, [None, oc_tile])
    owo, owi = sch.split(ow, [None, ow_bn])
    ocv, ocl = sch.split(oc, [None, lanes])
    sch.reorder(n, obo, oh, owo, *red, owi, obi, ocv, ocl)
    sch.vectorize(ocl)
    for lp in (owi, obi, ocv):
        sch.unroll(lp)
    for i in unroll:
        sch.unroll(red[i])
    o = sch.get_sblock(out)
    sch.reverse_compute_at(o, owo)
    oloops = sch.get_loops(o)
    ext = int(sch.get(oloops[-1]).extent)
    if ext % lanes == 0:
        _, vl = sch.split(oloops[-1], [None, lanes])
        sch.vectorize(vl)
    par = sch.fuse(n, obo, oh)
    sch.parallel(par)
    sch.decompose_reduction(c, red[0])
    return par


def conv2d_direct(s: Conv2dShape, p: ConvParams, epilogue: Epilogue = (), data_layout: str = "NCHWc",
                  out_layout: str = "NCHWc") -> Kernel:
    """The scheduled direct NCHW[x]c convolution (see the module docstring). Args: x, w_packed, [bias
    [O/ocb, ocb]], residuals (output layout), y."""
    from tvm import s_tir, te

    icb, ocb = p.ic_bn, p.oc_bn
    io = _Io(s, icb, ocb, data_layout, out_layout)
    cg, og = s.C // s.groups, s.O // s.groups
    if s.groups > 1 and (cg % icb or og % ocb):
        raise BackendError(f"grouped conv2d needs C/groups ({cg}) % {icb} == 0 and O/groups ({og}) % {ocb} == 0")
    if io.Ob % p.oc_tile:
        raise BackendError(f"oc_tile {p.oc_tile} does not divide the {io.Ob} output blocks")
    cgb = _ceil(cg, icb)
    (sh, sw), (dh, dw) = s.stride, s.dilation
    D, OWp = io.padded_input(icb, p.ow_bn)
    needs_copy = D is not io.X
    W = te.placeholder((io.Ob, cgb, s.KH, s.KW, icb, ocb), "float32", "w_packed")
    rq = te.reduce_axis((0, cgb), "icq")
    rh, rw, rv = te.reduce_axis((0, s.KH), "kh"), te.reduce_axis((0, s.KW), "kw"), te.reduce_axis((0, icb), "ici")
    blocks_per_group = og // ocb if s.groups > 1 else 1

    def q_of(ob: Any, q: Any) -> Any:
        return q if s.groups == 1 else (ob // blocks_per_group) * cgb + q

    acc = te.compute((s.N, io.Ob, s.OH, OWp, ocb), lambda n, ob, i, j, v: te.sum(
        D[n, q_of(ob, rq), i * sh + rh * dh, j * sw + rw * dw, rv] * W[ob, rq, rh, rw, rv, v],
        axis=[rq, rh, rw, rv]), name="conv")
    out, extra, specs = io.output(acc, epilogue)
    name = f"qcc_conv2d_{shape_str((s.N, s.C, s.H, s.W, s.O, s.KH, s.KW))}_s{sh}"
    sch = s_tir.Schedule(te.create_prim_func([io.X, W, *extra, out]).with_attr("global_symbol", name))
    unroll = [1, 2] if p.unroll_kw else []
    _schedule_tile(sch, "conv", "out", 4, p.ow_bn, p.oc_tile, p.lanes, ocb, 3, unroll)
    if needs_copy:
        blk = sch.get_sblock("data_pad")
        loops = sch.get_loops(blk)
        sch.parallel(sch.fuse(*loops[:3]))
        if data_layout == "NCHWc" and icb % p.lanes == 0:
            sch.vectorize(sch.split(loops[-1], [None, p.lanes])[1])
    args = (io.x_spec, ArgSpec("w_packed", tuple(int(d) for d in W.shape), "weight",
                               f"packed[O/{ocb},C/{icb},KH,KW,{icb},{ocb}]"), *specs)
    return Kernel("conv2d_direct", s, p, epilogue, sch.mod["main"], args,
                  weight_packer=lambda w: pack_conv_weight(w, icb, ocb, s.groups),
                  notes={"data_layout": data_layout, "out_layout": out_layout})


def conv2d_im2col(s: Conv2dShape, p: Im2colParams, epilogue: Epilogue = (), data_layout: str = "NCHWc",
                  out_layout: str = "NCHWc", ic_bn: int | None = None) -> Kernel:
    """The scheduled im2col + GEMM convolution (groups=1). `ic_bn`: the block of an NCHWc input (default the
    lanes, or C when C is smaller). Args as `conv2d_direct`, with the weight packed [O/ocb, C, KH, KW, ocb]."""
    from tvm import s_tir, te

    if s.groups != 1:
        raise BackendError("the im2col conv2d template handles groups=1 only")
    ocb = p.oc_bn
    icb = ic_bn or (s.C if s.C < p.lanes else p.lanes)
    io = _Io(s, icb, ocb, data_layout, out_layout)
    c_eff = s.C  # the padding channels of an NCHWc input are zero: reduce over the real ones only
    R = c_eff * s.KH * s.KW
    if R % p.kc:
        raise BackendError(f"kc {p.kc} does not divide the reduction length {R}")
    if io.Ob % p.oc_tile:
        raise BackendError(f"oc_tile {p.oc_tile} does not divide the {io.Ob} output blocks")
    (sh, sw), (dh, dw) = s.stride, s.dilation
    pt, pl, _, _ = s.padding
    OWp = _ceil(s.OW, p.ow_bn) * p.ow_bn

    # The patch matrix keeps (c, kh, kw) as three axes, so building it needs no division; the GEMM fuses
    # them back into one unit-stride reduction loop of length R.
    def col_at(n: Any, i: Any, j: Any, c: Any, kh: Any, kw: Any) -> Any:
        v = io.x_at(n, c, i * sh + kh * dh - pt, j * sw + kw * dw - pl)
        return v if OWp == s.OW else te.if_then_else(j < s.OW, v, 0.0)

    col = te.compute((s.N, s.OH, OWp, c_eff, s.KH, s.KW), col_at, name="col")
    W = te.placeholder((io.Ob, c_eff, s.KH, s.KW, ocb), "float32", "w_packed")
    rc, rh, rw = te.reduce_axis((0, c_eff), "rc"), te.reduce_axis((0, s.KH), "rh"), te.reduce_axis((0, s.KW), "rw")
    acc = te.compute((s.N, io.Ob, s.OH, OWp, ocb), lambda n, ob, i, j, v: te.sum(
        col[n, i, j, rc, rh, rw] * W[ob, rc, rh, rw, v], axis=[rc, rh, rw]), name="conv")
    out, extra, specs = io.output(acc, epilogue)
    name = f"qcc_conv2d_im2col_{shape_str((s.N, s.C, s.H, s.W, s.O, s.KH, s.KW))}_s{sh}"
    sch = s_tir.Schedule(te.create_prim_func([io.X, W, *extra, out]).with_attr("global_symbol", name))
    c = sch.get_sblock("conv")
    n, ob, oh, ow, oc, *red = sch.get_loops(c)
    ro, ri = sch.split(sch.fuse(*red), [None, p.kc])
    # (n, oh) outermost so that one output row's patch matrix serves every output block.
    sch.reorder(n, oh, ob)
    obo, obi = sch.split(ob, [None, p.oc_tile])
    owo, owi = sch.split(ow, [None, p.ow_bn])
    ocv, ocl = sch.split(oc, [None, p.lanes])
    sch.reorder(n, oh, obo, owo, ro, ri, owi, obi, ocv, ocl)
    sch.vectorize(ocl)
    for lp in (owi, obi, ocv):
        sch.unroll(lp)
    o = sch.get_sblock("out")
    sch.reverse_compute_at(o, owo)
    oloops = sch.get_loops(o)
    if int(sch.get(oloops[-1]).extent) % p.lanes == 0:
        sch.vectorize(sch.split(oloops[-1], [None, p.lanes])[1])
    par = sch.fuse(n, oh)
    sch.parallel(par)
    sch.compute_at(sch.get_sblock("col"), par)
    sch.decompose_reduction(c, ro)
    args = (io.x_spec, ArgSpec("w_packed", (io.Ob, c_eff, s.KH, s.KW, ocb), "weight",
                               f"packed[O/{ocb},C,KH,KW,{ocb}]"), *specs)
    return Kernel("conv2d_im2col", s, p, epilogue, sch.mod["main"], args,
                  weight_packer=lambda w: pack_im2col_weight(w, c_eff, ocb),
                  notes={"data_layout": data_layout, "out_layout": out_layout, "ic_bn": icb})
