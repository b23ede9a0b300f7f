"""Optimizer parameter groups and learning-rate schedules (fvcore ParamSchedulers)."""
from .lr_scheduler import ConstantSchedule, FlatCosine, LinearWarmup, StepDecay
from .param_groups import param_groups

__all__ = ["ConstantSchedule", "FlatCosine", "LinearWarmup", "StepDecay", "param_groups"]
