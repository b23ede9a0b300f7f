from .lr_scheduler import LinearWarmupConstant  # noqa: F401
from .param_groups import param_groups  # noqa: F401
