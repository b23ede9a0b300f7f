"""train_net.py with more than one process, on CPUs (gloo): two "machines" on the loopback address,
torchrun, and ``--num-gpus 2``, against one process with the same total batch; a process killed with
SIGKILL and the run resumed; and the pieces of ``dfine.engine.launch`` and of the loader that the
world size touches.

Every run is a subprocess (of its own process group, killed at the end whatever happens) with one
intra-op thread, so that the same float operations run in the same order in every run.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dfine.data.loader import BatchCollate, EpochAwareSampler
from dfine.data.toy_shapes import toy_shapes_paths
from dfine.engine import launch as launch_module
from dfine.engine.launch import TORCHRUN_VARIABLES, ProcessPlace, free_port, torchrun_place
from test_resume import _last_checkpoint_iteration, _metrics_by_iteration, _read
from test_train_net import TINY_MODEL, train_net

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
MAX_ITER = 6

# The toy quick start, shrunk (TINY_MODEL, 64x64 images), as a config file that every process loads
# (processes spawned by train_net.py do not inherit registrations made elsewhere): it registers the
# tiny data sets and makes metrics.json hold each iteration's own losses (by default their median
# over 20 iterations). Two changes make one process and two comparable at the same total batch:
# BatchNorm frozen, since on CPUs each process normalises with the statistics of its own part of
# the batch (SyncBatchNorm needs GPUs), and no denoising, whose groups depend on the largest box
# count in the batch.
CONFIG = """
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.layers import FrozenBatchNorm2d
from detectron2.utils.events import JSONWriter

from dfine.data.datasets import register_coco_dataset

JSONWriter.__init__.__defaults__ = (1,)
for _name, _json_file, _image_root in {datasets!r}:
    register_coco_dataset(_name, _json_file, _image_root)
_toy = LazyConfig.apply_overrides(LazyConfig.load({toy_config!r}), {model_overrides!r})
model = L(FrozenBatchNorm2d.convert_frozen_batchnorm)(module=_toy.model)
dataloader, optimizer, lr_multiplier, train = _toy.dataloader, _toy.optimizer, _toy.lr_multiplier, _toy.train
"""


def _options(tiny_coco, output_dir, *extra):
    """Config overrides: MAX_ITER iterations of total batch 4 (half an epoch of the 8 images) with
    the full learning rate from the second iteration on, one evaluation at the end, every
    iteration logged, and the evaluator's predictions written to ``output_dir/inference``."""
    return [
        f"train.output_dir={output_dir}", f"dataloader.evaluator.output_dir={output_dir}/inference",
        "train.device=cpu", "train.epochs=null", "train.eval_epochs=null", "train.checkpoint_epochs=null",
        f"train.max_iter={MAX_ITER}", f"train.eval_period={MAX_ITER}", "train.checkpointer.period=100",
        "train.log_period=1", "train.seed=0", "lr_multiplier.warmup_iters=1",
        f"dataloader.train.dataset.names={tiny_coco.train}", f"dataloader.test.dataset.names={tiny_coco.val}",
        "dataloader.train.total_batch_size=4", "dataloader.train.seed=0", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0", "dataloader.train.mapper.image_size=64",
        "dataloader.test.mapper.image_size=64",
    ] + list(extra)


class Processes:
    """Subprocesses started in their own process group, with their output in a log file; on exit
    every group still alive is killed (torchrun's workers and spawned processes with it)."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.started = []

    def start(self, name, command):
        """Start ``command`` in the repository root, its output in ``<log_dir>/<name>.log``."""
        # One thread per process; no torchrun variables of an enclosing launcher.
        environ = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
        environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        process.name, process.log_path = name, log_path
        self.started.append(process)
        return process

    def wait(self, process, expect_success=True):
        """The exit code of ``process``, which must end within TIMEOUT_S (and succeed)."""
        try:
            code = process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{process.name} did not end in {TIMEOUT_S} s:\n{_tail(process.log_path)}")
        if expect_success:
            assert code == 0, f"{process.name} failed with exit code {code}:\n{_tail(process.log_path)}"
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for process in self.started:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def _tail(path, lines=40):
    return "\n".join(Path(path).read_text().splitlines()[-lines:])


# train_net.py --eval-only in one process, its results written as JSON to the file of argv[1].
EVAL_ONLY_DRIVER = """
import json, sys
sys.path.insert(0, ".")
import train_net
results = train_net.main(train_net.default_argument_parser().parse_args(sys.argv[2:]))
with open(sys.argv[1], "w") as f:
    json.dump(results, f)
