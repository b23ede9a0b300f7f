from .meta_arch import RealTimeDETR  # noqa: F401
from .postprocess import topk_detections  # noqa: F401
