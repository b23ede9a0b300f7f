"""What every (DN-)DAB-Deformable-DETR config shares: the official IDEA-Research/DN-DETR training
recipe (main.py defaults with ``-m dn_dab_deformable_detr``): the DETR augmentation, AdamW with lr
1e-4, parameters named "backbone" at 1e-5, weight decay 1e-4 on every parameter (main.py's two
parameter groups; no separate rate for the sampling offsets), batch 16 (2 per GPU on 8 GPUs, the
README's command), one LR drop by 10 (``StepLR(lr_drop)``), gradient clipping 0.1, no EMA, float32
(no ``--amp``), an evaluation and a checkpoint every epoch.

Epochs -> the epoch of the LR drop: 50 / 40 (the README's training command, ``--epochs 50 --lr_drop
40``); 12 / 11 and 24 / 20 as the other DETR-lineage recipes (the README gives no command for them).

:func:`with_denoising` turns configs/common/models/dab_deformable_detr.py into DN-DAB-Deformable-DETR.
"""
from detectron2.config import LazyCall as L

from dfine.modeling.decoder import DnDetrDenoising

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


def with_denoising(model):
    """DN-DAB-Deformable-DETR (``--use_dn``, the README's "DN-DAB-Deformable-DETR-R50-v2": 49.5 box AP
    at 50 epochs, 48.4 at 24): DN-DETR's denoising, 5 groups of noised copies of the ground truth before
    the 300 matching queries (labels flipped with probability 0.2 to a uniform class, centres moved by
    up to 0.4 of half the size and sizes by up to 0.4 of the size), embedded with the label embedding
    ``label_enc`` (92 x 255 for 91 classes) and an indicator 1; the matching queries cannot see them,
    nor each group the others. Losses on every layer's positive denoising queries alone (focal 1, L1 5,
    GIoU 2), normalised by this process's ground truths times 5 (the official ``num_tgt``). Parameters
    with ``num_classes=91``: 47,429,154, as the official build."""
    model.decoder.query_selection.label_embedding = True
    model.decoder.denoising = L(DnDetrDenoising)(
        num_classes="${..num_classes}",
        num_groups=5,
        label_noise_ratio=0.2,
        box_noise_scale=0.4,
    )
    # DN-DETR's tgt_loss_*: the positive denoising queries only, over num_tgt = GT x groups.
    model.criterion.denoising_normaliser = "local"
    model.criterion.denoising_positives_only = True
