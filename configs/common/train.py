"""Training defaults shared by every config (read by train_net.py).

Lengths are in iterations (``max_iter``, ``eval_period``, ``checkpointer.period``) unless
``epochs`` is set: then train_net.py derives ``max_iter`` from the training set size and the total
batch size, and ``eval_epochs`` / ``checkpoint_epochs`` (when set) override the two periods.
"""
import torch

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=90000,
    epochs=None,
    eval_period=5000,
    eval_epochs=None,
    log_period=20,
    checkpointer=dict(period=5000, max_to_keep=3),
    checkpoint_epochs=None,
    # Autocast on CUDA only (the official README trains with --use-amp); ignored on CPU.
    amp=dict(enabled=True, dtype="float16"),
    clip_grad=dict(max_norm=0.1),
    # Official ModelEMA: decay * (1 - exp(-updates / warmups)); evaluation uses these weights.
    ema=dict(enabled=True, decay=0.9999, warmups=2000),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    device="cuda" if torch.cuda.is_available() else "cpu",
    seed=-1,
)
