#!/usr/bin/env python
"""Train or evaluate a real-time DETR model described by a Detectron2 LazyConfig.

    python train_net.py --config-file configs/rtdetrv2_r50.py [--num-gpus 8] [key=value ...]
    python train_net.py --config-file configs/rtdetrv2_r50.py --resume
    torchrun --nproc-per-node 8 train_net.py --config-file configs/rtdetrv2_r50.py
    python train_net.py --config-file configs/rtdetrv2_r50.py --eval-only train.init_checkpoint=model.pth

The config provides ``model``, ``optimizer`` (its ``params.model`` is filled in here),
``lr_multiplier`` (an fvcore ParamScheduler), ``dataloader.{train,test,evaluator}`` and ``train``
(configs/common/train.py documents its keys, including the epoch-based lengths).

EMA weights are used as the official code uses them: with ``train.ema.enabled`` the evaluation
during training runs on the EMA weights only (the raw weights are not evaluated), and when
``train.init_checkpoint`` has EMA weights, ``--eval-only`` evaluates them and a new training
starts from them. A new training may start from a checkpoint with another number of classes
(fine-tuning COCO or Objects365 weights on a custom data set): the class-dependent tensors are
re-initialised and listed in the log, any other difference is an error
(``dfine.checkpoint.load_finetune_weights``).

Processes: ``--num-gpus N`` per machine (GPUs with NCCL, else CPU processes with gloo),
``--num-machines`` / ``--machine-rank`` / ``--dist-url`` as in Detectron2, or the processes that
torchrun started (``dfine.engine.launch``). ``dataloader.train.total_batch_size`` is the batch of
all processes together.
"""
import logging
import math
from fractions import Fraction

import torch
from detectron2.config import instantiate
from detectron2.engine import default_argument_parser, default_setup, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf

from dfine.checkpoint import (
    AtomicCheckpointer,
    find_resume_checkpoint,
    load_ema_or_model_weights,
    load_finetune_weights,
)
from dfine.config import ConfigError, check_training_values, load_config
from dfine.engine import (
    EMAHook,
    ModelEMA,
    RNGStateHook,
    StageSwitchHook,
    Trainer,
    resolve_device,
    training_writers,
    unwrap_model,
)
from dfine.engine.launch import describe_processes, launch

logger = logging.getLogger("dfine.train_net")

# (length in epochs, the length in iterations it replaces), see configs/common/train.py.
EPOCH_KEYS = (("epochs", "max_iter"), ("eval_epochs", "eval_period"), ("checkpoint_epochs", "checkpointer.period"))


def epochs_in_iterations(epochs: float, num_images: int, total_batch_size: int) -> Fraction:
    """``epochs`` of the sample stream in (fractional) iterations. Exact rational arithmetic:
    3 * (10 / 3) must be 10 iterations, not 10.000000000000002."""
    return Fraction(str(epochs)) * num_images / total_batch_size


def command_line_keys(opts) -> set:
    """The config keys that ``key=value`` overrides on the command line set."""
    return {opt.split("=", 1)[0].lstrip("+~") for opt in opts if "=" in opt}


def convert_epochs(cfg, num_images: int, command_line=frozenset()) -> None:
    """Set ``cfg.train.iters_per_epoch`` and express the lengths given in epochs in iterations, in
    place (see configs/common/train.py).

    One epoch is ``num_images / cfg.dataloader.train.total_batch_size`` iterations (fractional,
    like the epochs of the epoch-aware sampler); ``e`` epochs become
    ``ceil(e * num_images / total_batch_size)`` iterations. A length in iterations given on the
    command line (``command_line``: the overridden keys) wins over the config's length in epochs,
    and the log says so. Without ``train.epochs`` the run is configured in iterations and
    ``eval_epochs`` / ``checkpoint_epochs`` are ignored.

    Raises:
        ConfigError: the command line gives one length both in epochs and in iterations
            (``train.epochs=null train.max_iter=N`` is the way to count in iterations).
    """
    train = cfg.train
    total_batch_size = cfg.dataloader.train.total_batch_size
    train.iters_per_epoch = float(Fraction(num_images, total_batch_size))
    both = [f"train.{e}, train.{i}" for e, i in EPOCH_KEYS
            if {f"train.{e}", f"train.{i}"} <= set(command_line) and train.get(e) is not None]
    if both:
        raise ConfigError(f"The command line gives a length both in epochs and in iterations ({'; '.join(both)}); "
                          "give one of each pair (train.<epochs key>=null to count in iterations).")
    if train.get("epochs") is None:
        ignored = [f"train.{key}" for key, _ in EPOCH_KEYS if train.get(key) is not None]
        if ignored:
            logger.info("train.epochs is None: the run is set in iterations and %s ignored.", " and ".join(ignored))
        return
    conversions = []
    for epochs_key, iters_key in EPOCH_KEYS:
        epochs = train.get(epochs_key)
        if epochs is None:
            continue
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)):
            raise ValueError(f"train.{epochs_key} must be a number, or None (null on the command line); got {epochs!r}")
        if f"train.{iters_key}" in command_line:
            conversions.append(f"train.{iters_key}={OmegaConf.select(train, iters_key)} from the command line "
                               f"(instead of train.{epochs_key}={epochs})")
            continue
        iterations = math.ceil(epochs_in_iterations(epochs, num_images, total_batch_size))
        OmegaConf.update(train, iters_key, iterations, merge=False)
        conversions.append(f"train.{epochs_key}={epochs} -> train.{iters_key}={iterations}")
    logger.info(
        "%d training images / total batch size %d = %.3f iterations per epoch: %s",
        num_images, total_batch_size, train.iters_per_epoch, ", ".join(conversions),
    )


