"""Export of the deploy form: ONNX (``onnx`` is needed to export, ``onnxruntime`` to check)."""
from .onnx import (  # noqa: F401
    DETECTION_OUTPUTS,
    INPUT_NAME,
    RAW_OUTPUTS,
    DeployDetector,
    compare_with_pytorch,
    disable_grid_sample,
    export_onnx,
    onnxruntime_session,
    random_images,
    toy_images,
)
