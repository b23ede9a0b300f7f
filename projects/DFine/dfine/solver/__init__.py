"""Optimizer parameter groups and learning-rate schedules (fvcore ParamSchedulers)."""
from .lr_scheduler import ConstantSchedule, LinearWarmup
from .param_groups import param_groups

__all__ = ["ConstantSchedule", "LinearWarmup", "param_groups"]
