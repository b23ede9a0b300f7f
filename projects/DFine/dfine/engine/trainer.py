"""One trainer for the whole family: AMP on CUDA, grad-norm clipping, EMA, resumable data stream."""
import logging
import time
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.engine import TrainerBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .ema import ModelEMA

__all__ = ["DetrTrainer", "unwrap_model"]

logger = logging.getLogger(__name__)


class DetrTrainer(TrainerBase):
    """Runs ``loss = sum(model(batch).values())``, backward, clip, step, EMA update.

    Differences from detectron2's ``SimpleTrainer`` that the DETR recipes need:

    - the data iterator is created at the first step, after ``--resume`` has set ``self.iter``,
      and the loader's sampler is told where to start, so a resumed run sees exactly the samples
      (and epochs) that an uninterrupted run would;
    - AMP (autocast + GradScaler for fp16) runs on CUDA only; on CPU it is off;
    - the gradient norm is clipped (``max_norm`` 0.1 in the official configs; 0 disables);
    - the EMA of the weights is updated after every optimizer step.
    """

    def __init__(self, *, model, data_loader, optimizer, amp: bool = False, amp_dtype: str = "float16",
                 clip_grad_max_norm: float = 0.0, ema: Optional[ModelEMA] = None):
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.ema = ema
        self.clip_grad_max_norm = clip_grad_max_norm
        device = next(model.parameters()).device
        self.amp = amp and device.type == "cuda"
        if amp and not self.amp:
            logger.info("AMP requested but the model is on %s; training in float32.", device)
        self.amp_dtype = getattr(torch, amp_dtype)
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self._data_iter = None

    def _next_batch(self):
        if self._data_iter is None:
            sampler = getattr(self.data_loader, "sampler", None)
            if hasattr(sampler, "set_start_iter"):
                sampler.set_start_iter(self.iter)
            self._data_iter = iter(self.data_loader)
        return next(self._data_iter)

    def run_step(self):
        assert self.model.training, "DetrTrainer: the model was switched to eval mode"
        start = time.perf_counter()
        data = self._next_batch()
        data_time = time.perf_counter() - start

        with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses).backward()
        if self.clip_grad_max_norm > 0:
            self.grad_scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_max_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model))
        self._write_metrics(loss_dict, data_time)

    def _write_metrics(self, loss_dict: Dict[str, torch.Tensor], data_time: float):
        metrics = {k: v.detach().float() for k, v in loss_dict.items()}
        # One host transfer for all terms (detectron2 logs every iteration, as here).
        values = torch.stack(list(metrics.values())).cpu().tolist() if metrics else []
        metrics = dict(zip(metrics, values))
        metrics["data_time"] = data_time
        gathered = comm.gather(metrics)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("data_time", float(np.max([m.pop("data_time") for m in gathered])))
        averaged = {k: float(np.mean([m[k] for m in gathered])) for k in gathered[0]}
        total = sum(averaged.values())
        if not np.isfinite(total):
            raise FloatingPointError(f"Loss became infinite or NaN at iteration={self.iter}!\nloss_dict = {averaged}")
        storage.put_scalar("total_loss", total)
        if len(averaged) > 1:
            storage.put_scalars(**averaged)

    def state_dict(self):
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def unwrap_model(model):
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
