"""The backend's measuring function for the collect job: local timing, TVM RPC timing, the candidate space,
and the cost-model hook of the kernels."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")

SHAPES = [(16, 64), (32, 64)]


def test_space_and_local_measure():
    from qcc.backends.tvm.measure import Measurer, space

    kind, shape, cands = space("dense", SHAPES, {})
    assert kind == "dense" and shape == {"type": "DenseShape", "M": 16, "N": 32, "K": 64} and len(cands) > 3
    assert len({str(c) for c in cands}) == len(cands)
    reps = Measurer(number=2, repeat=3)("dense", SHAPES, {}, cands[1], [["relu"]])
    assert len(reps) == 3 and all(0 < r < 0.1 for r in reps)


@pytest.mark.slow
def test_rpc_measure_on_a_local_server():
    from tvm import rpc

    from qcc.backends.tvm.measure import Measurer, space
    from qcc.errors import BackendError

    server = rpc.Server(host="127.0.0.1", port=9190, port_end=9390)
    try:
        _, _, cands = space("dense", SHAPES, {})
        reps = Measurer(number=2, repeat=2, rpc=f"127.0.0.1:{server.port}")("dense", SHAPES, {}, cands[0])
        assert len(reps) == 2 and all(r > 0 for r in reps)
    finally:
        server.terminate()
    with pytest.raises(BackendError, match="HOST:PORT"):
        Measurer(rpc="nonsense")("dense", SHAPES, {}, cands[0])


def test_choose_params_uses_the_given_model():
    from qcc.backends.tvm.kernels import choose_params, default_params, workload
    from qcc.backends.tvm.kernels.params import CpuInfo, candidates

    cpu = CpuInfo()
    shape = workload("dense", [(64, 256), (256, 256)])

    class Prefers:  # a cost model that likes one particular candidate
        def __init__(self, want):
            self.want = want

        def predict(self, kernels):
            import numpy as np

            return np.array([0.5 if k["params"]["mb"] == self.want.mb and k["params"]["nv"] == self.want.nv
                             and k["params"]["kc"] == self.want.kc and k["params"]["order"] == self.want.order
                             else 1.0 for k in kernels])

    want = candidates("dense", shape, cpu)[-1]
    assert want != default_params("dense", shape, cpu)
    assert choose_params("dense", shape, cpu, model=Prefers(want)) == want


@pytest.mark.torch
def test_compile_with_a_cost_model(tmp_path):
    torch = pytest.importorskip("torch")
    import numpy as np

    import qcc
    from qcc.errors import CostModelError

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU()).eval()
    x = torch.randn(8, 64)
    want = net(x).detach().numpy()
    for cm in ("rule", "analytic", None):
        got = qcc.compile(net, "cpu-fp32", (x,), cost_model=cm)(x.numpy())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(CostModelError, match="does not exist"):
        qcc.compile(net, "cpu-fp32", (x,), cost_model=str(tmp_path / "missing.lgb"))


def test_integer_kernels_are_measured_through_the_lowering():
    import numpy as np

    import qcc
    from qcc.backends.tvm.kernels import int8
    from qcc.backends.tvm.measure import IntMeasurer, any_space, int_graph
    from qcc.errors import BackendError

    shapes, attrs = [[4, 64], [32, 64]], {"w_bits": 4, "x_dtype": "u8"}
    kind, shape, cands = any_space("qlinear", shapes, attrs)
    assert kind == "qlinear" and shape["w_bits"] == 4 and shape["M"] == 4
    assert [c["impl"] for c in cands] == (["vnni", "generic"] if int8.enabled() else ["generic"])
    graph, inputs = int_graph("qlinear", shapes, attrs)
    assert [n.op for n in graph.nodes] == ["qlinear", "requantize"] and graph.nodes[0].inputs[1].type.dtype == "i4"
    w = next(a for v, a in graph.params.items() if v.name == "w")
    assert w.min() >= -8 and w.max() <= 7
    out = qcc.interpret(graph, inputs)[0]
    assert out.dtype == np.uint8 and out.shape == (4, 32)
    reps = IntMeasurer(number=2, repeat=2)(kind, shapes, attrs, cands[-1])
    assert len(reps) == 2 and all(0 < r < 0.1 for r in reps)
    with pytest.raises(BackendError, match="4/8-bit"):
        int_graph("qlinear", shapes, {"w_bits": 2})
    if not int8.enabled():  # asking for the template where it does not apply is a failed measurement
        with pytest.raises(BackendError, match="VNNI"):
            IntMeasurer()(kind, shapes, attrs, {"type": "IntParams", "impl": "vnni"})
