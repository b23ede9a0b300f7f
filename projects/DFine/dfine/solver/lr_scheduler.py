"""Learning-rate multipliers as fvcore ParamSchedulers of ``where = iteration / max_iter``.

Detectron2's ``LRMultiplier`` (the ``hooks.LRScheduler`` hook) sets the LR of iteration ``k`` to
``base_lr * scheduler(k / max_iter)`` for every parameter group, and it is stepped once more after
the last iteration, so a scheduler is also asked for ``where == 1.0``. fvcore's
``ConstantParamScheduler`` raises there; the schedules here accept the closed interval [0, 1].

The official recipes count their warm-up in optimizer steps, so :class:`LinearWarmup` takes
``max_iter`` and converts ``where`` back to the iteration index. The schedule after the warm-up
is any inner ParamScheduler: :class:`ConstantSchedule` for RT-DETRv2 and D-FINE.
:class:`FlatCosine` is DEIM's schedule, which has its own (quadratic) warm-up.
"""
import math

from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["ConstantSchedule", "LinearWarmup", "FlatCosine", "StepDecay"]


def _check_where(where: float) -> None:
    if not 0.0 <= where <= 1.0:
        raise ValueError(f"where must be in [0, 1], got {where}")


class ConstantSchedule(ParamScheduler):
    """``value`` for every ``where`` in [0, 1], the end point included."""

    def __init__(self, value: float = 1.0):
        self.value = value

    def __call__(self, where: float) -> float:
        _check_where(where)
        return self.value


class LinearWarmup(ParamScheduler):
    """The official linear warm-up (``LinearWarmup`` of RT-DETRv2 / D-FINE) in front of ``scheduler``.

    Iteration ``k`` (0-based) of ``max_iter`` gets ``min(1, (k + 1) / warmup_iters) *
    scheduler(k / max_iter)``. With ``scheduler = ConstantSchedule(1.0)`` this is the official
    schedule exactly: the official warm-up steps once when it is built and then after every
    optimizer step, so iteration ``k`` runs at ``(k + 1) / warmup_iters`` of the base LR, and the
    official ``MultiStepLR`` milestones after it are never reached. ``warmup_iters = 0`` disables
    the warm-up (the official obj2coco configs).
    """

    def __init__(self, scheduler: ParamScheduler, warmup_iters: int, max_iter: int):
        """
        Args:
            scheduler: the schedule the warm-up factor multiplies, also during the warm-up.
            warmup_iters: warm-up length in iterations.
            max_iter: training length in iterations (``train.max_iter``), to recover ``k`` from ``where``.
        """
        if warmup_iters < 0 or max_iter <= 0:
            raise ValueError(f"Need warmup_iters >= 0 and max_iter > 0, got {warmup_iters} and {max_iter}")
        self.scheduler = scheduler
        self.warmup_iters = int(warmup_iters)
        self.max_iter = int(max_iter)

    def __call__(self, where: float) -> float:
        _check_where(where)
        value = self.scheduler(where)
        if self.warmup_iters == 0:
            return value
        # where = k / max_iter, so this rounding recovers k exactly.
        iteration = round(where * self.max_iter)
        return min(1.0, (iteration + 1) / self.warmup_iters) * value


