from .presnet import PResNet  # noqa: F401
