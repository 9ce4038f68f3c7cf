"""Tiny models shipped in models/ for tests (run with a venv that has `onnx`).

identity_f32.onnx is a copy of ../shared/models/identity_f32.onnx (y = x, [batch,16]);
identity_bytes.onnx is made here: t = s over BYTES [batch,2];
accumulate.onnx too: y = x + state_in, state_out = y over FP32 [batch,4] (a model
with implicit state, served with Triton's sequence batcher `state`).
"""
import onnx
from onnx import TensorProto, helper

g = helper.make_graph(
    [helper.make_node("Identity", ["s"], ["t"])],
    "identity_bytes",
    [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 2])],
    [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", 2])],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="pomme scripts/make_test_models.py")
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, "models/identity_bytes.onnx")

f = TensorProto.FLOAT
g = helper.make_graph(
    [helper.make_node("Add", ["x", "state_in"], ["y"]), helper.make_node("Identity", ["y"], ["state_out"])],
    "accumulate",
    [helper.make_tensor_value_info("x", f, ["batch", 4]), helper.make_tensor_value_info("state_in", f, ["batch", 4])],
    [helper.make_tensor_value_info("y", f, ["batch", 4]), helper.make_tensor_value_info("state_out", f, ["batch", 4])],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="pomme scripts/make_test_models.py")
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, "models/accumulate.onnx")
