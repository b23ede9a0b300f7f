"""What every (DN-)DAB-Deformable-DETR config shares: the official IDEA-Research/DN-DETR training
recipe (main.py defaults with ``-m dn_dab_deformable_detr``): the DETR augmentation, AdamW with lr
1e-4, parameters named "backbone" at 1e-5, weight decay 1e-4 on every parameter (main.py's two
parameter groups; no separate rate for the sampling offsets), batch 16 (2 per GPU on 8 GPUs, the
README's command), one LR drop by 10 (``StepLR(lr_drop)``), gradient clipping 0.1, no EMA, float32
(no ``--amp``), an evaluation and a checkpoint every epoch.

Epochs -> the epoch of the LR drop: 50 / 40 (the README's training command, ``--epochs 50 --lr_drop
40``); 12 / 11 and 24 / 20 as the other DETR-lineage recipes (the README gives no command for them).
"""

# Epochs -> the epoch of the LR drop.
LR_DROP = {12: 11, 24: 20, 50: 40}


def dab_deformable_schedule(train, lr_multiplier, epochs, output_dir):
    """``epochs`` with the LR drop of :data:`LR_DROP`, evaluation and a checkpoint every epoch, no EMA,
    no AMP, clipping 0.1."""
    train.update(output_dir=output_dir, epochs=epochs, eval_epochs=1, checkpoint_epochs=1)
    train.ema.enabled = False
    train.amp.enabled = False
    train.clip_grad.max_norm = 0.1
    lr_multiplier.drop_epochs = [LR_DROP[epochs]]
