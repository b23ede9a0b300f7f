"""What every Deformable-DETR config shares: the official fundamentalvision/Deformable-DETR training
recipe (main.py's defaults) besides the optimizer (configs/common/optim.py::DeformableDetrAdamW): the
DETR augmentation, a total batch of 32 (the README: "trained with total batch size of 32"; 8 GPUs x
``--batch_size`` 4), one LR drop by 10 (``StepLR(lr_drop)``: 50 epochs, drop at 40), gradient clipping
0.1, no EMA, float32 (no AMP), an evaluation and a checkpoint every epoch.
"""


def deformable_detr_schedule(train, lr_multiplier, dataloader, epochs, drop_epoch, output_dir):
    """``epochs`` with one LR drop at ``drop_epoch``, evaluation and a checkpoint every epoch, no EMA,
    no AMP, clipping 0.1, a total batch of 32."""
    train.update(output_dir=output_dir, epochs=epochs, eval_epochs=1, checkpoint_epochs=1)
    train.ema.enabled = False
    train.amp.enabled = False
    train.clip_grad.max_norm = 0.1
    lr_multiplier.drop_epochs = [drop_epoch]
    dataloader.train.total_batch_size = 32
