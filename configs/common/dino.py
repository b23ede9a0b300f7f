"""What every DINO config shares: the official training recipe of IDEA-Research/DINO (main.py with
config/DINO/DINO_4scale.py): the DETR augmentation, AdamW (backbone 1e-5), one LR drop, gradient
clipping 0.1, no EMA, float32 (the official runs have no --amp), and the scale variants.

Epochs are the official command lines' ``--options epochs=... lr_drop=...`` (the README's training
commands): 12 / 11, 24 / 20, 36 / 33.
"""
from dfine.modeling.backbone import SWIN_PRESETS, SwinTransformer

from detectron2.config import LazyCall as L

# Official epochs -> the epoch of the LR drop.
LR_DROP = {12: 11, 24: 20, 36: 33}


def dino_schedule(train, lr_multiplier, epochs, output_dir):
    """``epochs`` with the official LR drop, evaluation and a checkpoint every epoch, no EMA, no AMP."""
    train.update(output_dir=output_dir, epochs=epochs, eval_epochs=1, checkpoint_epochs=1)
    train.ema.enabled = False
    train.amp.enabled = False
    train.clip_grad.max_norm = 0.1
    lr_multiplier.drop_epochs = [LR_DROP[epochs]]


def five_scale(model, dataloader, in_channels):
    """DINO_5scale.py: the stride-4 map as a fifth level (``return_interm_indices [0, 1, 2, 3]``,
    ``num_feature_levels 5``) and one image per GPU (8 per batch on the official 8 GPUs)."""
    model.encoder.update(in_channels=in_channels, feat_strides=[4, 8, 16, 32], num_levels=5)
    model.decoder.num_levels = 5
    model.decoder.input_proj.update(in_channels=[256] * 5, in_strides=[4, 8, 16, 32, 64])
    dataloader.train.total_batch_size = 8


def swin_large(model, out_indices):
    """The official ``swin_L_384_22k`` backbone (DINO_4scale_swin.py: gradient checkpointing on, drop
    path 0.2 over the blocks, nothing frozen); the encoder takes its stages' channels."""
    model.backbone = L(SwinTransformer)(**SWIN_PRESETS["swin_L_384_22k"], out_indices=list(out_indices),
                                        drop_path_rate=0.2, use_checkpoint=True)
    model.encoder.in_channels = [192 * 2 ** i for i in out_indices]
    model.encoder.feat_strides = [4 * 2 ** i for i in out_indices]
