"""The training loop of the real-time DETR family: detectron2's SimpleTrainer with AMP, gradient
clipping and a data stream that resumes where it stopped."""
import json
import logging
import os
import time
from typing import Dict, List, Optional, Union

import torch
from detectron2.engine import SimpleTrainer

__all__ = ["Trainer", "resolve_device"]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """``"auto"`` is "cuda" when CUDA is available, else "cpu"; other names are kept."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Trainer(SimpleTrainer):
    """One step: ``loss = sum(model(batch).values())``, backward, optional clipping, optimizer step.

    What it adds to detectron2's ``SimpleTrainer`` (official ``train_one_epoch``: DEIM and DEIMv2
    ``engine/solver/det_engine.py``, D-FINE and RT-DETRv2 ``src/solver/det_engine.py``):

    - AMP: the forward runs under ``torch.amp.autocast("cuda", dtype=amp_dtype)``, with a
      ``GradScaler`` for float16 (not needed for bfloat16). AMP needs the model on CUDA; on CPU it
      is off and training runs in float32.
    - Gradient-norm clipping to ``clip_grad_max_norm`` over all parameters, after unscaling (0.1
      in all official configs; 0 disables).
    - The data iterator is created at the first step, i.e. after ``resume_or_load`` and
      ``train(start_iter, ...)`` have set ``self.iter``. If the loader's sampler has
      ``set_start_iter`` (``dfine.data.EpochAwareSampler``), it is called with that iteration
      first, so a resumed run draws exactly the samples (and epochs) an uninterrupted run would.
      A loader with a ``seed`` (``dfine.data.loader.TrainLoader``) has it saved in the state as
      ``data_seed`` and set back with ``set_seed`` on resume: a seed drawn at random would
      otherwise change the permutation and the augmentations in the middle of an epoch.

    The model is a detectron2 meta-architecture: it takes the batch (a list of dicts) and, in
    training, returns a dict of already-weighted scalar losses; every entry is summed. Metrics go
    through detectron2's ``_write_metrics`` (the only host synchronisation of the step besides
    what the model and, for float16, the GradScaler need). Construct it with keyword arguments.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        amp_enabled: bool = False,
        amp_dtype: Union[str, torch.dtype] = "float16",
        clip_grad_max_norm: float = 0.0,
        dump_dir: Optional[str] = None,
    ):
        """
        Args:
            model: the meta-architecture, possibly wrapped in DistributedDataParallel.
            data_loader: an iterable of batches; see the class docstring for ``sampler``.
            optimizer: a torch optimizer over the model's parameters.
            amp_enabled: use autocast (CUDA only; ignored with a log message on CPU).
            amp_dtype: "float16" (as the official ``--use-amp``) or "bfloat16".
            clip_grad_max_norm: max total L2 norm of the gradients; 0 disables clipping.
            dump_dir: where a non-finite loss leaves its diagnostic dump (see ``run_step``);
                None: the current directory.
        """
        # detectron2 0.6's SimpleTrainer calls iter(data_loader) in its constructor, which would
        # start the loader's workers and sampler before a resumed start iteration is known. It
        # gets an empty stand-in; the real iterator is made lazily by `_data_loader_iter`.
        super().__init__(model=model, data_loader=(), optimizer=optimizer)
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.dump_dir = dump_dir or "."

        if isinstance(amp_dtype, str):
            if amp_dtype not in _AMP_DTYPES:
                raise ValueError(f"amp_dtype must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}")
            amp_dtype = _AMP_DTYPES[amp_dtype]
        device = next(model.parameters()).device
        self.amp_enabled = bool(amp_enabled) and device.type == "cuda"
        if amp_enabled and not self.amp_enabled:
            logger.info("AMP is enabled in the config but the model is on %s: training in float32.", device)
        self.amp_dtype = amp_dtype
        # A disabled scaler passes losses and steps through unchanged, so there is one code path.
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp_enabled and amp_dtype == torch.float16)
        self.clip_grad_max_norm = float(clip_grad_max_norm)
        self.skipped_steps = 0  # float16 overflows, see `_scaled_step`

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            sampler = getattr(self.data_loader, "sampler", None)
            if hasattr(sampler, "set_start_iter"):
                sampler.set_start_iter(self.iter)
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    @_data_loader_iter.setter
    def _data_loader_iter(self, value):
        # Assigned by detectron2 0.6's constructor (main makes it a read-only property).
        self._data_loader_iter_obj = value

    def run_step(self):
        assert self.model.training, "[Trainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.amp.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_enabled):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        if self.clip_grad_max_norm > 0:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_max_norm)

        # Before the optimizer step, so that a non-finite loss never reaches the weights. The
        # metrics below copy the losses to the host anyway; this is the same single copy.
        self._check_finite(loss_dict, data)
        self._write_metrics(loss_dict, data_time)
        self._write_augmentations(data)

        self._scaled_step()

    def _write_augmentations(self, data: List[Dict]) -> None:
        """``data/<name>``: what the batch's augmentations did, per image (``data/mosaic`` and
        ``data/mixup``: the share of Mosaic and MixUp images, ``data/copy_blend_objects``: objects
        pasted per image), from the ``"augmentations"`` counts the data pipeline puts in each sample."""
        totals: Dict[str, float] = {}
        for sample in data:
            for name, count in sample.get("augmentations", {}).items():
                totals[name] = totals.get(name, 0) + count
        if totals:
            self.storage.put_scalars(**{f"data/{name}": total / len(data) for name, total in totals.items()},
                                     smoothing_hint=False)

    def _scaled_step(self) -> None:
        """The optimizer step through the GradScaler. With float16 AMP the scaler skips the step
        when a gradient overflowed (inf or NaN after scaling) and halves the scale; the official
        loop does that silently, here every skipped step is logged and counted
        (``skipped_steps``). Reading the scale costs no extra wait: the scaler's own step has
        already copied its overflow flag to the host."""
        if not self.grad_scaler.is_enabled():
            self.optimizer.step()
            return
        scale = self.grad_scaler.get_scale()
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        new_scale = self.grad_scaler.get_scale()
        if new_scale < scale:
            self.skipped_steps += 1
            logger.warning(
                "Iteration %d: the float16 gradients overflowed at loss scale %g, so the optimizer step "
                "was skipped (weights unchanged) and the scale lowered to %g; %d step(s) skipped so far.",
                self.iter, scale, new_scale, self.skipped_steps)

    def _check_finite(self, loss_dict: Dict[str, torch.Tensor], data: List[Dict]) -> None:
        """Stop at a NaN or infinite loss: raise ``FloatingPointError`` naming the terms and the
        iteration, after writing ``nonfinite_loss_iter_<N>.json`` to ``dump_dir`` with every loss
        value and the batch's image ids and file names (to find the culprit sample)."""
        names = list(loss_dict)
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()]).cpu()
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        bad = [name for name, ok in zip(names, finite.tolist()) if not ok]
        dump = {
            "iteration": self.iter,
            "nonfinite_terms": bad,
            "losses": {name: float(value) if ok else str(float(value))
                       for name, value, ok in zip(names, values.tolist(), finite.tolist())},
            "images": [{"image_id": x.get("image_id"), "file_name": x.get("file_name")} for x in data],
        }
        os.makedirs(self.dump_dir, exist_ok=True)
        path = os.path.join(self.dump_dir, f"nonfinite_loss_iter_{self.iter}.json")
        with open(path, "w") as f:
            json.dump(dump, f, indent=1)
        terms = ", ".join(f"{name}={dump['losses'][name]}" for name in bad)
        raise FloatingPointError(
            f"Non-finite loss at iteration {self.iter}: {terms}. The step was not applied. "
            f"Batch image ids and every loss value: {path}")

    def state_dict(self):
        ret = super().state_dict()
        # Empty when the scaler is disabled; otherwise floats and ints only.
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["skipped_steps"] = self.skipped_steps
        data_seed = getattr(self.data_loader, "seed", None)
        if data_seed is not None:
            ret["data_seed"] = data_seed
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # A checkpoint of a run without float16 AMP has no scaler state: keep the fresh scaler.
        if self.grad_scaler.is_enabled() and state_dict.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        self.skipped_steps = state_dict.get("skipped_steps", 0)
        data_seed = state_dict.get("data_seed")
        if data_seed is not None and hasattr(self.data_loader, "set_seed"):
            if self.data_loader.seed != data_seed:
                logger.info("Data stream seed %d -> %d, the checkpoint's.", self.data_loader.seed, data_seed)
            self.data_loader.set_seed(data_seed)
