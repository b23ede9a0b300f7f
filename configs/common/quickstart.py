"""The quick starts' data and schedule (configs/quickstart/): the bundled toy data set and short runs
from scratch on 2 CPU cores.

The toy data set is generated on first use into ~/.cache/dfine/datasets (or $DFINE_DATASETS): six
classes of shapes on textured 256x256 images, 800 train / 200 val.
"""
from detectron2.config import LazyCall as L

from dfine.data import detr_test_augmentations, detr_train_augmentations

TOY_CLASSES = 6


def use_toy_shapes(dataloader, image_size, batch_size=8):
    """Train on ``toy_shapes_train`` and evaluate on ``toy_shapes_val`` at ``image_size``,
    single-scale, with a seeded loader and two workers."""
    dataloader.train.dataset.names = "toy_shapes_train"
    dataloader.test.dataset.names = "toy_shapes_val"
    dataloader.train.mapper.image_size = image_size
    dataloader.test.mapper.image_size = image_size
    dataloader.train.update(total_batch_size=batch_size, num_workers=2, multi_scale=None, seed=0)
    dataloader.test.num_workers = 2


def toy_detector(model, image_size, num_queries=100, num_denoising=50):
    """The toy classes, ``num_queries`` queries (all of them output), ``num_denoising`` denoising
    queries, and the position embeddings and anchors of ``image_size`` precomputed."""
    model.decoder.update(num_classes=TOY_CLASSES, num_queries=num_queries)
    model.decoder.denoising.num_denoising = num_denoising
    model.decoder.query_selection.eval_spatial_size = [image_size, image_size]
    if "eval_spatial_size" in model.encoder:  # the LiteEncoder has no position embedding to precompute
        model.encoder.eval_spatial_size = [image_size, image_size]
    model.num_top_queries = num_queries


def short_run(train, output_dir, epochs, eval_epochs, checkpoint_epochs=2):
    """A short seeded run: EMA warm-up of 100 updates, a log line every 10 iterations."""
    train.update(output_dir=output_dir, epochs=epochs, eval_epochs=eval_epochs, checkpoint_epochs=checkpoint_epochs,
                 log_period=10, seed=0)
    train.ema.warmups = 100


def rtdetrv2_r18_toy(model, dataloader, train, optimizer, lr_multiplier, image_size=128):
    """RT-DETRv2-S (configs/rtdetrv2_r18.py) narrowed to 128 channels for the small inputs, trained
    from scratch for 4 epochs of batch 8 with flips only (no photometric distortion, zoom-out or IoU
    crop), at a higher LR than the official one (no pretrained backbone can be downloaded) with
    rtdetrv2_r18.py's parameter groups and a warm-up of 100 iterations."""
    model.encoder.update(hidden_dim=128, dim_feedforward=512)
    model.decoder.hidden_dim = 128
    model.decoder.input_proj.in_channels = [128, 128, 128]
    model.decoder.layer.dim_feedforward = 512
    toy_detector(model, image_size)
    use_toy_shapes(dataloader, image_size)
    dataloader.train.mapper.policy_epoch = 0
    short_run(train, "./output/quickstart_rtdetrv2_r18_toy", epochs=4, eval_epochs=4)
    optimizer.lr = 4e-4
    lr_multiplier.warmup_iters = 100


def detr_r18_toy(model, dataloader, train, optimizer, lr_multiplier, output_dir, epochs):
    """A config on the DETR data pipeline (DINO, the DN-DETRs, Deformable-DETR) narrowed for the toy
    set: ResNet-18 with trainable BatchNorm (no pretrained weights can be downloaded), 1 encoder and
    3 decoder layers of width 128 (feed-forward 512), 100 queries (DINO: 50 denoising queries), the
    DETR augmentation at the toy images' scale (shorter side 96-144, crops of 80-128; 128 for
    evaluation) in padded batches of 8, ``epochs`` epochs with the LR drop before the last one, at
    4e-4 (above the official LRs, for a short run; the backbone too, it trains from scratch;
    Deformable-DETR's sampling offsets at 0.1 x)."""
    model.backbone.update(depth=18, freeze_at=0, frozen_bn=False)
    # ResNet-18's stages have a quarter of ResNet-50's channels.
    in_channels = [channels // 4 for channels in model.encoder.in_channels]
    model.encoder.update(in_channels=in_channels, hidden_dim=128, num_layers=1, dim_feedforward=512)
    model.decoder.update(num_classes=TOY_CLASSES, hidden_dim=128, num_queries=100, num_layers=3)
    model.decoder.input_proj.in_channels = [128] * len(model.decoder.input_proj.in_channels)
    model.decoder.layer.dim_feedforward = 512
    model.num_top_queries = 100
    if model.decoder.denoising is not None and "num_denoising" in model.decoder.denoising:
        model.decoder.denoising.num_denoising = 50  # DINO's contrastive denoising queries

    use_toy_shapes(dataloader, image_size=None)
    # The toy images are 256x256 on disk.
    dataloader.train.mapper.augmentations = L(detr_train_augmentations)(
        scales=[96, 112, 128, 144], max_size=240, crop_resize_scales=[96, 112, 128], crop_size=[80, 128]
    )
    dataloader.test.mapper.augmentations = L(detr_test_augmentations)(size=128, max_size=213)

    short_run(train, output_dir, epochs=epochs, eval_epochs=epochs)
    lr_multiplier.drop_epochs = [epochs - 1]
    optimizer.lr = 4e-4
    optimizer.params.rules.backbone.lr = 4e-4
    if "linear_proj" in optimizer.params.rules:  # Deformable-DETR's sampling offsets: 0.1 x LR
        optimizer.params.rules.linear_proj.lr = 4e-5
