#!/usr/bin/env python
"""Convert an official RT-DETRv2 / D-FINE / DEIM / DEIMv2 / DINO / DN-DETR checkpoint for one of our configs.

    python tools/convert_official.py --config-file configs/rtdetrv2_r50.py rtdetrv2_r50vd_6x_coco_ema.pth out.pth
    python train_net.py --config-file configs/rtdetrv2_r50.py --eval-only train.init_checkpoint=out.pth

The weights are taken from ``ema.module`` (else ``model``) of the official file. The model built
from the config must match the checkpoint key for key and shape for shape; otherwise the script
stops and lists every difference (for example a checkpoint of another model size). Official DINO
checkpoints are renamed into our layout first; their 91 class rows (COCO category ids) map onto
the 80 Detectron2 classes of our COCO configs::

    python tools/convert_official.py --config-file configs/dino_r50_4scale_12ep.py checkpoint0011_4scale.pth out.pth

And official DN-DETR checkpoints (``-m dn_dab_detr``, ``-m dn_dab_deformable_detr``); into a config without
denoising, the denoising label embedding is left out::

    python tools/convert_official.py --config-file configs/dn_dab_deformable_detr_r50_50ep.py checkpoint.pth out.pth

Official DN-DETR DN-DAB-DETR checkpoints (``-m dn_dab_detr``) likewise::

    python tools/convert_official.py --config-file configs/dn_dab_detr_r50_50ep.py checkpoint.pth out.pth

``--backbone`` converts pretrained backbone weights instead (HGNetv2 ``PPHGNetV2_B0_stage1.pth``,
DINOv3 ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``, DEIMv2 ``vitt_distill.pt``) into a whole
checkpoint to start a training from (``train.init_checkpoint``); the rest of the model keeps its
initialisation. ``--partial`` takes only the tensors of equal name and shape and lists the others,
as the official code starts DEIMv2 Atto / Femto / Pico from B0::

    python tools/convert_official.py --backbone --config-file configs/deimv2_dinov3_l.py \
        dinov3_vits16_pretrain_lvd1689m-08c60483.pth deimv2_dinov3_l_init.pth
    python tools/convert_official.py --backbone --partial --config-file configs/deimv2_hgnetv2_atto.py \
        PPHGNetV2_B0_stage1.pth deimv2_atto_init.pth
"""
import argparse
import collections
import logging
import sys

import torch
from detectron2.config import instantiate

from dfine.checkpoint import CheckpointFileError, read_checkpoint_file
from dfine.checkpoint.official import (
    CheckpointMismatchError,
    convert_backbone_state_dict,
    convert_renamed_state_dict,
    convert_official_state_dict,
    extract_official_state_dict,
    official_layout,
)
from dfine.config import load_config


OFFICIAL_CHECKPOINT_GLOBALS = [collections.Counter, argparse.Namespace]


def load_official_file(path: str):
    """The official file, never unpickled as arbitrary objects: torch's safe loader, plus the plain
    classes official training checkpoints hold besides tensors (the LR scheduler's Counter, the
    command-line ``args`` Namespace that DETR-lineage ``main.py`` files save)."""
    with torch.serialization.safe_globals(OFFICIAL_CHECKPOINT_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="our LazyConfig of the same model")
    parser.add_argument("official", help="official checkpoint (.pth)")
    parser.add_argument("output", help="converted Detectron2 checkpoint (.pth)")
    parser.add_argument("--backbone", action="store_true", help="the file holds pretrained backbone weights")
    parser.add_argument("--partial", action="store_true",
                        help="with --backbone: take the tensors of equal name and shape only (pruned HGNetv2)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    args = parser.parse_args(argv)
    if args.partial and not args.backbone:
        parser.error("--partial applies to --backbone weights only")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cfg = load_config(args.config_file, args.opts)
    try:
        checkpoint = read_checkpoint_file(args.official, load_official_file)
    except CheckpointFileError as e:  # a file that is not a checkpoint, as every tool reports it
        sys.exit(str(e))
    model = instantiate(cfg.model)
    try:
        if args.backbone:
            state_dict, prefix, skipped = convert_backbone_state_dict(
                extract_official_state_dict(checkpoint), model, partial=args.partial)
            print(f"Backbone weights loaded under {prefix!r}; {len(skipped)} tensor(s) not taken"
                  + "".join(f"\n  {line}" for line in skipped))
        else:
            official = extract_official_state_dict(checkpoint)
            layout = official_layout(official)  # DINO and DN-DETR are renamed, the RT-DETR family is not
            state_dict = convert_renamed_state_dict(official, model, layout) if layout else \
                convert_official_state_dict(official, model)
    except CheckpointMismatchError as e:
        sys.exit(f"{args.official} does not fit {args.config_file}:\n{e}")
    model.load_state_dict(state_dict, strict=True)
    torch.save({"model": state_dict, "__source__": f"converted from {args.official}"}, args.output)
    print(f"Wrote {args.output}: {len(state_dict)} tensors, "
          f"{sum(v.numel() for k, v in state_dict.items() if v.is_floating_point()):,} floating-point values.")


if __name__ == "__main__":
    main()
