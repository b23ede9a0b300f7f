"""ONNX export of a detector's deploy form, and its check against PyTorch with onnxruntime.

The exported graph (one input, a fixed image size, a dynamic batch):

* input ``images``: ``float32 [B, 3, H, W]``, **RGB, pixel values in [0, 255]** (a uint8 image cast to
  float, not rescaled), whatever the config's ``input_format``. The graph normalises with the model's
  ``pixel_mean`` / ``pixel_std`` with ``RealTimeDETR.normalize``, as ``preprocess_image`` does, so the official
  weights' "RGB in [0, 1]" (mean 0, std 255) and ImageNet statistics are both inside the graph.
  ``H, W`` are fixed at export (the config's eval size); ``B`` is dynamic.
* without the post-processor (``RAW_OUTPUTS``): ``pred_logits float32 [B, Q, K]`` (class logits;
  scores are their sigmoid) and ``pred_boxes float32 [B, Q, 4]`` (normalised cxcywh in the input).
* with it (``DETECTION_OUTPUTS``): ``labels int64 [B, N]``, ``boxes float32 [B, N, 4]`` (absolute XYXY
  in the pixels of the ``H x W`` input) and ``scores float32 [B, N]``: the ``N = min(num_top_queries,
  Q * K)`` best (query, class) pairs by sigmoid score, best first, without NMS or score threshold, as
  the official deploy post-processor. Unlike the official one, the graph takes no
  ``orig_target_sizes``: to map boxes to an original ``w0 x h0`` image, multiply them by
  ``(w0 / W, h0 / H, w0 / W, h0 / H)``.

``onnx`` and ``onnxruntime`` are imported only by the functions that need them.
"""
import warnings
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from ..data.toy_shapes import render_toy_image
from ..modeling.decoder.msda import MSDeformableAttention
from ..modeling.decoder.outputs import Predictions
from ..modeling.layers.box_ops import box_cxcywh_to_pixel_xyxy
from ..modeling.postprocess import topk_detections

__all__ = [
    "DETECTION_OUTPUTS",
    "INPUT_NAME",
    "RAW_OUTPUTS",
    "DeployDetector",
    "compare_with_pytorch",
    "disable_grid_sample",
    "export_onnx",
    "onnxruntime_session",
    "random_images",
    "toy_images",
]

INPUT_NAME = "images"
RAW_OUTPUTS = ("pred_logits", "pred_boxes")
DETECTION_OUTPUTS = ("labels", "boxes", "scores")


def disable_grid_sample(model: nn.Module) -> int:
    """Make ``model``'s deformable attention sample without ``grid_sample``, in place.

    Every :class:`MSDeformableAttention` with the bilinear ``"default"`` method switches to
    ``"bilinear_gather"``, the same bilinear samples taken by a gather (equal up to float rounding),
    for runtimes that lack GridSample or compile it wrongly. ``"discrete"`` modules gather already
    and are left as they are. Returns the number of modules switched.
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, MSDeformableAttention) and module.method == "default":
            module.method = "bilinear_gather"
            switched += 1
    return switched


class DeployDetector(nn.Module):
    """A :class:`~dfine.modeling.RealTimeDETR` on an image tensor, returning the module docstring's
    outputs as a tuple (what ``torch.onnx.export`` traces).

    Args:
        model: the detector, in eval mode (normally its deploy form, ``model.deploy()``).
        postprocess: return ``(labels, boxes, scores)`` instead of ``(pred_logits, pred_boxes)``.
    """

    def __init__(self, model: nn.Module, postprocess: bool = True):
        super().__init__()
        self.model = model
        self.postprocess = postprocess

    @property
    def output_names(self) -> Tuple[str, ...]:
        return DETECTION_OUTPUTS if self.postprocess else RAW_OUTPUTS

    def raw_outputs(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``images [B, 3, H, W]`` RGB 0-255 -> ``(pred_logits [B, Q, K], pred_boxes [B, Q, 4])``."""
        predictions = self._predictions(images)
        return predictions.logits, predictions.boxes

    def _predictions(self, images: torch.Tensor) -> Predictions:
        model = self.model
        return model.decoder(model.encoder(model.backbone(model.normalize(images)))).final

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        predictions = self._predictions(images)
        if not self.postprocess:
            return predictions.logits, predictions.boxes
        scores, labels, boxes = self.model.detections(predictions, *images.shape[-2:])
        return labels, boxes, scores


def export_onnx(model: nn.Module, path: str, image_size: Sequence[int], postprocess: bool = True,
                grid_sample: bool = True, opset: int = 17) -> DeployDetector:
    """Export ``model``'s deploy form to ``path`` (see the module docstring for the graph).

    ``model`` is switched to its deploy form in place (``model.deploy()``), and without
    ``grid_sample`` its deformable attention to the gather sampler (:func:`disable_grid_sample`).
    The graph is traced (on the model's device) by the TorchScript-based exporter
    (``dynamo=False``), which needs no package beyond ``onnx``, with the batch axis of every input
    and output dynamic.

    Args:
        image_size: ``(H, W)`` of the input, fixed in the graph.
        opset: ONNX opset; at least 16 when ``grid_sample`` (GridSample).

    Returns:
        the traced :class:`DeployDetector`, to compare the graph with (:func:`compare_with_pytorch`).
    """
    import onnx

    model.deploy()
    if not grid_sample:
        disable_grid_sample(model)
    detector = DeployDetector(model, postprocess).eval()
    height, width = image_size
    example = random_images(1, (height, width)).to(model.pixel_mean.device)
    names = (INPUT_NAME, *detector.output_names)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that shapes become constants: only H and W may, and the batch axis is
        # checked by running the graph at other batch sizes. The exporter's own deprecation notice
        # says that the dynamo exporter is the default since PyTorch 2.9; this one is kept on purpose.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based", category=DeprecationWarning)
        # D-FINE's bin positions (weighting_function's flip, a slice of step -1) are then computed
        # in the graph instead of folded into a constant: the same values, a few scalar operations.
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(detector, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(detector.output_names),
                          dynamic_axes={name: {0: "batch"} for name in names})
    onnx.checker.check_model(str(path))
    return detector


