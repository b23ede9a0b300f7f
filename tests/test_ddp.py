"""Distributed training on CPU (gloo): two processes give the gradients of one process with the
combined batch, a process whose images have no boxes neither hangs nor changes the loss keys, and
evaluation gathers every image's predictions once.

detectron2 main launches CPU workers with gloo; detectron2 0.6's ``launch`` needs CUDA, so the tests
use a small ``torch.multiprocessing`` harness (the same process group and DDP wrapping).
"""
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from torch.nn.parallel import DistributedDataParallel

from test_train_net import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64
TIMEOUT_S = 120


def _model(*overrides):
    cfg = LazyConfig.load(str(ROOT / "configs" / "quickstart" / "rtdetrv2_r18_toy.py"))
    cfg = LazyConfig.apply_overrides(cfg, TINY_MODEL + list(overrides))
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    # Batch statistics depend on how the batch is split; the comparison is about the losses'
    # normalisation and the gradient reduction, so BatchNorm uses its running statistics.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _image(index, num_boxes):
    generator = torch.Generator().manual_seed(index)
    image = torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    corners = torch.rand(num_boxes, 2, 2, generator=generator) * (IMAGE_SIZE - 16)
    instances = Instances((IMAGE_SIZE, IMAGE_SIZE))
    instances.gt_boxes = Boxes(torch.cat([corners.min(1).values, corners.max(1).values + 16], 1))
    instances.gt_classes = torch.randint(0, 6, (num_boxes,), generator=generator)
    return {"image": image, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "instances": instances}


# Two images per process with 1-5 boxes, so that the processes' box counts differ.
BOXES_PER_IMAGE = [3, 1, 5, 2]


def _step(model, batch):
    losses = model(batch)
    sum(losses.values()).backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
    return sorted(losses), grads


def _worker(rank, world_size, init_file, out_dir, boxes_per_image, overrides):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(_model(*overrides))
        per_rank = len(boxes_per_image) // world_size
        indices = range(rank * per_rank, (rank + 1) * per_rank)
        keys, grads = _step(model, [_image(i, boxes_per_image[i]) for i in indices])
        torch.save({"keys": keys, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, boxes_per_image, overrides=(), worker=_worker):
    context = mp.start_processes(
        worker, args=(2, str(tmp_path / "init"), str(tmp_path), boxes_per_image, list(overrides)), nprocs=2,
        join=False, start_method="spawn")
    for process in context.processes:
        process.join(TIMEOUT_S)
    alive = [p for p in context.processes if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, f"distributed step did not finish in {TIMEOUT_S} s (hang)"
    assert all(p.exitcode == 0 for p in context.processes), [p.exitcode for p in context.processes]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_processes_give_the_gradients_of_the_combined_batch(tmp_path):
    # Without denoising: its noise and group count depend on the batch composition.
    overrides = ["model.decoder.denoising.num_denoising=0"]
    ranks = _run(tmp_path, BOXES_PER_IMAGE, overrides)
    keys, single = _step(_model(*overrides), [_image(i, n) for i, n in enumerate(BOXES_PER_IMAGE)])
    assert ranks[0]["keys"] == ranks[1]["keys"] == keys
    assert set(ranks[0]["grads"]) == set(single)
    for name, grad in single.items():
        # DDP averages the processes' gradients; each process normalises by the box count
        # averaged over processes, so the average is the combined batch's gradient.
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-5, msg=name)
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name


def test_a_process_without_boxes_keeps_the_loss_keys_and_does_not_hang(tmp_path):
    # Rank 1's two images have no box at all; denoising stays on (its dummy group keeps the graph).
    ranks = _run(tmp_path, [3, 2, 0, 0])
    assert ranks[0]["keys"] == ranks[1]["keys"]
    assert any("_dn_" in key for key in ranks[0]["keys"])
    assert all(torch.isfinite(g).all() for g in ranks[1]["grads"].values())


def _evaluate(val_dataset):
    """train_net's ``do_test`` of the tiny model (random weights) on ``val_dataset``, with
    detectron2's ``comm.gather`` recorded: ``(results, image ids of each gather call)``."""
    import train_net
    from detectron2.utils import comm

    cfg = LazyConfig.load(str(ROOT / "configs" / "quickstart" / "rtdetrv2_r18_toy.py"))
    cfg = LazyConfig.apply_overrides(cfg, TINY_MODEL + [
        f"dataloader.test.dataset.names={val_dataset}", "dataloader.test.num_workers=0",
        "dataloader.test.mapper.image_size=64"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    gathered, gather = [], comm.gather

    def recording_gather(data, dst=0, group=None):
        out = gather(data, dst=dst, group=group)
        gathered.append(sorted(p["image_id"] for part in out for p in part))
        return out

    comm.gather = recording_gather
    try:
        return train_net.do_test(cfg, model), gathered
    finally:
        comm.gather = gather


def _eval_worker(rank, world_size, init_file, out_dir, tiny_coco_root, _overrides):
    sys.path.insert(0, str(ROOT))
    _register_tiny_val(tiny_coco_root)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        results, gathered = _evaluate("tiny_coco_val")
        torch.save({"results": dict(results.get("bbox", {})), "gathered": gathered},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _register_tiny_val(root):
    from detectron2.data import DatasetCatalog
    from dfine.data.datasets import register_coco_dataset
    from dfine.data.toy_shapes import toy_shapes_paths

    if "tiny_coco_val" not in DatasetCatalog.list():
        register_coco_dataset("tiny_coco_val", *toy_shapes_paths(root, "val"))


def test_evaluation_gathers_every_image_once(tmp_path, tiny_coco):
    ranks = _run(tmp_path, tiny_coco.root, worker=_eval_worker)
    results, gathered = _evaluate(tiny_coco.val)
    image_ids = gathered[0]
    assert len(image_ids) == 4 and len(set(image_ids)) == 4  # every prediction of every image once
    # Each process gathers once (inside COCOEvaluator.evaluate); rank 0 receives both shards.
    assert [len(r["gathered"]) for r in ranks] == [1, 1]
    assert ranks[0]["gathered"][0] == image_ids
    # Rank 0 reports the metrics of one process over the whole set; other ranks report none.
    assert ranks[0]["results"] == pytest.approx(dict(results["bbox"]), nan_ok=True)
    assert ranks[1]["results"] == {}