"""


def _train_net(config, options, *args):
    return [sys.executable, "train_net.py", "--config-file", str(config), *args, *options]


def _torchrun(config, options, *args):
    return [sys.executable, "-m", "torch.distributed.run", *args, "train_net.py", "--config-file", str(config),
            *options]


@pytest.fixture(scope="module")
def runs(tiny_coco, tmp_path_factory):
    """The same training (MAX_ITER iterations of total batch 4) in one process, as two machines
    (two train_net.py processes, ``--num-machines 2``), and under ``torchrun --nproc-per-node 2``,
    run side by side."""
    root = tmp_path_factory.mktemp("launch")
    config = root / "toy_tiny.py"
    datasets = [(getattr(tiny_coco, split), *toy_shapes_paths(tiny_coco.root, split)) for split in ("train", "val")]
    model_overrides = [o for o in TINY_MODEL if "num_denoising" not in o] + ["model.decoder.denoising.num_denoising=0"]
    config.write_text(CONFIG.format(datasets=datasets, toy_config=str(ROOT / "configs/quickstart/rtdetrv2_r18_toy.py"),
                                    model_overrides=model_overrides))
    dirs = SimpleNamespace(single=root / "single", machines=root / "machines", torchrun=root / "torchrun")
    with Processes(root) as processes:
        dist_url = f"tcp://127.0.0.1:{free_port()}"
        started = [
            processes.start("single", _train_net(config, _options(tiny_coco, dirs.single))),
            *(processes.start(f"machine{rank}", _train_net(
                config, _options(tiny_coco, dirs.machines), "--num-machines", "2", "--machine-rank", str(rank),
                "--dist-url", dist_url)) for rank in range(2)),
            processes.start("torchrun", _torchrun(config, _options(tiny_coco, dirs.torchrun),
                                                  "--standalone", "--nproc-per-node", "2")),
        ]
        for process in started:
            processes.wait(process)
    return SimpleNamespace(config=config, root=root, tiny_coco=tiny_coco, **vars(dirs))


def _logged(record):
    """The losses, learning rate and evaluation results of a metrics.json record (not its timings,
    whose names differ between detectron2 versions)."""
    return {key: value for key, value in record.items()
            if key.startswith(("loss_", "bbox/")) or key in ("total_loss", "lr")}


@pytest.mark.parametrize("mode", ["machines", "torchrun"])
def test_two_processes_train_like_one_process_with_the_total_batch(runs, mode):
    """The same losses at every iteration as one process, within rtol 1e-5: both runs add the same
    numbers in another order (each process sums the losses and gradients of its half of the batch,
    then the halves' gradients are averaged; the convolutions run on batches of 2 instead of 4), so
    they agree to float32 rounding: relative differences up to 4e-7 were seen over the 6 AdamW steps.
    1e-5 leaves a margin of 25 and still catches a wrong part of the batch, a missing average or a
    normalisation by one process's boxes, which change the losses by percents.
    One metrics.json and one checkpoint, written by rank 0; each rank's log says how it runs."""
    single, distributed = _metrics_by_iteration(runs.single), _metrics_by_iteration(getattr(runs, mode))
    assert sorted(distributed) == sorted(single) == list(range(MAX_ITER + 1))
    for iteration in range(MAX_ITER):
        expected = _logged(single[iteration])
        assert {"total_loss", "loss_vfl", "loss_bbox", "loss_giou", "lr"} <= set(expected)
        assert _logged(distributed[iteration]) == pytest.approx(expected, rel=1e-5), f"iteration {iteration}"

    out = getattr(runs, mode)
    lines = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    assert lines == sorted(set(lines)), "each iteration logged once, by rank 0 only"
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]
    assert _read(out / "last_checkpoint") == "model_final.pth"
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == MAX_ITER - 1
    assert len(list(out.glob("events.out.tfevents.*"))) == 1, "one TensorBoard file"

    local = {"machines": ["0 of 1", "0 of 1"], "torchrun": ["0 of 2", "1 of 2"]}[mode]
    for rank, log in enumerate(["log.txt", "log.txt.rank1"]):
        assert re.search(rf"backend gloo: world size 2, this process \(pid \d+\) is rank {rank}, local rank "
                         rf"{local[rank]} on its machine", (out / log).read_text()), log


def test_start_modes_give_the_same_run(runs):
    """Two machines and torchrun place the same two processes: the same weights, bit for bit."""
    machines, torchrun = (torch.load(d / "model_final.pth", map_location="cpu", weights_only=True)
                          for d in (runs.machines, runs.torchrun))
    for key in ("model", "ema"):
        a, b = (machines[key], torchrun[key]) if key == "model" else (machines[key]["module"], torchrun[key]["module"])
        assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a), key


def _coco_results(output_dir):
    with open(output_dir / "inference" / "coco_instances_results.json") as f:
        return sorted(json.load(f), key=lambda p: (p["image_id"], -p["score"], p["category_id"], p["bbox"]))


