"""Triton Python-backend model that runs an ONNX file with ONNX Runtime (transport tests only).

The pip-installable Triton server (nvidia-pytriton's bundled `tritonserver`) has no ONNX Runtime
backend, so the `test_triton_transport_*` tests serve our exported ONNX files through this
Python-backend model under the exported `config.pbtxt` with its `platform` line swapped: Triton
parses the rest of our config, applies its reshapes and batching settings, and answers real
HTTP/gRPC requests. It does not check the config against the model the way the onnxruntime
backend would (`strata.serving.triton.check_repository` does that). Runs inside Triton's Python
stub, which finds the separate numpy<2 environment through its `python3` first on PATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load `<model>/<version>/model.onnx` and remember the output names from the config."""
        cfg = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(
            str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o["name"] for o in cfg["output"]]

    def execute(self, requests: list) -> list:
        """Run each request (Triton hands over model-shaped tensors after `reshape`)."""
        responses = []
        for req in requests:
            feed = {n: pb_utils.get_input_tensor_by_name(req, n).as_numpy() for n in self.inputs}
            outs = dict(
                zip(
                    [o.name for o in self.sess.get_outputs()],
                    self.sess.run(None, feed),
                    strict=True,
                )
            )
            tensors = [pb_utils.Tensor(n, outs[n]) for n in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
