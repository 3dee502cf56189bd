"""Arithmetic figures for the benchmarks: a graph's convolution/GEMM FLOPs at a given input
size, and this machine's measured FP32 and INT8 matrix-multiply rates in ONNX Runtime."""

from __future__ import annotations

import numpy as np

from harness.timing import timed


def graph_gflop(onnx_path, input_shape) -> float:
    """GFLOP (2 per multiply-add) of the Conv, ConvTranspose, Gemm and MatMul nodes of a
    graph with one image input, at `input_shape`. Shapes come from running the graph once in
    ONNX Runtime with every such node's input and output exposed (static shape inference
    cannot see through the FPN's data-dependent Resize sizes)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    known = {o.name for o in model.graph.output}
    wanted = []
    for node in nodes:
        for name in (node.input[0], node.output[0]):
            if name not in known and name not in weights:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
            wanted.append(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: np.zeros(input_shape, np.float32)})
    shapes = {name: list(v.shape) for name, v in zip(names, values)}
    flops = 0
    for node in nodes:
        weight, inp, out = weights.get(node.input[1]), shapes.get(node.input[0]), shapes.get(node.output[0])
        if weight is None or inp is None or out is None:
            continue
        if node.op_type == "Conv":  # weight (Cout, Cin/group, kh, kw)
            flops += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose":  # weight (Cin, Cout/group, kh, kw)
            flops += 2 * int(np.prod(inp)) * int(np.prod(weight[1:]))
        else:  # Gemm / MatMul: (M, K) x (K, N) -> 2 M K N = 2 * |out| * K
            flops += 2 * int(np.prod(out)) * int(inp[-1])
    return flops / 1e9


class MatmulProbe:
    """An n x n x n FP32 MatMul and a U8 x S8 MatMulInteger in ONNX Runtime, timed once per
    `time_once()` call, so a benchmark can interleave them with what it measures (the
    machine's rate under the same conditions) and report the median rate."""

    KINDS = {"fp32": "MatMul", "int8_u8s8": "MatMulInteger"}

    def __init__(self, threads: int, n: int = 2048):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no spinning: a pool left spinning after one product would steal the cores from the
        # next thing timed (measured: the INT8 product at a fraction of its rate)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        rng = np.random.default_rng(0)
        self.n = n
        self._sessions, self._feeds = {}, {}
        self.seconds: dict[str, list[float]] = {kind: [] for kind in self.KINDS}
        for kind, op in self.KINDS.items():
            a_type, b_type, out_type = (
                (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
                if op == "MatMul"
                else (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
            )
            graph = helper.make_graph(
                [helper.make_node(op, ["a", "b"], ["c"])],
                kind,
                [helper.make_tensor_value_info("a", a_type, [n, n]), helper.make_tensor_value_info("b", b_type, [n, n])],
                [helper.make_tensor_value_info("c", out_type, [n, n])],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            self._sessions[kind] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            if op == "MatMul":
                self._feeds[kind] = {"a": rng.random((n, n), np.float32), "b": rng.random((n, n), np.float32)}
            else:
                self._feeds[kind] = {
                    "a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                    "b": rng.integers(-127, 127, (n, n), dtype=np.int8),
                }
            self._sessions[kind].run(None, self._feeds[kind])  # warm-up

    def time_once(self) -> None:
        for kind, session in self._sessions.items():
            self.seconds[kind].append(timed(session.run, None, self._feeds[kind])[0])

    def rates(self) -> dict:
        """GFLOP/s (2 n^3 per product) at the median of the timings so far."""
        return {kind: round(2 * self.n**3 / float(np.median(t)) / 1e9, 1) for kind, t in self.seconds.items() if t}

