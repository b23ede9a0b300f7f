"""Training defaults shared by every config (read by train_net.py).

Lengths are in iterations (``max_iter``, ``eval_period``, ``checkpointer.period``) unless
``epochs`` is set. Then train_net.py sets ``max_iter`` from ``epochs``, and ``eval_period`` /
``checkpointer.period`` from ``eval_epochs`` / ``checkpoint_epochs`` when those are set (the
iteration values stay in force otherwise), with ``iterations per epoch = number of training images
/ dataloader.train.total_batch_size`` (fractional, as the epochs of the epoch-aware sampler),
rounding up, and logs the result. ``train.epochs=null`` switches a config to iterations. A length
in iterations given on the command line wins over the config's length in epochs (``train.max_iter=60``
on a config with ``epochs = 120`` trains 60 iterations, and the log says so); a command line that
gives one length both ways is refused. train_net.py also sets ``iters_per_epoch``, which the schedules
that place phases in epochs read (DEIM's flat-cosine), so they hold for a run in iterations too.

``device="auto"`` means "cuda" when CUDA is available and "cpu" otherwise, decided when
train_net.py runs (not when the config is written), so a saved config runs on either.
"""

train = dict(
    output_dir="./output",
    # Weights to start training from or to evaluate with --eval-only: the checkpoint's EMA weights
    # if it has them, else its model weights. --resume ignores it when output_dir has a checkpoint.
    init_checkpoint="",
    max_iter=90000,
    epochs=None,
    # Training images / dataloader.train.total_batch_size: set by train_net.py from the data set.
    iters_per_epoch=None,
    eval_period=5000,
    eval_epochs=None,
    checkpointer=dict(period=5000, max_to_keep=3),
    checkpoint_epochs=None,
    log_period=20,
    # Autocast on CUDA (the official training commands pass --use-amp: float16 with a GradScaler);
    # off on CPU.
    amp=dict(enabled=True, dtype="float16"),
    # Official clip_max_norm; 0 disables.
    clip_grad=dict(max_norm=0.1),
    # Official ModelEMA: decay * (1 - exp(-updates / warmups)). Evaluation uses the EMA weights.
    ema=dict(enabled=True, decay=0.9999, warmups=2000),
    # D-FINE / DEIM stage switch (dfine.engine.StageSwitchHook): at the start of `epoch` (the official
    # stop_epoch) reload the best evaluated state of the augmentation stage and set the EMA decay
    # to `ema_restart_decay`. None disables it (RT-DETRv2).
    stage_switch=dict(epoch=None, ema_restart_decay=0.9999),
    # Arguments of DistributedDataParallel (through detectron2's create_ddp_model).
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # BatchNorm -> SyncBatchNorm when training on several GPUs (official runtime.yml sync_bn).
    sync_bn=True,
    device="auto",
    seed=-1,
)
