"""MLServer custom runtime serving an ONNX model with onnxruntime, for benches/mlserver_vs_pomme.py.

MLServer 1.7.1 ships no ONNX runtime package, so this is the small `mlserver.MLModel`
subclass its docs describe for custom runtimes: decode the v2 tensor to numpy, run the
onnxruntime session, encode the result. Intra-op threads come from the model settings'
`parameters.extra.threads` (default 1), so each MLServer worker process uses one core.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("threads", 1))
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for req_input in payload.inputs:
            feeds[req_input.name] = np.ascontiguousarray(NumpyCodec.decode_input(req_input), dtype=np.float32)
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name=n, payload=r) for n, r in zip(self._outputs, results)],
        )
