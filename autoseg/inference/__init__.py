"""Predict: segment new scans with trained folds, in the input's exact geometry.

Reads a model (a work directory's ``plans.json``, ``trained/<configuration>/fold_<k>/checkpoint_*.pt``,
``postprocessing.json``, ``training_reference.json``, or an exported model zip) and images (NIfTI, NRRD, MHA,
DICOM series); writes per case the label map and the requested outputs (DICOM SEG, RTSTRUCT, probabilities,
instances, report) and ``predict.json``. Modules: ``inputs`` (find and read cases), ``sliding_window``
(Gaussian-weighted windows), ``ensemble`` (folds x mirrors, probabilities -> labels), ``model_file`` (work
directory or zip, weights only; an ensemble of configurations per file), ``model_layout`` (what a model file's
manifest says it holds), ``model_archive`` (the verified zip container), ``onnx_runtime`` (ONNX export, and
ONNX graphs run by onnxruntime as networks), ``outputs`` (every output format), ``stage``
(:func:`run_predict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.inference.ensemble import InferenceSettings, labels_from_probabilities, predict_probabilities
    from autoseg.inference.inputs import InputCase, find_input_cases, read_input_case
    from autoseg.inference.model_file import TrainedModel, export_model, load_model
    from autoseg.inference.outputs import OutputOptions
    from autoseg.inference.sliding_window import sliding_window
    from autoseg.inference.stage import PredictRequest, predict_case, run_predict

__all__ = [
    "InferenceSettings",
    "InputCase",
    "OutputOptions",
    "PredictRequest",
    "TrainedModel",
    "export_model",
    "find_input_cases",
    "labels_from_probabilities",
    "load_model",
    "predict_case",
    "predict_probabilities",
    "read_input_case",
    "run_predict",
    "sliding_window",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "PredictRequest": "stage",
        "predict_case": "stage",
        "run_predict": "stage",
        "InferenceSettings": "ensemble",
        "predict_probabilities": "ensemble",
        "labels_from_probabilities": "ensemble",
        "TrainedModel": "model_file",
        "export_model": "model_file",
        "load_model": "model_file",
        "OutputOptions": "outputs",
        "InputCase": "inputs",
        "find_input_cases": "inputs",
        "read_input_case": "inputs",
        "sliding_window": "sliding_window",
    },
)