class FlatCosine(ParamScheduler):
    """DEIM's flat-cosine schedule (official ``FlatCosineLRScheduler``), as a factor of the base LR.

    With ``T = max_iter``, ``W = warmup_iters`` and the flat and no-augmentation phases converted
    from epochs (``F = flat_epochs * iters_per_epoch``, ``N = no_aug_epochs * iters_per_epoch``),
    the official LR at step ``t`` is ``(t / W)**2`` for ``t <= W``, 1 up to ``F``, ``lr_gamma``
    from ``T - N`` on, and a half cosine from 1 down to ``lr_gamma`` in between. The phases are
    placed in iterations, so the schedule holds for a run given in epochs or in iterations
    (``train.max_iter=60`` on a DEIM config: the phases that do not fit are cut off, as they would
    be officially).

    The official loop steps the scheduler after each optimizer step, so iteration ``k >= 1``
    trains with the LR of step ``k - 1``; iteration 0 runs at ``initial_factor``, the value
    ``1 / warmup_duration`` that the official solver's ``LinearWarmup`` leaves behind before the
    flat-cosine schedule takes over (configs/common/deim.py names the official durations). Both
    are kept, so the LR of every iteration equals the official one.
    """

    def __init__(self, max_iter: int, iters_per_epoch: float, flat_epochs: float, no_aug_epochs: float,
                 initial_factor: float, warmup_iters: int = 2000, lr_gamma: float = 0.5):
        """
        Args:
            max_iter: training length in iterations (``train.max_iter``).
            iters_per_epoch: training images / total batch size (``train.iters_per_epoch``, which
                train_net.py sets from the data set).
            flat_epochs, no_aug_epochs: official ``flat_epoch`` and ``no_aug_epoch``.
            initial_factor: the LR factor of iteration 0 (see above).
            warmup_iters: official ``warmup_iter`` of the quadratic warm-up.
            lr_gamma: the final LR as a factor of the base LR.
        """
        missing = [name for name, value in (("train.iters_per_epoch", iters_per_epoch),
                                            ("lr_multiplier.flat_epochs", flat_epochs),
                                            ("lr_multiplier.no_aug_epochs", no_aug_epochs)) if value is None]
        if missing:
            raise ValueError(
                f"FlatCosine places its flat and no-augmentation phases in epochs; set {', '.join(missing)} "
                "(train_net.py sets train.iters_per_epoch from the training set)."
            )
        if max_iter <= 0 or iters_per_epoch <= 0:
            raise ValueError(f"Need max_iter > 0 and iters_per_epoch > 0, got {max_iter} and {iters_per_epoch}")
        self.max_iter = int(max_iter)
        self.warmup_iters = int(warmup_iters)
        self.flat_iters = flat_epochs * iters_per_epoch
        self.no_aug_iters = no_aug_epochs * iters_per_epoch
        self.lr_gamma = lr_gamma
        self.initial_factor = initial_factor

    def factor_at_step(self, t: float) -> float:
        """The official LR of step ``t`` divided by the base LR."""
        if t <= self.warmup_iters:
            return (t / self.warmup_iters) ** 2 if self.warmup_iters > 0 else 1.0
        if t <= self.flat_iters:
            return 1.0
        if t >= self.max_iter - self.no_aug_iters:
            return self.lr_gamma
        progress = (t - self.flat_iters) / (self.max_iter - self.flat_iters - self.no_aug_iters)
        return self.lr_gamma + (1 - self.lr_gamma) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, where: float) -> float:
        _check_where(where)
        iteration = round(where * self.max_iter)
        return self.initial_factor if iteration == 0 else self.factor_at_step(iteration - 1)


class StepDecay(ParamScheduler):
    """The learning-rate drops of DETR, DN-DETR and DINO (``StepLR(lr_drop)`` stepped once per epoch):
    the factor is ``gamma ** k`` in epoch ``e``, ``k`` the number of ``drop_epochs`` at or before ``e``,
    the epoch of iteration ``i`` being ``floor(i / iters_per_epoch)``.

    The official runs drop once (12 epochs: at 11; 24: at 20; 36: at 33; 50: at 40), where
    ``StepLR``, which would drop again every ``lr_drop`` epochs, equals one milestone.

    Args:
        max_iter: training iterations (``train.max_iter``).
        iters_per_epoch: training images / total batch size (``train.iters_per_epoch``, set by
            train_net.py from the data set).
        drop_epochs: the epochs from which the factor is multiplied by ``gamma``.
        gamma: the factor of each drop.
    """

    def __init__(self, max_iter: int, iters_per_epoch: float, drop_epochs, gamma: float = 0.1):
        if iters_per_epoch is None:
            raise ValueError("StepDecay needs train.iters_per_epoch (train_net.py sets it from the training set)")
        if max_iter <= 0 or iters_per_epoch <= 0:
            raise ValueError(f"Need max_iter > 0 and iters_per_epoch > 0, got {max_iter} and {iters_per_epoch}")
        self.max_iter = int(max_iter)
        self.iters_per_epoch = float(iters_per_epoch)
        self.drop_epochs = sorted(float(e) for e in drop_epochs)
        self.gamma = float(gamma)

    def __call__(self, where: float) -> float:
        _check_where(where)
        epoch = math.floor(round(where * self.max_iter) / self.iters_per_epoch)
        return self.gamma ** sum(epoch >= e for e in self.drop_epochs)