def onnxruntime_session(path: str, threads: int = 0):
    """A CPU onnxruntime session of the graph at ``path``; ``threads=0`` lets onnxruntime choose."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_images(batch_size: int, image_size: Sequence[int], seed: int = 0) -> torch.Tensor:
    """``[B, 3, H, W]`` float32 of uniform integer pixel values in [0, 255]: the graph's input format."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch_size, 3, *image_size), generator=generator).float()


def toy_images(batch_size: int, image_size: Sequence[int], seed: int = 0) -> torch.Tensor:
    """``[B, 3, H, W]`` images of the toy data set (``dfine.data.toy_shapes``: textured backgrounds,
    shapes, clutter): natural-looking statistics without a data set on disk."""
    height, width = image_size
    images = []
    for index in range(batch_size):
        image, _ = render_toy_image(np.random.default_rng([seed, index]), max(height, width))
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
    return torch.stack(images).float()


@torch.no_grad()
def compare_with_pytorch(detector: DeployDetector, session, images: torch.Tensor) -> Dict[str, float]:
    """Largest absolute difference between the graph (an onnxruntime ``session``) and ``detector``
    in PyTorch on ``images``, per output (boxes of detections in pixels).

    The order of the queries is a top-k order, which near-tied scores may permute between two
    runtimes, so outputs are compared as sets rather than element by element:

    * raw outputs: every query (its logits and box together) of either side is compared with the
      closest query of the other side;
    * detections: ``scores`` element by element (both are sorted, so this also checks which pairs
      were selected), and every exported detection with the PyTorch (query, class) pair of its
      class closest in score and box (``boxes``, and its score difference counts in ``scores``).
      A label outside ``[0, K)`` is an error.
    """
    exported = [torch.from_numpy(x) for x in session.run(None, {INPUT_NAME: images.numpy()})]
    images = images.to(detector.model.pixel_mean.device)
    logits, boxes = (x.double().cpu() for x in detector.raw_outputs(images))
    if not detector.postprocess:
        references = (logits, boxes)
    else:
        ref_scores, ref_labels, ref_boxes = topk_detections(logits, boxes, detector.model.num_top_queries)
        references = (ref_labels, ref_boxes, ref_scores)
    for name, output, reference in zip(detector.output_names, exported, references):
        dtype = torch.float32 if reference.is_floating_point() else reference.dtype
        if output.shape != reference.shape or output.dtype != dtype:
            raise ValueError(f"The exported {name} is {output.dtype} {list(output.shape)}, "
                             f"PyTorch's {dtype} {list(reference.shape)}")
    if not detector.postprocess:
        return _query_differences({name: x.double() for name, x in zip(RAW_OUTPUTS, exported)},
                                  dict(zip(RAW_OUTPUTS, references)))

    labels, pixel_boxes, scores = exported[0], exported[1].double(), exported[2].double()
    num_queries, num_classes = logits.shape[1:]
    if ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(f"The exported labels are not class ids in [0, {num_classes}): {labels}")
    # For each exported detection, every query's score for its class and every query's box.
    pair_scores = logits.sigmoid().gather(2, labels[:, None, :].expand(-1, num_queries, -1))  # [B, Q, N]
    score_gap = (pair_scores - scores[:, None, :]).abs()
    box_gap = torch.cdist(box_cxcywh_to_pixel_xyxy(boxes, *images.shape[-2:]), pixel_boxes, p=float("inf"))  # [B, Q, N]
    closest = torch.maximum(score_gap, box_gap).argmin(1, keepdim=True)
    return {
        "boxes": _largest(box_gap.gather(1, closest)),
        "scores": max(_largest((scores - references[2]).abs()), _largest(score_gap.gather(1, closest))),
    }


def _query_differences(outputs: Dict[str, torch.Tensor], references: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Per output ``[B, Q, C]``, the largest difference between the queries of one side and the
    closest query (largest difference over all outputs) of the other side, in both directions."""
    gaps = {name: torch.cdist(outputs[name], references[name], p=float("inf")) for name in outputs}  # [B, Q, Q]
    distance = torch.stack(list(gaps.values())).amax(0)
    largest = dict.fromkeys(gaps, 0.0)
    for dim in (2, 1):  # the closest PyTorch query of each exported one, then the other way
        closest = distance.argmin(dim, keepdim=True)
        for name, gap in gaps.items():
            largest[name] = max(largest[name], _largest(gap.gather(dim, closest)))
    return largest


def _largest(values: torch.Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0
