"""Exact resume: a training run killed with SIGKILL and restarted with ``--resume`` logs the losses of
a run that was never interrupted; checkpoints are written atomically, so a kill (or an error) during
a save leaves the previous checkpoint and ``last_checkpoint`` intact."""
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dfine.data.loader import build_train_loader
from dfine.data.toy_shapes import toy_shapes_paths
from dfine.checkpoint import AtomicCheckpointer
from dfine.engine import Trainer
from test_train_net import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]

# train_net.py in a subprocess that can be killed. It registers the tiny_coco data sets (the
# registrations of the pytest process do not reach it), and makes metrics.json hold each
# iteration's own losses: by default it logs their median over the last 20 iterations, and the
# window of a resumed process starts empty.
DRIVER = """
import json, runpy, sys
from detectron2.utils.events import JSONWriter
from dfine.data.datasets import register_coco_dataset
JSONWriter.__init__.__defaults__ = (1,)
for name, json_file, image_root in json.loads(sys.argv[1]):
    register_coco_dataset(name, json_file, image_root)
sys.argv = ["train_net.py"] + sys.argv[2:]
runpy.run_path("train_net.py", run_name="__main__")
"""

# The DEIM toy recipe on 8 images, batch 2 (4 iterations per epoch, 16 in all): epoch 0 no
# augmentation, epoch 1 Dense O2O (Mosaic, MixUp), epoch 2 RT-DETR augmentations, epoch 3 stage 2
# (no augmentation, the best stage-1 state reloaded at iteration 12); an evaluation per epoch and a
# checkpoint after every iteration.
SWITCH_ITER = 12
MAX_ITER = 16
TIMINGS = ("time", "data_time", "eta_seconds")
DEIM_TOY = [
    "train.device=cpu", "train.epochs=4", "train.eval_epochs=1", "train.checkpoint_epochs=null",
    "train.checkpointer.period=1", "train.checkpointer.max_to_keep=3", "train.log_period=1", "train.seed=0",
    "dataloader.train.total_batch_size=2", "dataloader.test.num_workers=0", "dataloader.train.seed=0",
    "dataloader.train.mapper.image_size=64", "dataloader.test.mapper.image_size=64",
    "train.stage_switch.epoch=3", "dataloader.train.mapper.policy_epoch=[1,2,3]", "dataloader.train.mixup_epochs=[1,2]",
    "dataloader.train.multi_scale_stop_epoch=3", "dataloader.train.multi_scale=[48,64]",
    "lr_multiplier.flat_epochs=2", "lr_multiplier.no_aug_epochs=1", "lr_multiplier.warmup_iters=2",
]


def _start(tiny_coco, output_dir, num_workers, resume=False):
    datasets = [(getattr(tiny_coco, split), *toy_shapes_paths(tiny_coco.root, split)) for split in ("train", "val")]
    opts = TINY_MODEL + DEIM_TOY + [
        f"train.output_dir={output_dir}", f"dataloader.train.num_workers={num_workers}",
        f"dataloader.train.dataset.names={tiny_coco.train}", f"dataloader.test.dataset.names={tiny_coco.val}",
    ]
    argv = ["--config-file", "configs/quickstart/deim_rtdetrv2_r18_toy.py"] + (["--resume"] if resume else []) + opts
    # One thread: the same float operations in the same order in every run.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(os.path.join(output_dir, f"stdout_{time.monotonic_ns()}.log"), "w") as log:
        return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(datasets)] + argv, cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def _run(tiny_coco, output_dir, num_workers, resume=False):
    process = _start(tiny_coco, output_dir, num_workers, resume)
    assert process.wait(timeout=300) == 0, f"train_net.py failed, see {output_dir}/stdout_*.log"


def _read(path):
    """The text of ``path``, empty when it does not exist."""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _last_checkpoint_iteration(output_dir):
    """The iteration of the checkpoint that ``--resume`` would load."""
    name = _read(os.path.join(output_dir, "last_checkpoint"))
    return torch.load(os.path.join(output_dir, name), map_location="cpu", weights_only=True)["trainer"]["iteration"]


def _kill_after_checkpoint(process, output_dir, iteration):
    """SIGKILL ``process`` as soon as a checkpoint of ``iteration`` or later is tagged; returns
    the iteration of the checkpoint it left (possibly later: the run goes on while we look)."""
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, f"train_net.py ended before it was killed, see {output_dir}/stdout_*.log"
        assert time.monotonic() < deadline, "no checkpoint of the expected iteration"
        periodic = re.fullmatch(r"model_(\d{7})\.pth", _read(os.path.join(output_dir, "last_checkpoint")))
        if periodic and int(periodic.group(1)) >= iteration:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return _last_checkpoint_iteration(output_dir)


def _metrics_by_iteration(output_dir):
    """The metrics of each iteration, from the process that logged it last (a resumed run logs
    again the iterations its killed predecessor ran after its checkpoint)."""
    by_iteration = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            record = json.loads(line)
            by_iteration.setdefault(record["iteration"], {}).update(record)
    return by_iteration


