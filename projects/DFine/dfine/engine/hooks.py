"""Training hooks of the real-time DETR family."""
import logging
import math
import os
import random
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.utils import comm

from .ema import ModelEMA

__all__ = ["EMAHook", "RNGStateHook", "StageSwitchHook"]

logger = logging.getLogger(__name__)


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` of ``trainer.model`` after every optimizer step.

    Register it before the hooks that read the EMA weights (checkpointing, evaluation). Its state
    is not kept here: register the ``ModelEMA`` itself with the checkpointer,
    ``DetectionCheckpointer(..., ema=ema)``, which saves it as ``checkpoint["ema"] = {"module",
    "updates"}`` (the official layout) and restores it on ``--resume``.
    """

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def before_train(self):
        # A run that did not resume an EMA starts the average at the weights training starts
        # from, i.e. after init_checkpoint was loaded (officially the EMA is built after that).
        if self.ema.updates == 0:
            self.ema.reset(self.trainer.model)

    def after_step(self):
        self.ema.update(self.trainer.model)


class StageSwitchHook(HookBase):
    """The model-side stage switch of D-FINE / DEIM (official ``DetSolver.fit``: DEIM
    ``engine/solver/det_solver.py``, D-FINE ``src/solver/det_solver.py``), keyed on iterations.

    * Stage 1 (iterations before ``switch_iter``, the augmentation epochs): after each evaluation
      whose ``metric`` beats the stage's best so far, the full training state is saved as
      ``best_stage1_name`` (official ``best_stg1.pth``).
    * At ``switch_iter`` (the first iteration of the official ``stop_epoch``): the model, EMA,
      optimizer and gradient-scaler state of that checkpoint are loaded back, and the EMA decay
      becomes ``restart_decay``. The iteration, the LR schedule and the data stream go on.
    * Stage 2: an evaluation that does not beat the reference (the stage-1 best at first, then
      the previous evaluation after a reload) loads the stage-1 best again, as the official loop
      does; one that beats every earlier evaluation is saved as ``best_stage2_name``.

    Differences from the official loop, on purpose: the learning rate stays the scheduled one
    after a reload (officially the first iteration after it runs at the LR saved in the
    checkpoint), and the restart decay takes effect (officially the new ``ema.decay`` is never
    read, which only matters when it differs from the EMA decay: D-FINE-X's 0.9998).

    Evaluations come from detectron2's ``EvalHook`` with the same ``eval_period``: register this
    hook right after it, and before the periodic checkpointer so a checkpoint holds this hook's
    decision of the same iteration. The main process's result is shared with all ranks, so every
    rank reloads together. State (``state_dict``): Python floats and a bool.
    """

    def __init__(
        self,
        checkpointer: DetectionCheckpointer,
        switch_iter: int,
        eval_period: int,
        ema: Optional[ModelEMA] = None,
        restart_decay: float = 0.9999,
        metric: str = "bbox/AP",
        best_stage1_name: str = "model_best_stage1",
        best_stage2_name: str = "model_best_stage2",
    ):
        """
        Args:
            checkpointer: saves and loads the training state (it must hold the trainer, and the
                EMA as ``ema`` when there is one).
            switch_iter: the first iteration of stage 2.
            eval_period: the period of the ``EvalHook`` in iterations.
            ema: the EMA to restart, if training keeps one.
            restart_decay: EMA decay from the switch on (official ``ema_restart_decay``).
            metric: the evaluation result to select on, a key of the trainer's storage.
            best_stage1_name, best_stage2_name: checkpoint names in the output folder.
        """
        self.checkpointer = checkpointer
        self.switch_iter = int(switch_iter)
        self.eval_period = int(eval_period)
        self.ema = ema
        self.restart_decay = restart_decay
        self.metric = metric
        self.best_stage1_name = best_stage1_name
        self.best_stage2_name = best_stage2_name
        self.best_stage1 = -math.inf
        self.best_overall = -math.inf
        self.reference = -math.inf
        self.switched = False

    def before_step(self):
        if not self.switched and self.trainer.iter >= self.switch_iter:
            self.switched = True
            self.reference = self.best_stage1
            self._load_best_stage1("start of stage 2")
            if self.ema is not None:
                self.ema.decay = self.restart_decay
                logger.info("EMA decay is %s from iteration %d on.", self.restart_decay, self.trainer.iter)

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.eval_period <= 0 or next_iter % self.eval_period != 0 or next_iter == self.trainer.max_iter:
            return  # EvalHook did not evaluate at this iteration
        value = self._shared_metric()
        if value is None:
            return
        if self.trainer.iter < self.switch_iter:
            if value > self.best_stage1:
                self.best_stage1 = self.best_overall = value
                self.checkpointer.save(self.best_stage1_name)
            return
        if value > self.reference:
            self.reference = value
            if value > self.best_overall:
                self.best_overall = value
                self.checkpointer.save(self.best_stage2_name)
        else:
            self.reference = -math.inf
            self._load_best_stage1(f"{self.metric} {value:.4f} did not improve")

    def _shared_metric(self) -> Optional[float]:
        """This iteration's evaluation result of the main process, on every rank."""
        latest = self.trainer.storage.latest().get(self.metric)
        value = float(latest[0]) if latest is not None and latest[1] == self.trainer.iter else None
        return comm.all_gather(value)[0] if comm.get_world_size() > 1 else value

    def _load_best_stage1(self, reason: str) -> None:
        comm.synchronize()  # the main process may have just written it
        path = os.path.join(self.checkpointer.save_dir, self.best_stage1_name + ".pth")
        if not os.path.isfile(path):
            logger.warning("No %s to reload at iteration %d (%s): training goes on.", path, self.trainer.iter, reason)
            return
        optimizer = self.trainer.optimizer
        scheduled_lrs = [group["lr"] for group in optimizer.param_groups]
        remaining = self.checkpointer.load(path, checkpointables=["ema"] if self.ema is not None else [])
        trainer_state = remaining.get("trainer", {})
        optimizer.load_state_dict(trainer_state["optimizer"])
        for group, lr in zip(optimizer.param_groups, scheduled_lrs):
            group["lr"] = lr
        scaler = getattr(self.trainer, "grad_scaler", None)
        if scaler is not None and scaler.is_enabled() and trainer_state.get("grad_scaler"):
            scaler.load_state_dict(trainer_state["grad_scaler"])
        logger.info("Iteration %d (%s): reloaded %s.", self.trainer.iter, reason, path)

    def state_dict(self) -> Dict:
        return {"best_stage1": self.best_stage1, "best_overall": self.best_overall, "reference": self.reference,
                "switched": self.switched}

    def load_state_dict(self, state: Dict) -> None:
        self.best_stage1 = float(state["best_stage1"])
        self.best_overall = float(state["best_overall"])
        self.reference = float(state["reference"])
        self.switched = bool(state["switched"])


class RNGStateHook(HookBase):
    """Keeps the states of the trainer process's random number generators in the checkpoint, so
    that a resumed run draws what an uninterrupted one would: Python's ``random``, NumPy's global
    RNG, torch's CPU RNG and, when CUDA is used, every CUDA device's RNG. They drive the model's
    random parts (denoising queries, dropout) and, with ``num_workers=0``, nothing else: the data
    loader seeds the augmentations from the sample stream (``dfine.data.loader.stream_rngs``).

    It does nothing during training; ``state_dict`` reads the states when a checkpoint is written
    (after the step's evaluation, as the hooks before the checkpointer run first) and
    ``load_state_dict`` sets them on ``--resume``. The states are those of the main process, which
    writes the checkpoints; with several processes the others keep their own seeding on resume.
    State: tensors and Python scalars only (``torch.load(weights_only=True)`` reads it).
    """

    def state_dict(self) -> Dict:
        python_version, python_state, python_gauss = random.getstate()
        numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
        return {
            "python": {"version": python_version, "state": torch.tensor(python_state, dtype=torch.int64),
                       "gauss": python_gauss},
            "numpy": {"kind": numpy_kind, "keys": torch.from_numpy(numpy_keys.astype(np.int64)), "pos": int(numpy_pos),
                      "has_gauss": int(numpy_has_gauss), "gauss": float(numpy_gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

    def load_state_dict(self, state: Dict) -> None:
        if comm.get_rank() != 0:
            return
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
        numpy = state["numpy"]
        np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                             numpy["has_gauss"], numpy["gauss"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"]:
            if len(state["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["cuda"])
            else:
                logger.warning("The checkpoint has the RNG states of %d CUDA devices, this machine %d: not restored.",
                               len(state["cuda"]), torch.cuda.device_count())
