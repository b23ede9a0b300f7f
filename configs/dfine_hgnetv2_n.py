"""D-FINE-N: HGNetv2-B0 with LAB, two levels (strides 16 and 32) and a 128-channel encoder and
decoder, 160 epochs on COCO (official configs/dfine/dfine_hgnetv2_n_coco.yml). README: 42.8 AP,
4M parameters, 7 GFLOPs."""
from .dfine_hgnetv2_s import dataloader, lr_multiplier, model, optimizer, train

model.backbone.return_idx = [2, 3]
model.encoder.update(in_channels=[512, 1024], feat_strides=[16, 32], hidden_dim=128, use_encoder_idx=[1],
                     dim_feedforward=512, expansion=0.34, depth_mult=0.5)
model.decoder.update(feat_channels=[128, 128], feat_strides=[16, 32], hidden_dim=128, dim_feedforward=512,
                     num_levels=2, num_layers=3, num_points=[6, 6])

dataloader.train.mapper.policy_epoch = 148
dataloader.train.update(total_batch_size=128, multi_scale=None, multi_scale_stop_epoch=148)
train.output_dir = "./output/dfine_hgnetv2_n"
train.epochs = 160
train.stage_switch.epoch = 148

optimizer.lr = 8e-4
for rule in optimizer.params.rules[:2]:
    rule["lr"] = 4e-4
