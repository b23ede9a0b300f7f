"""The training log: one readable line per period, every loss term in metrics.json and TensorBoard."""
import logging
import os
import statistics
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import torch
from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter, get_event_storage

__all__ = ["LossGroupPrinter", "training_writers"]


class LossGroupPrinter(CommonMetricPrinter):
    """Detectron2's terminal line with the ~20 loss terms of a DETR summed into their groups::

        eta: 0:01:02  iter: 39/60  total_loss: 41.2 (classification 6.1, boxes 9.8, denoising 25.3)
        time: 0.21  data_time: 0.01  lr: 0.0004       (one line)

    ``group_of(key)`` names the group of a loss key (``SetCriterion.loss_group``: classification,
    boxes, distribution, denoising); without it (a model with no criterion) every term is its own
    group. Each value is the median over the last ``window_size`` iterations of the per-iteration
    sum, as detectron2 smooths its losses. The terms themselves
    stay in ``metrics.json`` and TensorBoard (the other writers of :func:`training_writers`).
    """

    def __init__(self, max_iter: int, group_of: Optional[Callable[[str], str]] = None, window_size: int = 20):
        super().__init__(max_iter, window_size)
        self.logger = logging.getLogger(__name__)
        self._group_of = group_of or (lambda key: key)

    def group_medians(self, storage) -> Dict[str, float]:
        """``{"total_loss": .., group: ..}``: windowed medians of the per-iteration sums."""
        sums: Dict[str, Dict[int, float]] = defaultdict(lambda: defaultdict(float))
        for key, history in storage.histories().items():
            if not key.startswith("loss_"):
                continue
            for value, iteration in history.values()[-self._window_size:]:
                sums[self._group_of(key)][iteration] += value
        medians = {}
        if "total_loss" in storage.histories():
            medians["total_loss"] = storage.history("total_loss").median(self._window_size)
        for group in sorted(sums, key=lambda g: (_GROUP_ORDER.get(g, len(_GROUP_ORDER)), g)):
            medians[group] = statistics.median(sums[group].values())
        return medians

    def write(self):
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:  # after the last step: nothing new to report (as detectron2)
            return
        medians = self.group_medians(storage)
        total = medians.pop("total_loss", None)
        groups = ", ".join(f"{group} {value:.4g}" for group, value in medians.items())
        fields: List[str] = []
        eta = self._get_eta(storage)
        if eta:
            fields.append(f"eta: {eta}")
        fields.append(f"iter: {iteration}/{self._max_iter}")
        if total is not None:
            fields.append(f"total_loss: {total:.4g}" + (f" ({groups})" if groups else ""))
        for key, label, how in (("time", "time", "global_avg"), ("data_time", "data_time", "avg")):
            if key in storage.histories():
                history = storage.history(key)
                value = history.global_avg() if how == "global_avg" else history.avg(self._window_size)
                fields.append(f"{label}: {value:.4f}")
        if "lr" in storage.histories():
            fields.append(f"lr: {storage.history('lr').latest():.5g}")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            fields.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        self.logger.info("  ".join(fields))


_GROUP_ORDER = {"classification": 0, "boxes": 1, "distribution": 2, "denoising": 3}


def training_writers(
    output_dir: str, max_iter: int, group_of: Optional[Callable[[str], str]] = None
) -> List[EventWriter]:
    """Detectron2's default writers with :class:`LossGroupPrinter` for the terminal: every scalar,
    each loss term included, goes to ``output_dir/metrics.json`` and TensorBoard."""
    return [
        LossGroupPrinter(max_iter, group_of),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
