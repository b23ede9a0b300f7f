#!/usr/bin/env python
"""Train or evaluate a real-time DETR model described by a Detectron2 LazyConfig.

    python train_net.py --config-file configs/rtdetrv2_r50.py [--num-gpus 8] [key=value ...]
    python train_net.py --config-file configs/rtdetrv2_r50.py --eval-only train.init_checkpoint=model.pth
    python train_net.py --config-file configs/rtdetrv2_r50.py --resume

When ``train.epochs`` is set, the number of iterations is derived from the training set size and
the total batch size (``eval_epochs`` / ``checkpoint_epochs`` likewise), and printed at start.
"""
import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from dfine.engine import DetrTrainer, EMAWeightsLoader, ModelEMA, unwrap_model

logger = logging.getLogger("dfine")


def do_test(cfg, model):
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def resolve_epochs(cfg, num_images: int) -> None:
    """Express the epoch-based keys of ``cfg.train`` in iterations (global batch, drop-last)."""
    train = cfg.train
    if not train.get("epochs"):
        return
    total_batch = cfg.dataloader.train.total_batch_size
    iters_per_epoch = max(num_images // total_batch, 1)
    train.max_iter = train.epochs * iters_per_epoch
    if train.get("eval_epochs"):
        train.eval_period = train.eval_epochs * iters_per_epoch
    if train.get("checkpoint_epochs"):
        train.checkpointer.period = train.checkpoint_epochs * iters_per_epoch
    logger.info(
        "Schedule: %d epochs x %d iterations (%d images / total batch %d) = %d iterations; "
        "evaluation every %d and checkpoints every %d iterations.",
        train.epochs, iters_per_epoch, num_images, total_batch, train.max_iter, train.eval_period,
        train.checkpointer.period)


def do_train(args, cfg):
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    resolve_epochs(cfg, len(train_loader.dataset))

    model = create_ddp_model(model, **cfg.train.ddp)
    ema = ModelEMA(unwrap_model(model), decay=cfg.train.ema.decay, warmups=cfg.train.ema.warmups) if cfg.train.ema.enabled else None
    trainer = DetrTrainer(model=model, data_loader=train_loader, optimizer=optimizer, amp=cfg.train.amp.enabled,
                          amp_dtype=cfg.train.amp.dtype, clip_grad_max_norm=cfg.train.clip_grad.max_norm, ema=ema)
    checkpointer = DetectionCheckpointer(unwrap_model(model), cfg.train.output_dir, trainer=trainer,
                                         **({"ema": ema} if ema is not None else {}))
    eval_model = ema.module if ema is not None else model
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, eval_model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if ema is not None and ema.updates == 0:
        # A fresh run (possibly from init_checkpoint weights): the average starts at the model.
        ema.module.load_state_dict(unwrap_model(model).state_dict())
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        model = create_ddp_model(model)
        # Evaluate the EMA weights when the checkpoint has them, as the official code does.
        DetectionCheckpointer(model, ema=EMAWeightsLoader(unwrap_model(model))).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
