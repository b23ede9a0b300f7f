"""What every DN-DETR (DN-DAB-DETR) config shares: the official training recipe of IDEA-Research/DN-DETR
(``main.py`` defaults with ``-m dn_dab_detr --use_dn``): the DETR augmentation, batch 16 (the README's
distributed command: 2 images per GPU on 8 GPUs), AdamW lr 1e-4 with the backbone at 1e-5 and weight
decay 1e-4 on every parameter, one LR drop by 10 (``StepLR(lr_drop)``, stepped per epoch), gradient
clipping 0.1, no EMA, float32 (the official commands have no --amp), and the model variants.

Epochs: the README's commands train 50 epochs with ``--lr_drop 40``. The README gives no command for
its 12-epoch models; ``--drop_lr_now`` ("for 12epoch setting") says they drop the LR for the last
epoch, as DINO's 12-epoch runs (``lr_drop`` 11), which these configs use.
"""

# Official epochs -> the epoch of the LR drop.
LR_DROP = {12: 11, 50: 40}


def dn_dab_detr_schedule(train, lr_multiplier, epochs, output_dir):
    """``epochs`` with the LR drop of :data:`LR_DROP`, evaluation and a checkpoint every epoch, no EMA,
    no AMP."""
    train.update(output_dir=output_dir, epochs=epochs, eval_epochs=1, checkpoint_epochs=1)
    train.ema.enabled = False
    train.amp.enabled = False
    train.clip_grad.max_norm = 0.1
    lr_multiplier.drop_epochs = [LR_DROP[epochs]]


def dc5(model):
    """``--dilation``: ``layer4`` dilated instead of strided (stride 16), the "DC5" models."""
    model.backbone.dilation = True
    model.encoder.feat_strides = [16]


def three_patterns(model):
    """``--num_patterns 3``: every anchor in 3 queries with a learned pattern embedding each (900
    matching queries)."""
    model.decoder.query_selection.num_patterns = 3


def resnet101(model):
    """``--backbone resnet101``."""
    model.backbone.depth = 101


def without_denoising(model):
    """DAB-DETR: the same model trained without denoising queries."""
    model.decoder.denoising = None
