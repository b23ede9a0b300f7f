"""The Detectron2 meta-architecture shared by RT-DETRv2, D-FINE, DEIM, DEIMv2 and DINO."""
from typing import Dict, List

import torch
from torch import nn

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances

from .decoder.outputs import DecoderOutput, Predictions
from .layers.box_ops import box_cxcywh_to_pixel_xyxy, box_xyxy_to_cxcywh
from .postprocess import topk_detections

__all__ = ["RealTimeDETR", "check_connections"]


def check_connections(backbone: nn.Module, encoder: nn.Module, decoder: nn.Module) -> None:
    """Fail at build time, naming both sides, when the channels or strides of the maps one part
    outputs are not what the next part expects (else the first forward fails inside a conv, or the
    memory levels are silently misaligned). Values a part does not state are not checked."""
    links = (
        # (what, producer, its attribute, consumer, its attribute)
        ("channels", "backbone", backbone, "out_channels", "encoder", encoder, "in_channels"),
        ("strides", "backbone", backbone, "out_strides", "encoder", encoder, "feat_strides"),
        (
            "channels",
            "encoder",
            encoder,
            "out_channels",
            "decoder.input_proj",
            getattr(decoder, "input_proj", None),
            "in_channels",
        ),
        (
            "strides",
            "encoder",
            encoder,
            "out_strides",
            "decoder.input_proj",
            getattr(decoder, "input_proj", None),
            "in_strides",
        ),
    )
    errors = []
    for what, producer, source, produced_attr, consumer, target, expected_attr in links:
        produced, expected = getattr(source, produced_attr, None), getattr(target, expected_attr, None)
        if produced is not None and expected is not None and [int(v) for v in produced] != [int(v) for v in expected]:
            errors.append(f"the {producer} outputs maps with {what} {list(produced)} ({producer}.{produced_attr}), "
                          f"the {consumer} expects {list(expected)} ({consumer}.{expected_attr})")
    if errors:
        raise ValueError("The parts of the model do not fit together: " + "; ".join(errors)
                         + ". Make the config values agree.")


