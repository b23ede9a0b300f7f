#!/usr/bin/env python
"""Measure speed; every result is one JSON line on stdout (medians over repeats).

    bash tools/env.sh python tools/benchmark.py loader --config-file configs/deim_rtdetrv2_r50.py \\
        [--variants full mosaic mosaic_cache mixup dense_o2o dense_o2o_cache] [--batches 20] [--repeats 3] \\
        [--num-workers 2] [key=value ...]

``loader``: training-loader throughput in images/s, from the config's ``dataloader.train`` (config
overrides apply, e.g. ``dataloader.train.dataset.names=toy_shapes_train``), one line per variant:

* ``full``: the RT-DETR augmentations (photometric distort, zoom-out, IoU crop, flip), no Dense O2O;
* ``mosaic`` / ``mosaic_cache``: Mosaic on every sample (and photometric distort), cache off / on;
* ``mixup``: the RT-DETR augmentations and MixUp on every batch;
* ``dense_o2o`` / ``dense_o2o_cache``: the config's Dense O2O stage as it is (Mosaic at
  ``mosaic_prob``, MixUp at ``mixup_prob``), cache off / on.

Each repeat builds a fresh loader, skips ``--warmup`` batches (worker start-up) and times the next
``--batches``. Fields: ``benchmark``, ``variant``, ``images_per_s`` (median), ``images_per_s_all``,
``batch_size``, ``num_workers``, ``image_size``, ``batches``, ``repeats``, ``config``.
"""
import argparse
import copy
import itertools
import json
import logging
import statistics
import sys
import time

import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate

from dfine.data import Mosaic

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


def benchmark_loader(args) -> None:
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    train_cfg = cfg.dataloader.train
    if args.num_workers is not None:
        train_cfg.num_workers = args.num_workers
    train_cfg.seed = 0
    for variant in args.variants:
        variant_cfg = loader_variant(train_cfg, variant)
        torch.manual_seed(0)
        rates = [time_loader(variant_cfg, args.batches, args.warmup) for _ in range(args.repeats)]
        print(json.dumps({
            "benchmark": "loader",
            "variant": variant,
            "images_per_s": round(statistics.median(rates), 2),
            "images_per_s_all": [round(r, 2) for r in rates],
            "batch_size": variant_cfg.total_batch_size,
            "num_workers": variant_cfg.num_workers,
            "image_size": variant_cfg.mapper.image_size,
            "batches": args.batches,
            "repeats": args.repeats,
            "config": args.config_file,
        }), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    loader = commands.add_parser("loader", help="training-loader throughput (images/s)")
    loader.add_argument("--config-file", required=True)
    loader.add_argument("--variants", nargs="+", choices=sorted(LOADER_VARIANTS), default=list(LOADER_VARIANTS))
    loader.add_argument("--batches", type=int, default=20, help="timed batches per repeat")
    loader.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up)")
    loader.add_argument("--repeats", type=int, default=3)
    loader.add_argument("--num-workers", type=int, default=None, help="default: the config's")
    loader.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.command == "loader":
        benchmark_loader(args)


if __name__ == "__main__":
    main()
