#!/usr/bin/env python
"""Run a model on images or a video; write the drawn detections and a JSON of them.

    bash tools/env.sh python tools/demo.py --config-file configs/quickstart/rtdetrv2_r18_toy.py \
        --weights output/quickstart_rtdetrv2_r18_toy/model_final.pth \
        --input ~/.cache/dfine/datasets/toy_shapes_v1/val --output output/demo [key=value ...]

``--input`` is an image, a folder (its images, not recursive), a glob pattern (quote it) or a
video file. ``--weights`` defaults to the config's ``train.init_checkpoint`` (an override
``train.init_checkpoint=...`` works too); the checkpoint's EMA weights are used when it has them.

Images: ``<output>/<image name>.jpg``, drawn with detectron2's ``Visualizer``, and
``<output>/detections.json``: ``{"config", "weights", "score_threshold", "class_names", "images":
[{"file", "height", "width", "detections": [{"box": [x1, y1, x2, y2], "score", "label",
"class_name"}, ...]}, ...]}`` (boxes in absolute pixels of the original image).

A video: ``<output>/<video name>.mp4`` (mp4v) and ``detections.json`` with ``"video"``, ``"fps"``
and ``"frames"``: ``[{"frame", "height", "width", "detections"}, ...]``.
"""
import argparse
import glob
import json
import logging
import os
import sys
from typing import Dict, Iterator, List

import cv2
import numpy as np
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from dfine.data.mapper import missing_image_error, read_rgb_image
from dfine.data.validation import IMAGE_EXTENSIONS
from dfine.engine import Predictor

logger = logging.getLogger("dfine.demo")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def list_images(input_path: str) -> List[str]:
    """The image files of a folder (sorted), a single file, or the matches of a glob pattern. A
    path that is neither a file, a folder nor a pattern gets the predictor's missing-image error."""
    path = os.path.expanduser(input_path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    elif os.path.isfile(path):
        files = [path]
    elif not any(c in path for c in "*?["):
        raise missing_image_error(input_path)
    else:
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"No image found at {input_path!r} (a file, a folder of images or a glob pattern).")
    return files


def output_names(files: List[str]) -> List[str]:
    """``<name>.jpg`` per input file, made unique with a counter where two inputs share a name."""
    names, used = [], set()
    for file in files:
        stem = os.path.splitext(os.path.basename(file))[0]
        name, count = f"{stem}.jpg", 1
        while name in used:
            name, count = f"{stem}_{count}.jpg", count + 1
        used.add(name)
        names.append(name)
    return names


def check_not_overwriting(inputs: List[str], outputs: List[str]) -> None:
    """Refuse an output folder where a drawing would replace one of the inputs."""
    overwritten = {os.path.abspath(f) for f in inputs} & {os.path.abspath(f) for f in outputs}
    if overwritten:
        raise ValueError(f"The output would overwrite the input {sorted(overwritten)[0]!r}: choose another --output.")


def detection_records(predictor: Predictor, instances) -> List[Dict]:
    """One ``{"box", "score", "label", "class_name"}`` per detection."""
    fields = predictor.to_dict(instances)
    return [
        {"box": box, "score": score, "label": label, "class_name": name}
        for box, score, label, name in zip(fields["boxes"], fields["scores"], fields["labels"], fields["class_names"])
    ]


def draw(predictor: Predictor, rgb: np.ndarray, instances) -> np.ndarray:
    """The detections drawn on ``rgb``, as a BGR image for OpenCV."""
    drawing = Visualizer(rgb, predictor.metadata).draw_instance_predictions(instances).get_image()
    return np.ascontiguousarray(drawing[:, :, ::-1])


def batches(items: Iterator, size: int) -> Iterator[list]:
    """Lists of ``size`` consecutive items (the last one possibly shorter), read lazily."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_on_images(predictor: Predictor, files: List[str], output_dir: str) -> List[Dict]:
    records = []
    names = output_names(files)
    check_not_overwriting(files, [os.path.join(output_dir, name) for name in names])
    for batch in batches(zip(files, names), predictor.batch_size):
        images = [read_rgb_image(file) for file, _ in batch]
        for (file, name), rgb, instances in zip(batch, images, predictor(images)):
            out = os.path.join(output_dir, name)
            if not cv2.imwrite(out, draw(predictor, rgb, instances)):
                raise OSError(f"Could not write {out}")
            height, width = rgb.shape[:2]
            records.append(
                {"file": file, "height": height, "width": width, "detections": detection_records(predictor, instances)}
            )
        logger.info("%d / %d images", len(records), len(files))
    return records


def video_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The frames of a video as RGB arrays."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield np.ascontiguousarray(frame[:, :, ::-1])


def run_on_video(predictor: Predictor, video: str, output_dir: str) -> Dict:
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise OSError(f"Cannot open video file {video!r}.")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    out = os.path.join(output_dir, os.path.splitext(os.path.basename(video))[0] + ".mp4")
    check_not_overwriting([video], [out])
    writer, frames = None, []
    try:
        for batch in batches(video_frames(capture), predictor.batch_size):
            for rgb, instances in zip(batch, predictor(batch)):
                height, width = rgb.shape[:2]
                if writer is None:
                    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    if not writer.isOpened():
                        raise OSError(f"Cannot write video file {out!r} (mp4v).")
                writer.write(draw(predictor, rgb, instances))
                frames.append({"frame": len(frames), "height": height, "width": width,
                               "detections": detection_records(predictor, instances)})
            logger.info("%d frames", len(frames))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not frames:
        raise OSError(f"No frame could be read from video file {video!r}.")
    return {"video": video, "fps": fps, "frames": frames}


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True, help="an image, a folder of images, a glob pattern or a video")
    parser.add_argument("--output", required=True, help="folder for the drawings and detections.json")
    parser.add_argument("--weights", default=None, help="checkpoint; default: the config's train.init_checkpoint")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring above it")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    setup_logger(name="dfine")
    setup_logger(name="fvcore")

    input_path = os.path.expanduser(args.input)
    is_video = os.path.isfile(input_path) and input_path.lower().endswith(VIDEO_EXTENSIONS)
    files = None if is_video else list_images(args.input)  # a wrong --input stops before the model is built
    predictor = Predictor(
        args.config_file, weights=args.weights, overrides=args.opts, device=args.device,
        score_threshold=args.score_threshold, batch_size=args.batch_size, array_format="RGB",
    )
    os.makedirs(args.output, exist_ok=True)
    result = {
        "config": args.config_file,
        "weights": predictor.weights,
        "score_threshold": args.score_threshold,
        "class_names": predictor.class_names,
    }
    if is_video:
        result.update(run_on_video(predictor, input_path, args.output))
    else:
        result["images"] = run_on_images(predictor, files, args.output)
    json_file = os.path.join(args.output, "detections.json")
    with open(json_file, "w") as f:
        json.dump(result, f)
    logger.info("Wrote the drawings and %s", json_file)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
