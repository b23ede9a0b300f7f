from .presnet import PResNet, freeze_batch_norm  # noqa: F401