@META_ARCH_REGISTRY.register()
class RealTimeDETR(nn.Module):
    """``backbone -> encoder -> decoder`` detector with a set criterion (the real-time DETR family).

    Submodule names (``backbone``, ``encoder``, ``decoder``) are those of the official models, so
    official state dicts and their regex parameter groups apply unchanged.

    Input (Detectron2 contract): ``list[dict]`` with ``"image"`` (CHW uint8 tensor in
    ``input_format``), optional ``"height"``/``"width"`` (original size), and in training
    ``"instances"`` with ``gt_boxes`` (absolute XYXY in the given image) and ``gt_classes``
    (contiguous ids ``0..num_classes-1``).

    Training returns a dict of already-weighted losses. Training inputs may carry ``"epoch"`` (our
    data loader sets it on every sample); the criterion gets the batch's largest (0 without any),
    for epoch-dependent matching (DEIMv2). Inference returns
    ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` in original-image coordinates,
    the top ``num_top_queries`` (query, class) pairs per image like the official post-processor
    (no NMS; boxes are not clipped, so COCO AP equals the official evaluation), optionally
    filtered by ``score_threshold`` for demos.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        criterion: nn.Module,
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(255.0, 255.0, 255.0),
        input_format: str = "RGB",
        size_divisibility: int = 32,
        num_top_queries: int = 300,
        score_threshold: float = 0.0,
    ):
        """
        Args:
            pixel_mean, pixel_std: per-channel normalisation in RGB order. The official weights
                expect RGB in [0, 1] (mean 0, std 255); DINOv3 models add ImageNet statistics.
            input_format: channel order of the incoming images, "RGB" or "BGR". The network
                always sees RGB, the order all official weights were trained with.
            size_divisibility: images of a batch are zero-padded (bottom/right) to a common size
                divisible by this; fixed-size inputs (the official 640x640) are never padded.
        """
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        check_connections(backbone, encoder, decoder)
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.criterion = criterion
        self.input_format = input_format
        self.size_divisibility = size_divisibility
        self.num_top_queries = num_top_queries
        self.score_threshold = score_threshold
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and batch the images; the result is RGB, float, padded bottom/right."""
        images = []
        for x in batched_inputs:
            image = x["image"].to(self.device, non_blocking=True)
            if self.input_format == "BGR":
                image = image.flip(0)
            images.append(self.normalize(image.to(self.pixel_mean.dtype)))
        return ImageList.from_tensors(images, self.size_divisibility)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB float pixels ``[..., 3, H, W]`` -> the backbone's input (``pixel_mean``, ``pixel_std``)."""
        return (images - self.pixel_mean) / self.pixel_std

    @property
    def image_relative_boxes(self) -> bool:
        """Whether the decoder's boxes are normalised by each image's own size (DINO and the DETRs
        before it) rather than by the padded batch's (the RT-DETR family)."""
        return bool(getattr(self.decoder, "image_relative_boxes", False))

    def detections(self, predictions: Predictions, height: int, width: int):
        """The ``num_top_queries`` best (query, class) pairs of the decoder's final ``predictions``
        (``DecoderOutput.final``): ``(scores [B, k], labels [B, k], boxes [B, k, 4])``, boxes in
        absolute XYXY pixels of the ``height x width`` frame the boxes are normalised in (the
        padded input, or the image for image-relative boxes)."""
        scores, labels, boxes = topk_detections(predictions.logits, predictions.boxes, self.num_top_queries)
        return scores, labels, box_cxcywh_to_pixel_xyxy(boxes, height, width)

    def features(self, images: ImageList):
        """The encoder's maps of a batch and its padding mask (None without padding)."""
        padding_mask = self.padding_mask(images)
        feats = self.backbone(images.tensor)
        if getattr(self.encoder, "uses_padding_mask", False):
            return self.encoder(feats, padding_mask=padding_mask), padding_mask
        return self.encoder(feats), padding_mask

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        feats, padding_mask = self.features(images)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            outputs = self.decoder(feats, targets, padding_mask=padding_mask)
            # Python ints from the loader: no device synchronisation.
            epoch = max(int(x.get("epoch", 0)) for x in batched_inputs)
            return self.criterion(outputs, targets, epoch=epoch)
        outputs = self.decoder(feats, padding_mask=padding_mask)
        return self.postprocess(outputs, batched_inputs, images)

    @staticmethod
    def padding_mask(images: ImageList):
        """``[B, H, W]`` bool, True on the padding; None when no image of the batch is padded
        (always the case at the official fixed input size)."""
        height, width = images.tensor.shape[-2:]
        if all(tuple(size) == (height, width) for size in images.image_sizes):
            return None
        mask = torch.ones(len(images), height, width, dtype=torch.bool, device=images.tensor.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return mask

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Ground truth as the decoder and criterion expect it: labels and cxcywh boxes
        normalised by the frame in which the decoder predicts (the padded batch, or each image)."""
        # In the model's dtype (float64 for the parity tests).
        dtype = self.pixel_mean.dtype
        targets = []
        num_classes = self.decoder.num_classes
        for x, image_size in zip(batched_inputs, images.image_sizes):
            height, width = image_size if self.image_relative_boxes else images.tensor.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=dtype, device=self.device)
            classes = x["instances"].gt_classes
            # Checked where the loader left them (the CPU, no device synchronisation): on the
            # device an out-of-range class would be an opaque assert deep in the criterion.
            if (
                classes.device.type == "cpu"
                and len(classes)
                and not 0 <= int(classes.min()) <= int(classes.max()) < num_classes
            ):
                name = x.get("file_name", x.get("image_id", "?"))
                raise ValueError(
                    f"Image {name!r} has class ids {sorted(set(classes.tolist()))}, "
                    f"outside the model's {num_classes} classes 0..{num_classes - 1}: map the data set's category "
                    "ids to contiguous classes (register it with dfine.data) and set model.decoder.num_classes."
                )
            # The tensors themselves, not Instances.to(), whose Boxes would round them to float32.
            boxes = x["instances"].gt_boxes.tensor.to(device=self.device, dtype=dtype) / scale
            labels = classes.to(self.device).long()
            targets.append({"labels": labels, "boxes": box_xyxy_to_cxcywh(boxes)})
        return targets

    def postprocess(self, outputs: DecoderOutput, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        relative = self.image_relative_boxes
        # Image-relative boxes scale straight to the output size (as the official post-processors).
        scores, labels, boxes = self.detections(outputs.final, 1, 1) if relative else \
            self.detections(outputs.final, *images.tensor.shape[-2:])
        results = []
        for i, (x, (input_h, input_w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            out_h, out_w = x.get("height", input_h), x.get("width", input_w)
            scale = [out_w, out_h] if relative else [out_w / input_w, out_h / input_h]
            image_boxes = boxes[i] * boxes.new_tensor(scale * 2)
            instances = Instances((out_h, out_w))
            instances.pred_boxes = Boxes(image_boxes)
            instances.scores = scores[i]
            instances.pred_classes = labels[i]
            if self.score_threshold > 0:
                instances = instances[instances.scores > self.score_threshold]
            results.append({"instances": instances})
        return results

    def deploy(self) -> "RealTimeDETR":
        """Switch to eval mode and fuse re-parameterisable blocks for inference and export."""
        self.eval()
        for part in (self.backbone, self.encoder, self.decoder):
            if hasattr(part, "convert_to_deploy"):
                part.convert_to_deploy()
        return self
