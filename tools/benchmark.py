#!/usr/bin/env python
"""Measure a config; every result is one JSON line on stdout (medians over repeats).

    bash tools/env.sh python tools/benchmark.py --config-file configs/rtdetrv2_r50.py \
        [--what params,flops,latency,train,loader] [--device auto] [--repeats 5] [--batch-size 4] [key=value ...]

Config overrides (``key=value``) apply as in train_net.py, e.g.
``dataloader.train.dataset.names=toy_shapes_train``. Each ``--what`` item prints lines with
``"benchmark": <item>`` and ``"config"``:

* ``params``: ``params`` (all), ``trainable``, and ``deploy_params`` after ``model.deploy()``.
* ``flops``: fvcore's count of the deploy model on one image of the test size (the test
  mapper's ``image_size``): ``gmacs`` (fvcore counts one multiply-add as one) and ``gflops`` =
  2 x ``gmacs`` (the convention of the official READMEs' calflops numbers); ``uncounted_ops``
  lists the ops fvcore has no formula for (their cost is not included).
* ``latency``: inference time of ``model(batch)`` (preprocessing and post-processing included) in
  eval mode without gradients, eager (``form: "eager"``) and after ``deploy()`` (``"deploy"``),
  for batch 1 and ``--batch-size``: ``ms`` (median), ``ms_all``, ``images_per_s``; on CUDA the
  clock waits for the device. When onnx and onnxruntime are installed, also the deploy form
  exported to ONNX with its post-processor (``dfine.export``) run by onnxruntime on the CPU with
  as many threads as PyTorch's (``form: "onnxruntime"``, ``device: "cpu"``).
* ``train``: one training step of train_net.py's ``Trainer`` (forward, loss, backward, gradient
  clipping, optimizer step, as the config's ``optimizer`` and ``train.clip_grad`` / ``train.amp``
  set them) on ``--batch-size``
  random images of the training size (the train mapper's ``image_size``) with 1-8 random boxes
  each: ``ms`` (median), ``ms_all``, ``images_per_s``.
* Every ``latency`` and ``train`` line has ``peak_memory_mb``: on CUDA the peak allocated device
  memory of that measurement; on the CPU the process's peak resident memory so far (it never
  decreases, so it is an upper bound for the measurement).
* ``loader``: training-loader throughput in images/s from the config's ``dataloader.train``, one
  line per ``--variants`` item: ``full`` (the RT-DETR augmentations, no Dense O2O), ``mosaic`` /
  ``mosaic_cache`` (Mosaic on every sample, cache off / on), ``mixup`` (MixUp on every batch),
  ``dense_o2o`` / ``dense_o2o_cache`` (the config's Dense O2O stage as it is). Each repeat builds
  a fresh loader, skips ``--warmup`` batches (worker start-up) and times ``--batches``. Fields:
  ``variant``, ``images_per_s`` (median), ``images_per_s_all``, ``batch_size``, ``num_workers``,
  ``image_size``, ``batches``, ``repeats``.
* ``loader_memory``: host memory of one long run of the training loader (``--variants``, first
  item; ``dense_o2o_cache`` is the worst case, Mosaic with its cache) over ``--batches`` batches,
  sampled about 20 times: one line per sample with ``images`` drawn so far, ``main_rss_mb``,
  ``workers_rss_mb`` (one per worker) and ``total_pss_mb`` (proportional set size of the main
  process and the workers together, which counts pages shared between them once; Linux only),
  then a ``"summary": true`` line with ``pss_growth_mb`` from the first sample to the last.
"""
import argparse
import copy
import importlib.util
import itertools
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time

import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from dfine.config import eval_input_size, load_config
from dfine.data import Mosaic
from dfine.engine import Trainer, resolve_device
from dfine.export import INPUT_NAME, export_onnx, onnxruntime_session, random_images

# Far-away epochs: epoch 0 of the benchmark sits in the stage each variant asks for.
NEVER = 10**6
LOADER_VARIANTS = {
    # policy_epoch, mosaic_prob (None: the config's), mosaic cache, mixup_prob (None: the config's)
    "full": ([0, 0, NEVER], 0.0, False, 0.0),
    "mosaic": ([0, NEVER, NEVER], 1.0, False, 0.0),
    "mosaic_cache": ([0, NEVER, NEVER], 1.0, True, 0.0),
    "mixup": ([0, 0, NEVER], 0.0, False, 1.0),
    "dense_o2o": ([0, NEVER, NEVER], None, False, None),
    "dense_o2o_cache": ([0, NEVER, NEVER], None, True, None),
}