def test_evaluation_equals_one_process_evaluating_the_same_weights(runs):
    """The evaluation after training on two processes (each of the 4 images evaluated by one of
    them, the predictions gathered on rank 0) equals ``--eval-only`` in one process with the final
    weights (their EMA): the same predictions of the same images, each once, and the same metrics."""
    eval_dir, results_file = runs.root / "eval_only", runs.root / "eval_only.json"
    options = _options(runs.tiny_coco, eval_dir, f"train.init_checkpoint={runs.machines}/model_final.pth")
    with Processes(runs.root) as processes:
        processes.wait(processes.start("eval_only", [
            sys.executable, "-c", EVAL_ONLY_DRIVER, str(results_file), "--config-file", str(runs.config), "--eval-only",
            *options]))
    with open(toy_shapes_paths(runs.tiny_coco.root, "val")[0]) as f:
        image_ids = sorted(image["id"] for image in json.load(f)["images"])
    gathered = torch.load(runs.machines / "inference" / "instances_predictions.pth", weights_only=False)
    assert sorted(p["image_id"] for p in gathered) == image_ids, "every image once"
    expected = _coco_results(eval_dir)
    assert {p["image_id"] for p in expected} == set(image_ids)
    assert _coco_results(runs.machines) == expected

    with open(results_file) as f:
        results = json.load(f)["bbox"]
    logged = _metrics_by_iteration(runs.machines)[MAX_ITER]
    assert {f"bbox/{key}": value for key, value in results.items()} == pytest.approx(
        {key: value for key, value in logged.items() if key.startswith("bbox/")}, nan_ok=True, rel=0, abs=0)


def _kill_rank_after_checkpoint(output_dir, rank, iteration, launcher):
    """SIGKILL the process of ``rank`` (its pid from its log) once a checkpoint of ``iteration`` or
    later is tagged; returns the iteration of the checkpoint that the run left."""
    log = output_dir / ("log.txt" if rank == 0 else f"log.txt.rank{rank}")
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        assert launcher.poll() is None, f"the run ended before it was killed:\n{_tail(launcher.log_path)}"
        assert time.monotonic() < deadline, "no checkpoint of the expected iteration"
        periodic = re.fullmatch(r"model_(\d{7})\.pth", _read(output_dir / "last_checkpoint"))
        if periodic and int(periodic.group(1)) >= iteration:
            break
        time.sleep(0.01)
    pid = int(re.findall(r"this process \(pid (\d+)\) is rank", _read(log))[-1])
    assert os.getpgid(pid) == launcher.pid, "the rank's process must be one of the run's"
    os.kill(pid, signal.SIGKILL)
    return _last_checkpoint_iteration(output_dir)


def test_a_process_killed_with_sigkill_resumes_from_the_last_checkpoint_in_every_process(runs):
    """``--num-gpus 2`` (two processes spawned on this machine) with a checkpoint after every
    iteration; rank 1 is killed with SIGKILL after the checkpoint of iteration 2, which ends the
    run; ``--resume`` continues every process at the iteration after the last checkpoint, and the
    run logs the losses, learning rates and evaluation of the uninterrupted two-process run, bit
    for bit (the same operations in the same order), and ends with its weights."""
    out = runs.root / "killed"
    options = _options(runs.tiny_coco, out, "train.checkpointer.period=1")
    with Processes(runs.root) as processes:
        launcher = processes.start("killed", _train_net(runs.config, options, "--num-gpus", "2", "--dist-url", "auto"))
        checkpoint = _kill_rank_after_checkpoint(out, 1, 2, launcher)
        assert processes.wait(launcher, expect_success=False) != 0, "the run must end when one process is killed"
        assert 2 <= checkpoint < MAX_ITER - 1
        processes.wait(processes.start("resumed", _train_net(
            runs.config, options, "--num-gpus", "2", "--dist-url", "auto", "--resume")))

    for log in ("log.txt", "log.txt.rank1"):
        resumed = re.findall(r"Resumed from (\S+): training continues at iteration (\d+)\.", _read(out / log))
        assert resumed == [(str(out / f"model_{checkpoint:07d}.pth"), str(checkpoint + 1))], log
    reference, metrics = _metrics_by_iteration(runs.machines), _metrics_by_iteration(out)
    assert sorted(metrics) == sorted(reference) == list(range(MAX_ITER + 1))
    for iteration in range(MAX_ITER + 1):
        assert _logged(metrics[iteration]) == _logged(reference[iteration]), f"iteration {iteration}"
    final, expected = (torch.load(d / "model_final.pth", map_location="cpu", weights_only=True)
                       for d in (out, runs.machines))
    assert final["iteration"] == MAX_ITER - 1
    assert all(torch.equal(final["model"][name], expected["model"][name]) for name in expected["model"])


# ---------------------------------------------------------------------------------------------
# The pieces, without processes