def first_iteration_of_epoch(epoch: float, num_images: int, total_batch_size: int) -> int:
    """The first iteration whose batch reaches ``epoch`` of the sample stream (a batch belongs to
    the epoch of its last sample, as the batch collate decides its epoch-dependent behaviour)."""
    return math.floor(epochs_in_iterations(epoch, num_images, total_batch_size))


def load_initial_weights(model, path: str) -> None:
    """The weights to evaluate (``--eval-only``): the checkpoint's EMA weights when it has them
    (as the official evaluation takes them), else its model weights; a checkpoint that does not fit
    the model is an error listing the differences. A training starts from them through
    ``load_finetune_weights``, which also re-initialises class-dependent tensors."""
    weights = load_ema_or_model_weights(model, path)
    if path:
        logger.info("Loaded the %s weights of %s.", weights, path)


def checkpoint_to_resume(output_dir: str):
    """The checkpoint ``--resume`` continues from (:func:`dfine.checkpoint.find_resume_checkpoint`),
    or None: rank 0 decides by what it finds in the output folder, and every process must find the
    same file, since each loads it (a process that started over instead would train other weights
    from another iteration, or wait for the others forever).

    Raises:
        RuntimeError: rank 0 has a checkpoint that another process does not see (its output folder
            is not on a file system that all machines share).
    """
    found = find_resume_checkpoint(output_dir)
    if comm.get_world_size() == 1:
        return found
    everyone = comm.all_gather(found)
    if everyone[0] is None:
        return None
    others = ", ".join(f"rank {rank}: {path or 'none'}" for rank, path in enumerate(everyone) if path != everyone[0])
    if others:
        raise RuntimeError(
            f"--resume: rank 0 resumes from {everyone[0]}, but other processes find another last checkpoint "
            f"({others}). train.output_dir must be a folder that all machines share: rank 0 alone writes checkpoints.")
    return found


def do_test(cfg, model):
    """COCO-style evaluation of ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    return results


def do_train(args, cfg):
    check_training_values(cfg, comm.get_world_size())
    device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(device)
    if cfg.train.sync_bn and comm.get_world_size() > 1 and torch.device(device).type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    num_images = len(train_loader.dataset)
    convert_epochs(cfg, num_images, command_line_keys(args.opts))

    ema = ModelEMA(model, decay=cfg.train.ema.decay, warmups=cfg.train.ema.warmups) if cfg.train.ema.enabled else None
    ddp_kwargs = dict(cfg.train.ddp)
    if torch.device(device).type == "cpu":
        # DDP takes no device_ids for CPU modules (detectron2 would pass the local rank).
        ddp_kwargs["device_ids"] = None
    model = create_ddp_model(model, **ddp_kwargs)
    trainer = Trainer(
        model=model,
        data_loader=train_loader,
        optimizer=optimizer,
        amp_enabled=cfg.train.amp.enabled,
        amp_dtype=cfg.train.amp.dtype,
        clip_grad_max_norm=cfg.train.clip_grad.max_norm,
        dump_dir=cfg.train.output_dir,
    )
    # Written atomically: a run killed while saving keeps its previous checkpoint to resume from.
    checkpointer = AtomicCheckpointer(
        model, cfg.train.output_dir, trainer=trainer, **({"ema": ema} if ema is not None else {})
    )
    eval_model = ema.module if ema is not None else model
    stage_switch = None
    switch = cfg.train.get("stage_switch") or {}
    if switch.get("epoch") is not None:
        switch_iter = first_iteration_of_epoch(switch.epoch, num_images, cfg.dataloader.train.total_batch_size)
        logger.info("train.stage_switch.epoch=%s -> stage 2 starts at iteration %d.", switch.epoch, switch_iter)
        stage_switch = StageSwitchHook(
            checkpointer, switch_iter, cfg.train.eval_period, ema=ema, restart_decay=switch.ema_restart_decay
        )
    # The log line sums the loss terms into the criterion's groups (every term stays in metrics.json).
    loss_group = getattr(getattr(unwrap_model(model), "criterion", None), "loss_group", None)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            RNGStateHook(),
            EMAHook(ema) if ema is not None else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            # Evaluation and the stage switch's decision first, so a checkpoint of the same
            # iteration holds them (an exact resume). The metrics are written before the
            # checkpoint: a run killed in between logs that iteration again when resumed, rather
            # than never.
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, eval_model)),
            stage_switch,
            hooks.PeriodicWriter(
                training_writers(cfg.train.output_dir, cfg.train.max_iter, loss_group), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        ]
    )
    # The last checkpoint, or the newest readable one when it is damaged (with a warning).
    resume_from = checkpoint_to_resume(cfg.train.output_dir) if args.resume else None
    if resume_from:
        # Everything the checkpoint holds: weights, EMA, optimizer, scaler, hook states (the
        # hooks are registered first for that: LR scheduler, stage switch, RNG states) and the
        # iteration that had just finished. The data stream restarts at the next iteration's
        # samples (Trainer), whose augmentations are seeded by their stream position.
        checkpointer.load(resume_from)
        start_iter = trainer.iter + 1
        logger.info("Resumed from %s: training continues at iteration %d.", resume_from, start_iter)
    else:
        load_finetune_weights(model, cfg.train.init_checkpoint)
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="dfine")
    logger.info(describe_processes())

    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(resolve_device(cfg.train.device))
        load_initial_weights(model, cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