def loader_variant(train_cfg, variant: str):
    """A copy of the ``dataloader.train`` config set up for ``variant``."""
    policy, mosaic_prob, use_cache, mixup_prob = LOADER_VARIANTS[variant]
    cfg = copy.deepcopy(train_cfg)
    mapper = cfg.mapper
    if mapper.get("mosaic") is None:
        # A config without Mosaic gets the official DEIM one at half the training size.
        size = mapper.image_size if isinstance(mapper.image_size, int) else mapper.image_size[0]
        mapper.mosaic = L(Mosaic)(output_size=size // 2)
    mapper.policy_epoch = policy
    if mosaic_prob is not None:
        mapper.mosaic_prob = mosaic_prob
    elif not mapper.get("mosaic_prob"):
        mapper.mosaic_prob = 0.5
    mapper.mosaic.use_cache = use_cache
    if mixup_prob is not None:
        cfg.mixup_prob = mixup_prob
    elif not cfg.get("mixup_prob"):
        cfg.mixup_prob = 0.5
    cfg.mixup_epochs = [0, NEVER]
    cfg.multi_scale_stop_epoch = 0  # batch resizing is model-side cost, not loader cost
    return cfg


def time_loader(train_cfg, batches: int, warmup: int) -> float:
    """Images per second of one fresh loader over ``batches`` batches after ``warmup`` batches."""
    loader = instantiate(train_cfg)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    images = sum(len(batch) for batch in itertools.islice(iterator, batches))
    elapsed = time.perf_counter() - start
    del iterator  # stops the workers
    return images / elapsed


def benchmark_loader(cfg, args, emit) -> None:
    train_cfg = cfg.dataloader.train
    if args.num_workers is not None:
        train_cfg.num_workers = args.num_workers
    train_cfg.seed = 0
    for variant in args.variants:
        variant_cfg = loader_variant(train_cfg, variant)
        torch.manual_seed(0)
        rates = [time_loader(variant_cfg, args.batches, args.warmup) for _ in range(args.repeats)]
        emit("loader", variant=variant, images_per_s=significant(statistics.median(rates)),
             images_per_s_all=[significant(r) for r in rates], batch_size=variant_cfg.total_batch_size,
             num_workers=variant_cfg.num_workers, image_size=variant_cfg.mapper.image_size, batches=args.batches,
             repeats=args.repeats)


def process_memory_mb(pid: int) -> dict:
    """``{"rss": ..., "pss": ...}`` in MiB from ``/proc/<pid>/smaps_rollup`` (Linux)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                fields[name.lower()] = round(int(rest.split()[0]) / 1024, 1)  # kB
    return fields


def benchmark_loader_memory(cfg, args, emit) -> None:
    train_cfg = loader_variant(cfg.dataloader.train, args.variants[0])
    if args.num_workers is not None:
        train_cfg.num_workers = args.num_workers
    train_cfg.seed = 0
    loader = instantiate(train_cfg)
    iterator = iter(loader)
    workers = getattr(iterator, "_workers", [])  # torch's worker processes (none with 0 workers)
    every = max(1, args.batches // 20)
    samples, images = [], 0
    for done in range(1, args.batches + 1):
        images += len(next(iterator))
        if done % every and done != args.batches:
            continue
        main_mem = process_memory_mb(os.getpid())
        worker_mem = [process_memory_mb(w.pid) for w in workers]
        sample = dict(batches=done, images=images, main_rss_mb=main_mem["rss"],
                      workers_rss_mb=[m["rss"] for m in worker_mem],
                      total_pss_mb=round(main_mem["pss"] + sum(m["pss"] for m in worker_mem), 1))
        samples.append(sample)
        emit("loader_memory", variant=args.variants[0], num_workers=train_cfg.num_workers, **sample)
    del iterator
    emit("loader_memory", summary=True, variant=args.variants[0], num_workers=train_cfg.num_workers,
         images=images, dataset_images=len(loader.dataset), first_total_pss_mb=samples[0]["total_pss_mb"],
         last_total_pss_mb=samples[-1]["total_pss_mb"],
         pss_growth_mb=round(samples[-1]["total_pss_mb"] - samples[0]["total_pss_mb"], 1))


def random_batch(batch_size, size, device):
    """``batch_size`` random uint8 images in the model's input format."""
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator).to(device),
             "height": size[0], "width": size[1]} for _ in range(batch_size)]