def test_killed_run_resumes_with_the_losses_of_an_uninterrupted_run(tiny_coco, tmp_path):
    """The DEIM toy recipe killed in stage 1 (at or after iteration 5, in or after the Dense O2O
    epoch), resumed, killed again before the no-augmentation stage 2 and resumed to the end: every
    logged loss, the learning rate and the evaluations equal those of an uninterrupted run, bit for
    bit, and so do the final weights and EMA. The interrupted run loads its data with two workers,
    the reference with none: the batches do not depend on the number of workers either."""
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    _run(tiny_coco, reference_dir, num_workers=0)

    first_kill = _kill_after_checkpoint(_start(tiny_coco, killed_dir, 2), killed_dir, 5)
    second_kill = _kill_after_checkpoint(_start(tiny_coco, killed_dir, 2, resume=True), killed_dir, 9)
    _run(tiny_coco, killed_dir, 2, resume=True)
    # Both resumed runs start in stage 1; the second one makes the switch.
    assert 5 <= first_kill < second_kill < SWITCH_ITER, (first_kill, second_kill)

    reference, resumed = _metrics_by_iteration(reference_dir), _metrics_by_iteration(killed_dir)
    # Iteration MAX_ITER holds the evaluation after training.
    assert sorted(resumed) == sorted(reference) == list(range(MAX_ITER + 1))
    for iteration in range(MAX_ITER + 1):
        # Every loss term, the learning rate and the evaluation results; not the timings.
        expected = {key: value for key, value in reference[iteration].items() if key not in TIMINGS}
        got = {key: resumed[iteration].get(key) for key in expected}
        assert got == expected, f"iteration {iteration} (resumed after {first_kill} and {second_kill})"
        assert {"total_loss", "loss_mal", "loss_mal_dn_0", "lr"} <= set(expected) or iteration == MAX_ITER
    assert sum("bbox/AP" in record for record in reference.values()) == 4  # after iterations 3, 7, 11, 15

    final = torch.load(killed_dir / "model_final.pth", map_location="cpu", weights_only=True)
    expected = torch.load(reference_dir / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["trainer"]["hooks"]["StageSwitchHook"] == expected["trainer"]["hooks"]["StageSwitchHook"]
    assert final["trainer"]["hooks"]["StageSwitchHook"]["switched"] is True
    # A save the kills interrupted was written again, which removed its temporary file.
    assert not [name for name in os.listdir(killed_dir) if name.endswith(".tmp")]
    for key in ("model", "ema"):
        weights = final[key] if key == "model" else final[key]["module"]
        expected_weights = expected[key] if key == "model" else expected[key]["module"]
        assert all(torch.equal(weights[name], expected_weights[name]) for name in expected_weights), key


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save that fails after writing part of the file (as a kill or a full disk would leave it)
    changes neither the checkpoints nor ``last_checkpoint``."""
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000")
    saved = {name: value.clone() for name, value in model.state_dict().items()}

    def write_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        checkpointer.save("model_0000001")
    with pytest.raises(OSError, match="No space"):
        checkpointer.save("model_0000000")  # overwriting the very checkpoint last_checkpoint names
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"], "no partial or temporary file"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert checkpointer.has_checkpoint() and checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000000.pth")
    loaded = torch.load(tmp_path / "model_0000000.pth", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)

    # The temporary file of a process killed while saving goes with the next save of that name.
    (tmp_path / ".model_0000001.pth.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    checkpointer.save("model_0000001")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def _draws(mapped, epoch, dataset=None):
    """A mapper that only records draws of the three global RNGs."""
    return {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "draws": (random.random(), float(np.random.random()),
                                                                         float(torch.rand(())))}


def _batches(loader, start_iter, count):
    loader.sampler.set_start_iter(start_iter)
    return [[(s["dataset_index"], s["epoch"], s["draws"], tuple(s["image"].shape)) for s in batch]
            for batch in itertools.islice(iter(loader), count)]


DICTS = [{"file_name": f"{i}.jpg", "image_id": i} for i in range(5)]


def _loader(num_workers=0, seed=3):
    return build_train_loader(DICTS, _draws, total_batch_size=2, num_workers=num_workers, seed=seed,
                              multi_scale=[8, 16, 24])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_draws_depend_on_the_stream_position_only(num_workers):
    """The same batches (indices, epochs, random draws, multi-scale sizes) whatever the start
    iteration and the number of workers, and the trainer process's RNGs are left untouched."""
    expected = _batches(_loader(0), 0, 8)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert _batches(_loader(num_workers), 3, 5) == expected[3:]
    assert torch.equal(torch.get_rng_state(), before)
    assert len({draws for batch in expected for _, _, draws, _ in batch}) == 16, "every sample draws anew"


def test_resume_takes_the_data_seed_of_the_checkpoint():
    """A loader whose seed was drawn at random (seed=None) gets the seed of the interrupted run
    back through the trainer's state, and with it the same batches."""
    def trainer(loader):
        model = nn.Linear(1, 1)
        return Trainer(model=model, data_loader=loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))

    interrupted, resumed = trainer(_loader(seed=None)), trainer(_loader(seed=None))
    state = interrupted.state_dict()
    assert state["data_seed"] == interrupted.data_loader.seed
    resumed.load_state_dict(state)
    assert resumed.data_loader.seed == interrupted.data_loader.seed
    assert _batches(resumed.data_loader, 2, 3) == _batches(interrupted.data_loader, 2, 3)