def _take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_every_rank_sees_the_epoch_of_the_global_batch():
    """10 images, total batch 4: iteration 2 is the stream positions 8-11, of epochs 0, 0, 1, 1. With
    two ranks, rank 0 has only the epoch-0 samples, yet its batch epoch is 1 like rank 1's and like
    the one-process batch's: batch-level stages switch at the same iteration everywhere. The samples
    keep their own epochs, and the ranks' samples make up the one-process batch."""
    size, total, iterations = 10, 4, 12
    single = _take(EpochAwareSampler(size, total, seed=0, rank=0, world_size=1, with_batch_epoch=True),
                   iterations * total)
    assert single[8:12] == [(single[8][0], 0, 1), (single[9][0], 0, 1), (single[10][0], 1, 1), (single[11][0], 1, 1)]
    for world_size in (2, 4):
        batch = total // world_size
        ranks = [_take(EpochAwareSampler(size, total, seed=0, rank=rank, world_size=world_size, with_batch_epoch=True),
                       iterations * batch) for rank in range(world_size)]
        for iteration in range(iterations):
            merged = [item for rank in ranks for item in rank[iteration * batch:(iteration + 1) * batch]]
            assert merged == single[iteration * total:(iteration + 1) * total], (world_size, iteration)
            assert {batch_epoch for _, _, batch_epoch in merged} == {max(epoch for _, epoch, _ in merged)}
    assert _take(EpochAwareSampler(size, total, seed=0, rank=0, world_size=2, with_batch_epoch=True), 6)[4:] == [
        (single[8][0], 0, 1), (single[9][0], 0, 1)]


def _sample(epoch, batch_epoch):
    return {"image": torch.zeros(3, 16, 16, dtype=torch.uint8), "epoch": epoch, "batch_epoch": batch_epoch}


def test_the_collate_decides_by_the_batch_epoch():
    """Multi-scale stops at epoch 1: a rank whose samples are of epoch 0 in a global batch of epoch 1
    keeps the mapper's size, as the other ranks do; before the stop it resizes."""
    collate = BatchCollate(scales=[32], stop_epoch=1)
    assert [s["image"].shape[-1] for s in collate([_sample(0, 1), _sample(0, 1)])] == [16, 16]
    assert [s["image"].shape[-1] for s in collate([_sample(0, 0), _sample(0, 0)])] == [32, 32]


def test_a_total_batch_that_the_processes_cannot_share_is_a_clear_error():
    with pytest.raises(
        ValueError,
        match=r"total_batch_size=6 must be a positive multiple of world_size=4: each of the 4 "
        r"processes .*dataloader.train.total_batch_size",
    ):
        EpochAwareSampler(10, 6, seed=0, rank=0, world_size=4)


def test_torchrun_place(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert torchrun_place() is None
    values = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
              "MASTER_PORT": "29500"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert torchrun_place() == ProcessPlace(rank=3, world_size=4, local_rank=1, local_world_size=2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(RuntimeError, match="LOCAL_WORLD_SIZE, MASTER_PORT are not"):
        torchrun_place()


def test_launch_checks_its_arguments_and_runs_one_process_in_place(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls = []
    launch_module.launch(calls.append, 1, args=("ran",))
    assert calls == ["ran"]
    with pytest.raises(ValueError, match="--machine-rank 2 must be in"):
        launch_module.launch(calls.append, 1, num_machines=2, machine_rank=2, dist_url="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="several machines need machine 0's address"):
        launch_module.launch(calls.append, 1, num_machines=2, machine_rank=1, dist_url="auto")
    assert calls == ["ran"]


def test_resume_needs_the_checkpoint_of_rank_0_in_every_process(tmp_path, monkeypatch):
    """Rank 0 decides whether --resume resumes; a process that does not find rank 0's checkpoint
    (no shared output folder) is an error in every process, not a process that starts over."""
    from dfine.checkpoint import AtomicCheckpointer

    checkpointer = AtomicCheckpointer(torch.nn.Linear(1, 1), str(tmp_path))
    checkpointer.save("model_0000004")
    path = str(tmp_path / "model_0000004.pth")
    monkeypatch.setattr(train_net.comm, "get_world_size", lambda: 2)
    for found_by_rank_1, resumes in ((path, True), (None, "error")):
        monkeypatch.setattr(train_net.comm, "all_gather", lambda found: [found, found_by_rank_1])
        if resumes is True:
            assert train_net.checkpoint_to_resume(str(tmp_path)) == path
        else:
            with pytest.raises(RuntimeError, match=r"rank 0 resumes from .*model_0000004.pth.*rank 1: none.*share"):
                train_net.checkpoint_to_resume(str(tmp_path))
    monkeypatch.setattr(train_net.comm, "all_gather", lambda found: [None, path])
    assert train_net.checkpoint_to_resume(str(tmp_path)) is None, "rank 0 has no checkpoint: every process starts"