class _TensorOutputs(nn.Module):
    """The model on one image tensor, returning tensors (what fvcore's tracer needs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        instances = self.model([{"image": image[0], "height": image.shape[-2], "width": image.shape[-1]}])[0][
            "instances"
        ]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def benchmark_params(cfg, args, emit) -> None:
    model = instantiate(cfg.model)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    deploy_params = sum(p.numel() for p in model.deploy().parameters())
    emit("params", params=params, trainable=trainable, deploy_params=deploy_params)


def benchmark_flops(cfg, args, emit) -> None:
    from fvcore.nn import FlopCountAnalysis

    size = eval_input_size(cfg)
    model = instantiate(cfg.model).deploy()
    image = random_batch(1, size, "cpu")[0]["image"][None]
    counter = FlopCountAnalysis(_TensorOutputs(model), (image,))
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    macs = counter.total()
    emit("flops", image_size=list(size), gmacs=round(macs / 1e9, 3), gflops=round(2 * macs / 1e9, 3),
         uncounted_ops=sorted(counter.unsupported_ops()))


def time_calls(step, repeats, warmup, device) -> list:
    """Milliseconds of each of ``repeats`` calls of ``step()`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


@torch.no_grad()
def time_inference(model, batch, repeats, warmup, device) -> list:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return time_calls(lambda: model(batch), repeats, warmup, device)


def peak_memory_mb(device) -> float:
    """Peak allocated CUDA memory since the last reset, or the process's peak resident memory."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def benchmark_latency(cfg, args, emit) -> None:
    device = torch.device(resolve_device(args.device))
    size = eval_input_size(cfg)
    model = instantiate(cfg.model).to(device).eval()

    def emit_latency(form, device, batch_size, times):
        emit("latency", form=form, device=str(device), batch_size=batch_size, image_size=list(size),
             **timing_fields(times, batch_size, device))

    for form in ("eager", "deploy"):
        if form == "deploy":
            model.deploy()
        for batch_size in sorted({1, args.batch_size}):
            batch = random_batch(batch_size, size, device)
            emit_latency(form, device, batch_size, time_inference(model, batch, args.repeats, args.warmup, device))
    if not all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime")):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, path, size)
        session = onnxruntime_session(path, threads=torch.get_num_threads())

    def run_onnx(images):
        return session.run(None, {INPUT_NAME: images})

    cpu = torch.device("cpu")
    for batch_size in sorted({1, args.batch_size}):
        images = random_images(batch_size, size).numpy()
        emit_latency("onnxruntime", cpu, batch_size, time_inference(run_onnx, images, args.repeats, args.warmup, cpu))


def significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits: a rate keeps its precision on a slow machine too
    (0.2022 images/s, not 0.2)."""
    return float(f"{value:.{digits}g}")


def timing_fields(times, batch_size, device) -> dict:
    ms = statistics.median(times)
    return dict(ms=round(ms, 3), ms_all=[round(t, 3) for t in times], images_per_s=significant(1000 * batch_size / ms),
                peak_memory_mb=peak_memory_mb(device))


def random_training_batch(batch_size, size, num_classes, device):
    """``random_batch`` with 1-8 random boxes (absolute XYXY, at least 8 pixels) per image."""
    generator = torch.Generator().manual_seed(0)
    batch = random_batch(batch_size, size, device)
    for x in batch:
        count = int(torch.randint(1, 9, (), generator=generator))
        corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([size[1] - 8, size[0] - 8])
        boxes = torch.cat([corners.min(1).values, corners.max(1).values + 8], 1)
        instances = Instances(size)
        instances.gt_boxes = Boxes(boxes.to(device))
        instances.gt_classes = torch.randint(0, num_classes, (count,), generator=generator).to(device)
        x["instances"] = instances
    return batch


def benchmark_train(cfg, args, emit) -> None:
    device = torch.device(resolve_device(args.device))
    size = cfg.dataloader.train.mapper.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    model = instantiate(cfg.model).to(device).train()
    optimizer_cfg = copy.deepcopy(cfg.optimizer)
    optimizer_cfg.params.model = model
    batch = random_training_batch(args.batch_size, size, model.decoder.num_classes, device)
    # The training step of train_net.py (AMP, scaler, clipping, the non-finite check, metrics).
    trainer = Trainer(model=model, data_loader=itertools.repeat(batch), optimizer=instantiate(optimizer_cfg),
                      amp_enabled=cfg.train.amp.enabled, amp_dtype=cfg.train.amp.dtype,
                      clip_grad_max_norm=cfg.train.clip_grad.max_norm)
    amp = trainer.amp_enabled

    def step():
        with EventStorage(trainer.iter):
            trainer.run_step()
        trainer.iter += 1

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_calls(step, args.repeats, args.warmup, device)
    emit("train", device=str(device), batch_size=args.batch_size, image_size=list(size), amp=amp,
         **timing_fields(times, args.batch_size, device))


BENCHMARKS = {"params": benchmark_params, "flops": benchmark_flops, "latency": benchmark_latency,
              "train": benchmark_train, "loader": benchmark_loader, "loader_memory": benchmark_loader_memory}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--what", default="params,flops,latency,train,loader",
                        help=f"comma-separated, among {','.join(BENCHMARKS)}")
    parser.add_argument("--device", default="auto", help="latency: auto (CUDA when available), cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (loader: loaders built)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs (loader: batches) first")
    parser.add_argument("--batch-size", type=int, default=4, help="latency: the batch size besides 1; train: the batch")
    parser.add_argument("--variants", nargs="+", choices=sorted(LOADER_VARIANTS), default=list(LOADER_VARIANTS))
    parser.add_argument(
        "--batches", type=int, default=20, help="loader: timed batches per repeat; loader_memory: batches of the run"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="loader: default the config's")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = sorted(set(what) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown --what {unknown}; choose among {sorted(BENCHMARKS)}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = load_config(args.config_file, args.opts)

    def emit(benchmark, **fields):
        print(json.dumps({"benchmark": benchmark, **fields, "config": args.config_file}), flush=True)

    for item in what:
        BENCHMARKS[item](cfg, args, emit)


if __name__ == "__main__":
    main()
