"""Learning-rate multipliers as fvcore ParamSchedulers of ``where = iteration / max_iter``.

Detectron2's ``LRMultiplier`` evaluates the scheduler at ``where = k / max_iter`` for iteration
``k`` (``where == 1.0`` after the last step, so a scheduler must accept it). The official recipes
count in iterations, so these schedulers take ``max_iter`` and work in iterations internally.
"""
from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["LinearWarmupConstant"]


class LinearWarmupConstant(ParamScheduler):
    """The RT-DETRv2 / D-FINE schedule: linear warm-up, then constant.

    Iteration ``k`` (0-based) uses ``min(1, (k + 1) / warmup_iters)``, exactly as the official
    ``LinearWarmup`` (its milestone-based decay is never reached by the official configs).
    """

    def __init__(self, warmup_iters: int, max_iter: int):
        self.warmup_iters = int(warmup_iters)
        self.max_iter = int(max_iter)

    def __call__(self, where: float) -> float:
        if self.warmup_iters <= 0:
            return 1.0
        iteration = round(where * self.max_iter)
        return min(1.0, (iteration + 1) / self.warmup_iters)
