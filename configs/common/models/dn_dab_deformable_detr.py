"""DN-DAB-Deformable-DETR with a ResNet-50 backbone: the official IDEA-Research/DN-DETR model
``-m dn_dab_deformable_detr --transformer_activation relu --use_dn`` (the README's
"DN-DAB-Deformable-DETR-R50-v2": 49.5 box AP at 50 epochs, 48.4 at 24).

DAB-Deformable-DETR (configs/common/models/dab_deformable_detr.py) with DN-DETR's denoising: 5
groups of noised copies of the ground truth before the 300 matching queries (labels flipped with
probability 0.2 to a uniform class, centres moved by up to 0.4 of half the size and sizes by up to
0.4 of the size), embedded with the label embedding ``label_enc`` (92 x 255 for 91 classes) and an
indicator 1; the matching queries cannot see them, nor each group the others. Losses on every layer's
positive denoising queries alone (focal 1, L1 5, GIoU 2), normalised by this process's ground truths
times 5 (the official ``num_tgt``).

Parameters with ``num_classes=91``: 47,429,154, as the official build.
"""
from detectron2.config import LazyCall as L

from dfine.modeling.decoder import DnDetrDenoising

from .dab_deformable_detr import model

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
