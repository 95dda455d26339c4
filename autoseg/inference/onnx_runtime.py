"""ONNX networks: a fold's network exported to ONNX, and an ONNX graph run through onnxruntime as a network
of the sliding window.

Export uses torch's ``torch.onnx.export(dynamo=True)`` (the exporter torch maintains; the TorchScript one
warns that it will be removed) with opset :data:`ONNX_OPSET`, the network in eval mode, so the graph has the
full-resolution head only (deep supervision is a training-mode output). The batch axis is dynamic; the channel
and spatial axes are fixed to the plan's patch, which is the only window shape the sliding window feeds.

:class:`OnnxNetwork` is an ``nn.Module`` whose forward runs an onnxruntime session, so the ensemble code
(mirroring, fold averaging, blending) uses it exactly as a PyTorch network. It computes in float32
whatever the autocast around it: predict records ``float32`` for ONNX models.

Optional dependencies (``pip install 'autoseg[onnx]'``): ``onnx`` and ``onnxscript`` to export,
``onnxruntime`` to run; none is imported until needed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from autoseg.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

ONNX_OPSET = 20
"""The ONNX opset the exporter targets (recorded in the model file's manifest)."""
EXPORTER = "torch.onnx.export(dynamo=True)"
INSTALL_HINT = "pip install 'autoseg[onnx]'"
_PROTOBUF_LIMIT_BYTES = 2**31 - 1
"""An ONNX graph with its weights inside must serialise to under 2 GiB (protobuf's limit)."""


def export_onnx(network: nn.Module, input_shape: Sequence[int]) -> tuple[bytes, int]:
    """The serialised ONNX graph of ``network`` and its opset.

    Args:
        network: a network in eval mode on the CPU, ``(B, C, *patch)`` -> ``(B, K, *patch)`` logits.
        input_shape: ``(C, *patch)``: channels and the patch (``(z, y, x)``, or ``(y, x)`` for 2D).

    Raises:
        UsageError: ``onnx`` or ``onnxscript`` is not installed.
        ModelError: the exporter failed or the graph is too large for one ONNX file.
    """
    for module in ("onnx", "onnxscript"):
        _import_optional(module, f"exporting to ONNX needs {module}, which is not installed; {INSTALL_HINT}")
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter(), torch.no_grad():
        try:
            program: Any = torch.onnx.export(
                network.eval(),
                (example,),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["windows"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
                optimize=True,
            )
        except Exception as error:  # the exporter raises many types (torch.export, onnxscript, onnx)
            raise ModelError(f"ONNX export failed ({type(error).__name__}: {str(error)[:300]})") from None
    proto = program.model_proto
    if proto.ByteSize() > _PROTOBUF_LIMIT_BYTES:
        raise ModelError("the network is over 2 GiB, more than one ONNX file can hold; export it as torch")
    opsets = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    return bytes(proto.SerializeToString()), int(opsets[0]) if opsets else ONNX_OPSET


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's own chatter (deprecations inside torch, "torchvision is not installed" log lines)
    out of autoseg's output while it runs; its errors still raise."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        registration.setLevel(level)


class OnnxNetwork(nn.Module):
    """An ONNX graph as a network: ``(B, C, *patch)`` float32 windows -> ``(B, K, *patch)`` float32 logits
    on the windows' device, computed by onnxruntime (the CUDA provider for a CUDA ``device`` when onnxruntime
    has it, else the CPU provider, with torch's thread count and no spinning threads)."""

    def __init__(self, model: bytes, device: str | torch.device, where: str) -> None:
        super().__init__()
        runtime = _import_optional(
            "onnxruntime", f"{where}: an ONNX model needs onnxruntime, which is not installed; {INSTALL_HINT}"
        )
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" in runtime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                logger.warning("%s: onnxruntime has no CUDA provider here; running on the CPU", where)
        options = runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # each fold has its own session and thread pool; spinning threads of one fold's pool would take the
        # cores from the next fold's and from the blending between calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = runtime.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime's pybind errors (InvalidProtobuf, Fail...) share no base
            raise ModelError(f"{where}: not a loadable ONNX graph ({str(error)[:200]})") from None
        self.where = where
        self.input_name = str(self.session.get_inputs()[0].name)
        self.providers = tuple(self.session.get_providers())

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        array = windows.detach().float().cpu().contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits).to(windows.device)


def _import_optional(name: str, message: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise (ModelError(message) if name == "onnxruntime" else UsageError(message)) from None
