#!/usr/bin/env python
"""Export the deploy form of a config's model to ONNX, then check the graph against PyTorch.

    bash tools/env.sh python tools/export_onnx.py --config-file configs/dfine_hgnetv2_s.py \
        --weights output/dfine_hgnetv2_s/model_final.pth --output dfine_hgnetv2_s.onnx \
        [--no-postprocess] [--no-grid-sample] [--opset 17] [--size 640 | --size 480,640] \
        [--tolerance 1e-3] [--check-image a.jpg --check-image b.jpg] [--skip-check] [key=value ...]

The graph (``dfine.export.onnx`` documents it): input ``images`` float32 ``[B, 3, H, W]``, RGB
pixel values in [0, 255], normalised inside the graph; ``B`` dynamic, ``H x W`` fixed to ``--size``
(``H`` or ``H,W``; default: the test mapper's ``image_size``, the size evaluation runs at; the
model's ``eval_spatial_size`` follows it). Outputs ``labels`` int64 ``[B, N]``, ``boxes`` ``[B, N, 4]``
(absolute XYXY in the input's pixels) and ``scores`` ``[B, N]``, the top ``num_top_queries``
detections; with ``--no-postprocess`` the raw ``pred_logits`` ``[B, Q, K]`` and ``pred_boxes``
``[B, Q, 4]`` (normalised cxcywh). ``--no-grid-sample`` replaces GridSample in the deformable
attention by gathers (same result up to float rounding) for runtimes that lack or mis-compile it.

``--weights`` defaults to the config's ``train.init_checkpoint`` (the override
``train.init_checkpoint=...`` works too); the checkpoint's EMA weights are exported when it has
them; without any checkpoint the randomly initialised model is exported. ``--output`` defaults to
``<train.output_dir>/model.onnx``.

The check runs the graph with onnxruntime (CPU) and the same deploy model in PyTorch on random
pixels, on generated toy-shapes images and on the ``--check-image`` files (resized to the input
size), at batch 1 and 3 (``--batch-sizes``), prints the largest absolute difference of every output (boxes
in pixels; queries and detections are matched as sets, since near-tied scores may order them
differently) and exits with status 1 when one exceeds ``--tolerance``. Without a checkpoint the
result is only reported: randomly initialised models give all queries nearly the same score, so
the two runtimes break ties in the query selection differently and keep different queries.
"""
import argparse
import logging
import os
import sys

import cv2
import torch
from detectron2.config import instantiate

from dfine.config import eval_input_size, load_config
from dfine.data.mapper import read_rgb_image
from dfine.checkpoint import load_ema_or_model_weights
from dfine.export import compare_with_pytorch, export_onnx, onnxruntime_session, random_images, toy_images

logger = logging.getLogger("dfine.export_onnx")


def int_list(text: str):
    """``"480,640"`` -> ``[480, 640]``."""
    return [int(x) for x in text.split(",")]


def export_size(cfg, size):
    """``(H, W)``: ``--size`` (one value for a square), else the test mapper's ``image_size``."""
    if size:
        return (size[0], size[-1])
    return eval_input_size(cfg)


def file_images(files, batch_size, image_size):
    """The first ``batch_size`` of ``files`` (repeated when fewer), RGB, resized to ``image_size``."""
    height, width = image_size
    images = [cv2.resize(read_rgb_image(files[i % len(files)]), (width, height), interpolation=cv2.INTER_LINEAR)
              for i in range(batch_size)]
    return torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in images]).float()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default=None, help="checkpoint; default: the config's train.init_checkpoint")
    parser.add_argument("--output", default=None, help="ONNX file; default: <train.output_dir>/model.onnx")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--size", type=int_list, default=None, metavar="H[,W]",
                        help="input size; default: the test mapper's image_size")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="output the raw pred_logits and pred_boxes instead of the top-k detections")
    parser.add_argument("--no-grid-sample", action="store_true",
                        help="deformable attention by gathers instead of GridSample")
    parser.add_argument("--skip-check", action="store_true", help="export only, without the onnxruntime check")
    parser.add_argument("--check-image", action="append", default=[], metavar="FILE",
                        help="an image file to check on, besides generated ones (repeatable)")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 3], metavar="B[,B...]",
                        help="batch sizes of the check")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest absolute difference accepted by the check (boxes in pixels)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) > 2:
        parser.error(f"--size is H or H,W, got {args.size}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for file in args.check_image:  # a missing or undecodable image stops the tool before the export
        read_rgb_image(file)

    cfg = load_config(args.config_file, args.opts)
    size = export_size(cfg, args.size)
    # Position embeddings and anchors are precomputed for the export size instead of traced.
    for part in (cfg.model.encoder, cfg.model.decoder):
        if "eval_spatial_size" in part:
            part.eval_spatial_size = list(size)
    model = instantiate(cfg.model).eval()
    weights = cfg.train.init_checkpoint if args.weights is None else args.weights
    if weights:
        logger.info("Loaded the %s weights of %s.", load_ema_or_model_weights(model, weights), weights)
    else:
        logger.warning("No checkpoint (--weights or train.init_checkpoint): exporting random weights. Their "
                       "query scores are nearly all equal, so the check is only reported (see --help).")
    output = args.output or os.path.join(cfg.train.output_dir, "model.onnx")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

    detector = export_onnx(model, output, size, postprocess=not args.no_postprocess,
                           grid_sample=not args.no_grid_sample, opset=args.opset)
    print(f"exported {output}: images float32 [batch, 3, {size[0]}, {size[1]}] (RGB, 0-255) -> "
          f"{', '.join(detector.output_names)} (opset {args.opset}"
          f"{', no GridSample' if args.no_grid_sample else ''})")
    if args.skip_check:
        return 0

    session = onnxruntime_session(output)
    sources = {"random": random_images, "toy": toy_images}
    if args.check_image:
        sources["files"] = lambda batch, image_size: file_images(args.check_image, batch, image_size)
    worst = 0.0
    for name, make in sources.items():
        for batch in args.batch_sizes:
            diffs = compare_with_pytorch(detector, session, make(batch, size))
            worst = max(worst, *diffs.values())
            print(f"check {name} batch {batch}: max |onnx - torch| "
                  + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    ok = worst <= args.tolerance
    print(f"largest absolute difference {worst:.3g} ({'within' if ok else 'ABOVE'} tolerance {args.tolerance:g})")
    if not ok:
        logger.warning("Differences far above float rounding on some inputs only usually come from near-tied "
                       "scores in a top-k selection, which onnxruntime and PyTorch may break differently; an "
                       "export error shows on every input.")
    return 0 if ok or not weights else 1


if __name__ == "__main__":
    sys.exit(main())
