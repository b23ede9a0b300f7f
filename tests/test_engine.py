"""Training engine: EMA, LR warm-up, parameter groups, the trainer, and train_net.py end to end.

Everything runs on small stand-ins defined here (a tiny "detector", an infinite batch
stream, a mean-score evaluator), not on the real model or data. Official reference values were
computed with the official functions (DEIM ``engine/optim/{ema,warmup,lr_scheduler}.py``,
``engine/core/yaml_config.py``).
"""
import copy
import importlib.util
import itertools
import json
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.solver import LRMultiplier
from detectron2.structures import Instances
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import OmegaConf
from torch import nn

from dfine.checkpoint import AtomicCheckpointer, CheckpointMismatchError, load_ema_or_model_weights
from dfine.config import ConfigError
from dfine.engine import EMAHook, ModelEMA, RNGStateHook, Trainer
from dfine.solver import ConstantSchedule, LinearWarmup, param_groups

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Stand-ins (also imported by the config file of the train_net tests, as `test_engine`).


def stream_sample(iteration: int, slot: int) -> dict:
    """Sample ``slot`` of the batch of global iteration ``iteration``: a pure function of both."""
    g = torch.Generator().manual_seed(1000 * iteration + slot)
    x = torch.randn(2, generator=g)
    return {"x": x, "y": x.sum() - 0.5, "iteration": iteration}


class RecordingSampler:
    """Has the ``set_start_iter`` of dfine.data's EpochAwareSampler and records its calls."""

    def __init__(self):
        self.start_iter = 0
        self.calls = []

    def set_start_iter(self, iteration):
        self.calls.append(iteration)
        self.start_iter = iteration


class StreamLoader:
    """Stand-in for dfine.data.build_train_loader: an infinite stream of batches (lists of
    dicts) in which batch ``k`` depends on ``k`` only, starting at ``sampler.start_iter``."""

    created = []

    def __init__(self, num_images: int = 10, total_batch_size: int = 4):
        self.dataset = range(num_images)
        self.batch_size = total_batch_size
        self.sampler = RecordingSampler()
        self.iter_calls = 0
        StreamLoader.created.append(self)

    def __iter__(self):
        self.iter_calls += 1
        for k in itertools.count(self.sampler.start_iter):
            yield [stream_sample(k, j) for j in range(self.batch_size)]


class TinyDetector(nn.Module):
    """Stand-in meta-architecture with the Detectron2 contract: a list of dicts in; training
    returns a dict of weighted losses, inference ``[{"instances": Instances(scores)}]``. The
    submodule names (backbone / encoder.norm / decoder) exercise the optimizer rules."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 4)
        self.encoder = nn.Module()
        self.encoder.norm = nn.BatchNorm1d(4)
        self.decoder = nn.Linear(4, 1)
        self.seen_iterations = []

    def forward(self, batched_inputs):
        x = torch.stack([d["x"] for d in batched_inputs]).to(self.decoder.weight.device)
        y = self.decoder(torch.relu(self.encoder.norm(self.backbone(x)))).squeeze(1)
        if not self.training:
            return [{"instances": Instances((1, 1), scores=s.reshape(1))} for s in y]
        self.seen_iterations.append(batched_inputs[0]["iteration"])
        target = torch.stack([d["y"] for d in batched_inputs]).to(y.device)
        self.autocast_dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        return {"loss_l2": ((y - target) ** 2).mean(), "loss_l1": 0.5 * (y - target).abs().mean()}


def eval_batches(num: int = 4):
    """A test loader: ``num`` batches of one sample."""
    return [[stream_sample(10_000 + i, 0)] for i in range(num)]


class MeanScoreEvaluator(DatasetEvaluator):
    """Reports the mean predicted score as ``bbox/AP``: a number that depends on the weights."""

    def reset(self):
        self.scores = []

    def process(self, inputs, outputs):
        self.scores.extend(o["instances"].scores for o in outputs)

    def evaluate(self):
        return {"bbox": {"AP": float(torch.cat(self.scores).mean())}}


def _tiny_trainer(loader=None, optimizer=None, **kwargs):
    torch.manual_seed(0)
    model = TinyDetector()
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model=model, data_loader=loader or StreamLoader(), optimizer=optimizer, **kwargs)


# --------------------------------------------------------------------------------------------
# EMA


def test_ema_decay_matches_official_reference_values():
    # The official ModelEMA (DEIM engine/optim/ema.py): d(u) = 0.9999 (1 - exp(-u / w)).
    ema = ModelEMA(nn.Linear(1, 1), decay=0.9999, warmups=1000)
    assert ema.decay_at(1) == pytest.approx(9.994e-4, abs=5e-8)
    assert ema.decay_at(1) == 0.9999 * (1 - math.exp(-1 / 1000))
    assert ema.decay_at(1000) == pytest.approx(0.632057, abs=5e-7)
    assert ema.decay_at(5000) == pytest.approx(0.993163, abs=5e-7)
    assert ModelEMA(nn.Linear(1, 1), warmups=2000).decay_at(2000) == pytest.approx(0.632057, abs=5e-7)
    # warmups = 0 (official obj2coco configs): constant decay.
    assert ModelEMA(nn.Linear(1, 1), decay=0.99, warmups=0).decay_at(1) == 0.99


def _official_ema_update(ema_state, model_state, d):
    """The official update, literally: every floating entry of the EMA's state dict in order,
    ``v *= d; v += (1 - d) * m``."""
    for key, v in ema_state.items():
        if v.dtype.is_floating_point:
            v *= d
            v += (1 - d) * model_state[key].detach()


def test_ema_updates_parameters_and_buffers_like_the_official_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEMA(model, decay=0.9, warmups=3)
    reference = ModelEMA(model, decay=0.9, warmups=3).module
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert ema.module[0].weight.device == model[0].weight.device

    for step in range(1, 4):
        model.train()(torch.randn(8, 3))  # moves the BN running statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        _official_ema_update(reference.state_dict(), model.state_dict(), ema.decay_at(step))

    assert ema.updates == 3
    for key, value in reference.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value), key
    # Buffers are averaged, not copied: the EMA running mean differs from the model's.
    assert not torch.allclose(ema.module[1].running_mean, model[1].running_mean)
    # Integer buffers keep the copy's value.
    assert ema.module[1].num_batches_tracked.item() == 0


def test_ema_averages_a_shared_tensor_once_per_name():
    # D-FINE stores the same Parameter as `decoder.up` and `decoder.decoder.up`; the official loop
    # over state_dict() averages it twice per update, one after the other.
    model = nn.Module()
    model.inner = nn.Module()
    model.up = nn.Parameter(torch.tensor([0.3, 0.7]))
    model.inner.up = model.up
    ema = ModelEMA(model, decay=0.5, warmups=0)
    reference = ModelEMA(model, decay=0.5, warmups=0).module
    with torch.no_grad():
        model.up.fill_(1.0)
    ema.update(model)
    _official_ema_update(reference.state_dict(), model.state_dict(), 0.5)
    assert torch.equal(ema.module.up, reference.up)
    assert torch.allclose(ema.module.up, torch.tensor([0.825, 0.925]))  # 0.25 v + 0.75 m


def test_ema_state_is_weights_only_loadable(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, warmups=10)
    ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pth")
    state = torch.load(tmp_path / "ema.pth", weights_only=True)
    assert set(state) == {"module", "updates"} and state["updates"] == 1
    other = ModelEMA(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    other.load_state_dict(state)
    assert other.updates == 1
    assert torch.equal(other.module[0].weight, ema.module[0].weight)


def test_ema_hook_starts_from_loaded_weights_and_updates_every_step():
    trainer = _tiny_trainer()
    ema = ModelEMA(trainer.model, decay=0.9, warmups=0)
    # Weights loaded after the EMA was built (init_checkpoint): the average must start there.
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(0.5)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.register_hooks([EMAHook(ema)])
    trainer.train(0, 1)
    assert ema.updates == 1
    weight = trainer.model.decoder.weight
    assert torch.allclose(ema.module.decoder.weight, 0.9 * start["decoder.weight"] + 0.1 * weight)
    trainer.train(1, 3)
    assert ema.updates == 3


def test_load_ema_or_model_weights(tmp_path):
    source = TinyDetector()
    ema = ModelEMA(source)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(1.0)
    DetectionCheckpointer(source, str(tmp_path), ema=ema).save("with_ema")
    DetectionCheckpointer(source, str(tmp_path)).save("without_ema")

    model = TinyDetector()
    assert load_ema_or_model_weights(model, str(tmp_path / "with_ema.pth")) == "ema"
    assert torch.equal(model.decoder.weight, ema.module.decoder.weight)
    assert load_ema_or_model_weights(model, str(tmp_path / "without_ema.pth")) == "model"
    assert torch.equal(model.decoder.weight, source.decoder.weight)

    # Another head: refused with the differences, nothing loaded (evaluating a partly random model
    # would be a silent change in results; fine-tuning goes through load_finetune_weights).
    other_head = TinyDetector()
    other_head.decoder = nn.Linear(4, 3)
    before = copy.deepcopy(other_head.state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"(?s)with_ema.pth does not fit the model.*decoder.weight"):
        load_ema_or_model_weights(other_head, str(tmp_path / "with_ema.pth"))
    assert all(torch.equal(v, before[k]) for k, v in other_head.state_dict().items())


# --------------------------------------------------------------------------------------------
# LR schedule


def _lr_curve(scheduler, base_lrs, max_iter):
    """The LR of every group at iterations 0..max_iter-1 under detectron2's LRMultiplier, which
    is stepped once more after the last iteration (``where == 1.0``)."""
    params = [nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=1.0)
    multiplier = LRMultiplier(optimizer, scheduler, max_iter)
    curve = []
    for _ in range(max_iter):
        curve.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        multiplier.step()
    return curve


def test_linear_warmup_matches_official_formula_exactly():
    # The official LinearWarmup (engine/optim/warmup.py): iteration k uses min(1, (k + 1) / N) of the base
    # LR (the official LinearWarmup computes `factor * base`). N = 7, 40 iterations.
    base_lrs = [1e-4, 1e-5]
    curve = _lr_curve(LinearWarmup(ConstantSchedule(1.0), warmup_iters=7, max_iter=40), base_lrs, 40)
    for k, lrs in enumerate(curve):
        assert lrs == [min(1.0, (k + 1) / 7) * base for base in base_lrs], k
    assert curve[0] == [1e-4 * (1 / 7), 1e-5 * (1 / 7)] and curve[6] == base_lrs and curve[-1] == base_lrs


def test_schedules_accept_the_end_point_and_reject_outside():
    # The last LRMultiplier.step() asks for where == 1.0 (fvcore's ConstantParamScheduler raises).
    warmup = LinearWarmup(ConstantSchedule(1.0), warmup_iters=3, max_iter=10)
    assert warmup(1.0) == 1.0 and ConstantSchedule(2.0)(1.0) == 2.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        warmup(1.1)
    # No warm-up: the inner schedule alone (official obj2coco configs, warmup_duration 0).
    assert LinearWarmup(ConstantSchedule(0.5), warmup_iters=0, max_iter=10)(0.0) == 0.5


def test_linear_warmup_multiplies_any_inner_schedule():
    cosine = CosineParamScheduler(1.0, 0.0)
    warmup = LinearWarmup(cosine, warmup_iters=4, max_iter=20)
    assert warmup(1 / 20) == 0.5 * cosine(1 / 20)
    assert warmup(10 / 20) == cosine(10 / 20)


def test_rtdetrv2_schedule_config_reads_max_iter_at_instantiation():
    cfg = LazyConfig.load(str(REPO / "configs/common/optim.py"))
    cfg.train = LazyConfig.load(str(REPO / "configs/common/train.py")).train
    cfg.train.max_iter = 5000  # as train_net.py sets it from train.epochs
    schedule = instantiate(cfg.rtdetrv2_lr_multiplier)
    assert isinstance(schedule, LinearWarmup) and schedule.max_iter == 5000 and schedule.warmup_iters == 2000
    assert schedule(0.0) == 1 / 2000 and schedule(1999 / 5000) == 1.0 and schedule(1.0) == 1.0


# --------------------------------------------------------------------------------------------
# Parameter groups


PARAM_NAMES = [
    "backbone.conv.weight",
    "backbone.norm.weight",  # PResNet names its BatchNorms `norm`
    "backbone.stage.bn.weight",  # HGNetv2 names them `bn`
    "backbone.frozen.weight",
    "encoder.layer.weight",
    "encoder.norm1.weight",
    "decoder.linear.bias",
    "decoder.norm.weight",
    "head.weight",
]


def _named_params_model(frozen=("backbone.frozen.weight",)):
    """A module tree whose ``named_parameters()`` are ``PARAM_NAMES``, in that order."""
    root = nn.Module()
    for name in PARAM_NAMES:
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(torch.zeros(1), requires_grad=name not in frozen))
    return root


def _membership(groups, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in groups]


def test_param_groups_rtdetrv2_default_rules():
    # configs/rtdetrv2/include/optimizer.yml (official YAMLConfig.get_optim_params).
    model = _named_params_model()
    groups = param_groups(model, {
        "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
        "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
    })
    assert _membership(groups, model) == [
        ["backbone.conv.weight", "backbone.stage.bn.weight"],
        ["encoder.norm1.weight", "decoder.norm.weight"],
        ["backbone.norm.weight", "encoder.layer.weight", "decoder.linear.bias", "head.weight"],
    ]
    assert [{k: v for k, v in g.items() if k not in ("params", "name")} for g in groups] == [
        {"lr": 1e-5}, {"weight_decay": 0.0}, {}]
    assert [g["name"] for g in groups] == ["backbone", "no_decay", "default"]


def test_param_groups_keep_the_official_regex_quirk():
    # rtdetrv2_r34vd_120e_coco.yml: `(?!.*norm|bn)` only excludes names containing "norm" (or
    # starting with "bn"), so HGNetv2-style `bn` weights stay in the backbone group with weight
    # decay, and `(?=.*norm|bn)` does not catch them either (official YAMLConfig.get_optim_params).
    model = _named_params_model()
    groups = param_groups(model, {
        "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 5e-5},
        "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 5e-5, "weight_decay": 0.0},
        "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
    })
    assert _membership(groups, model) == [
        ["backbone.conv.weight", "backbone.stage.bn.weight"],
        ["backbone.norm.weight"],
        ["encoder.norm1.weight", "decoder.linear.bias", "decoder.norm.weight"],
        ["encoder.layer.weight", "head.weight"],
    ]
    # A rule matching nothing keeps its (empty) group, as officially (D-FINE S/M/N group 1).
    empty = param_groups(model, {"running": {"pattern": r"^(?=.*backbone)(?=.*running).*$"}})
    assert _membership(empty, model)[0] == [] and len(empty) == 2


def test_param_groups_errors():
    model = _named_params_model()
    with pytest.raises(ValueError, match=r"backbone\.conv\.weight.*'backbone'.*'conv'"):
        param_groups(model, {"backbone": {"pattern": "backbone"}, "conv": {"pattern": "conv"}})
    with pytest.raises(ValueError, match="weight_decays"):
        param_groups(model, {"head": {"pattern": "head", "weight_decays": 0.0}})
    with pytest.raises(ValueError, match="name the rule"):
        param_groups(model, [{"pattern": "head"}])  # by position


def test_adamw_config_builds_official_groups():
    cfg = LazyConfig.load(str(REPO / "configs/common/optim.py"))
    model = TinyDetector()
    cfg.AdamW.params.model = model
    optimizer = instantiate(cfg.AdamW)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [
        (1e-5, 1e-4, 2),  # backbone.weight, backbone.bias
        (1e-4, 0.0, 2),  # encoder.norm.weight, encoder.norm.bias
        (1e-4, 1e-4, 2),  # decoder.weight, decoder.bias
    ]


# --------------------------------------------------------------------------------------------
# Trainer


def test_trainer_creates_its_data_iterator_lazily_at_the_start_iteration():
    loader = StreamLoader()
    trainer = _tiny_trainer(loader)
    # detectron2 0.6 would have called iter() in the constructor, before any resume.
    assert loader.iter_calls == 0
    trainer.train(5, 8)
    assert loader.sampler.calls == [5] and loader.iter_calls == 1
    assert trainer.model.seen_iterations == [5, 6, 7]


def test_trainer_sums_every_loss_and_logs_it():
    trainer = _tiny_trainer()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train(0, 1)
    # Reference: one SGD step on loss_l2 + loss_l1 of the same batch, from the same weights.
    reference = TinyDetector()
    reference.load_state_dict(before)
    losses = reference([stream_sample(0, j) for j in range(4)])
    sum(losses.values()).backward()
    for name, p in reference.named_parameters():
        assert torch.allclose(trainer.model.state_dict()[name], p - 0.1 * p.grad, atol=1e-7), name
    total = trainer.storage.history("total_loss").latest()
    assert total == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-6)


def test_trainer_clips_the_gradient_norm():
    trainer = _tiny_trainer(clip_grad_max_norm=0.1)
    trainer.train(0, 1)
    grads = [p.grad for p in trainer.model.parameters()]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() == pytest.approx(0.1, rel=1e-4)
    unclipped = _tiny_trainer(clip_grad_max_norm=0.0)
    unclipped.train(0, 1)
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in unclipped.model.parameters()])).item() > 1.0


def test_trainer_amp_is_disabled_on_cpu():
    amp = _tiny_trainer(amp_enabled=True, amp_dtype="bfloat16")
    assert not amp.amp_enabled and not amp.grad_scaler.is_enabled()
    amp.train(0, 2)
    fp32 = _tiny_trainer(amp_enabled=False)
    fp32.train(0, 2)
    for (name, a), b in zip(amp.model.state_dict().items(), fp32.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="amp_dtype"):
        _tiny_trainer(amp_dtype="float64")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on CUDA only")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_trainer_amp_on_cuda(dtype):
    torch.manual_seed(0)
    model = TinyDetector().to(torch.device("cuda"))
    trainer = Trainer(model=model, data_loader=StreamLoader(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      amp_enabled=True, amp_dtype=dtype, clip_grad_max_norm=0.1)
    trainer.train(0, 2)
    assert trainer.amp_enabled and model.autocast_dtype == getattr(torch, dtype)
    # The GradScaler is only needed (and used) for float16.
    assert trainer.grad_scaler.is_enabled() == (dtype == "float16")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_trainer_skips_and_reports_a_float16_overflow_step(caplog):
    """With float16 AMP an overflowing gradient makes the GradScaler skip the step (the official
    loop does the same, silently). A CPU GradScaler stands in for the CUDA one, and a gradient
    hook makes the decoder's gradient overflow at the second iteration only."""
    trainer = _tiny_trainer()
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    weight = trainer.model.decoder.weight
    snapshots = []
    weight.register_hook(lambda g: g * 1e38 if len(snapshots) == 2 else g)

    class Snapshot(hooks.HookBase):
        def before_step(self):
            snapshots.append({k: v.clone() for k, v in self.trainer.model.state_dict().items()})

    trainer.register_hooks([Snapshot()])
    with caplog.at_level(logging.WARNING, logger="dfine.engine.trainer"):
        trainer.train(0, 3)
    assert trainer.skipped_steps == 1
    assert trainer.grad_scaler.get_scale() == 512.0
    # Iteration 1 changed nothing; iterations 0 and 2 did update the weights.
    assert all(torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[1] if "running" not in k
               and "num_batches" not in k)
    assert not torch.equal(snapshots[0]["decoder.weight"], snapshots[1]["decoder.weight"])
    assert not torch.equal(snapshots[2]["decoder.weight"], trainer.model.decoder.weight)
    messages = [r.getMessage() for r in caplog.records if "overflowed" in r.getMessage()]
    assert len(messages) == 1 and "Iteration 1" in messages[0] and "skipped" in messages[0]
    assert "1024" in messages[0] and "512" in messages[0]


def test_trainer_state_round_trips_through_detection_checkpointer(tmp_path):
    trainer = _tiny_trainer(optimizer=None)
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-3)
    # A CPU GradScaler stands in for the CUDA float16 one (AMP is off on CPU).
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    ema = ModelEMA(trainer.model, warmups=5)
    trainer.register_hooks([EMAHook(ema), hooks.LRScheduler(scheduler=ConstantSchedule(1.0))])
    trainer.train(0, 3)
    DetectionCheckpointer(trainer.model, str(tmp_path), trainer=trainer, ema=ema).save("ckpt")
    # Only tensors and primitives: loadable with the safe unpickler (torch >= 2.6 default).
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert saved["ema"]["updates"] == 3 and saved["trainer"]["iteration"] == 3

    restored = _tiny_trainer()
    restored.optimizer = torch.optim.AdamW(restored.model.parameters(), lr=1e-3)
    restored.grad_scaler = torch.amp.GradScaler("cpu")
    restored_ema = ModelEMA(restored.model, warmups=5)
    restored.register_hooks([EMAHook(restored_ema), hooks.LRScheduler(scheduler=ConstantSchedule(1.0))])
    DetectionCheckpointer(restored.model, str(tmp_path), trainer=restored, ema=restored_ema).resume_or_load(
        str(tmp_path / "ckpt.pth"), resume=True
    )
    assert restored.iter == 3
    assert restored.grad_scaler.state_dict() == trainer.grad_scaler.state_dict()
    assert restored.grad_scaler.get_scale() != 65536.0  # the default, i.e. not restored
    assert restored_ema.updates == 3
    for key, value in ema.module.state_dict().items():
        assert torch.equal(restored_ema.module.state_dict()[key], value), key
    assert restored.optimizer.state_dict()["state"][0]["step"] == trainer.optimizer.state_dict()["state"][0]["step"]

    # A checkpoint without scaler state (float32 run) leaves an enabled scaler as it is.
    restored.load_state_dict({**saved["trainer"], "grad_scaler": {}})
    assert restored.grad_scaler.get_scale() == trainer.grad_scaler.get_scale()


def _draw_all():
    return (random.random(), random.gauss(0, 1), float(np.random.random()), float(np.random.normal()),
            torch.rand(3).tolist())


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    """RNGStateHook: the checkpoint holds Python's, NumPy's and torch's RNG states (with a cached
    Gaussian half-pair each), loadable with weights_only=True, and a resume restores them."""
    trainer = _tiny_trainer()
    trainer.register_hooks([RNGStateHook()])
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves the second value of a pair cached, in both
    np.random.normal()
    AtomicCheckpointer(trainer.model, str(tmp_path), trainer=trainer).save("ckpt")
    expected = _draw_all()

    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert set(saved["trainer"]["hooks"]["RNGStateHook"]) == {"python", "numpy", "torch", "cuda"}
    random.seed(7)
    np.random.seed(7)
    restored = _tiny_trainer()
    restored.register_hooks([RNGStateHook()])
    AtomicCheckpointer(restored.model, str(tmp_path), trainer=restored).resume_or_load("", resume=True)
    assert _draw_all() == expected


# --------------------------------------------------------------------------------------------
# train_net.py


@pytest.fixture(scope="module")
def train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIG = """
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from omegaconf import OmegaConf

from test_engine import MeanScoreEvaluator, StreamLoader, TinyDetector, eval_batches

train = LazyConfig.load("{common}/train.py").train
_optim = LazyConfig.load("{common}/optim.py")
optimizer = _optim.AdamW
lr_multiplier = _optim.rtdetrv2_lr_multiplier
model = L(TinyDetector)()
dataloader = OmegaConf.create()
dataloader.train = L(StreamLoader)(num_images=10, total_batch_size=4)
dataloader.test = L(eval_batches)(num=4)
dataloader.evaluator = L(MeanScoreEvaluator)()

optimizer.lr = 0.05
lr_multiplier.warmup_iters = 2
train.epochs = 2.4  # 10 images / batch 4 = 2.5 iterations per epoch: 6 iterations
train.eval_period = 0
train.log_period = 1
train.ema.warmups = 2
train.seed = 0
"""


def _run(train_net, config, output_dir, *extra):
    args = default_argument_parser().parse_args(
        ["--config-file", str(config), *extra, f"train.output_dir={output_dir}"]
    )
    return train_net.main(args)


def test_convert_epochs(train_net):
    def cfg(**train):
        lengths = {"max_iter": 1, "eval_period": 1, "checkpointer": {"period": 7}}
        return OmegaConf.create({"train": {**lengths, **train}, "dataloader": {"train": {"total_batch_size": 3}}})

    converted = cfg(epochs=3, eval_epochs=0.5, checkpoint_epochs=None)
    train_net.convert_epochs(converted, num_images=10)
    # 3 epochs x 10/3 iterations = 10 exactly (not 11); 0.5 epoch = 1.67 -> 2; no checkpoint_epochs.
    assert (converted.train.max_iter, converted.train.eval_period, converted.train.checkpointer.period) == (10, 2, 7)
    # Without train.epochs the run is set in iterations: the periods in epochs are ignored.
    iterations = cfg(epochs=None, eval_epochs=0.5, checkpoint_epochs=1)
    train_net.convert_epochs(iterations, num_images=10)
    assert (iterations.train.max_iter, iterations.train.eval_period, iterations.train.checkpointer.period) == (1, 1, 7)
    assert converted.train.iters_per_epoch == iterations.train.iters_per_epoch == pytest.approx(10 / 3, rel=1e-15)
    with pytest.raises(ValueError, match="null"):
        train_net.convert_epochs(cfg(epochs="None"), num_images=10)
    # A length in iterations on the command line wins over the config's length in epochs; the
    # lengths the command line does not give are still converted.
    overridden = cfg(epochs=3, eval_epochs=0.5, max_iter=60)
    train_net.convert_epochs(overridden, num_images=10, command_line={"train.max_iter"})
    assert (overridden.train.max_iter, overridden.train.eval_period) == (60, 2)
    # One length both ways on the command line is ambiguous: refused, naming the pair.
    with pytest.raises(ConfigError, match=r"\(train.epochs, train.max_iter\)"):
        train_net.convert_epochs(cfg(epochs=3), num_images=10, command_line={"train.epochs", "train.max_iter"})
    assert train_net.command_line_keys(["train.max_iter=60", "+model.x=1", "train.epochs=null", "--resume"]) == {
        "train.max_iter", "model.x", "train.epochs"}


def test_train_net_resume_continues_exactly_and_eval_only_uses_ema(train_net, tmp_path):
    config = tmp_path / "tiny_config.py"
    config.write_text(CONFIG.format(common=REPO / "configs" / "common"))
    full, split = tmp_path / "full", tmp_path / "split"

    _run(train_net, config, full)
    StreamLoader.created.clear()
    _run(train_net, config, split, "train.epochs=1.2")  # stops after 3 of the 6 iterations
    _run(train_net, config, split, "--resume")
    assert StreamLoader.created[-1].sampler.calls == [3]

    a = torch.load(full / "model_final.pth", weights_only=True)
    b = torch.load(split / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 5 and a["ema"]["updates"] == b["ema"]["updates"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    assert a["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6

    # Evaluation during training used the EMA weights; --eval-only does too.
    with open(full / "metrics.json") as f:
        logged_ap = [json.loads(line)["bbox/AP"] for line in f if "bbox/AP" in line]
    results = _run(
        train_net, config, tmp_path / "eval", "--eval-only", f"train.init_checkpoint={full / 'model_final.pth'}"
    )
    assert results["bbox"]["AP"] == pytest.approx(logged_ap[-1], rel=1e-6)
    # A checkpoint with plain weights only is evaluated as it is: other numbers.
    torch.save({"model": a["model"]}, tmp_path / "plain.pth")
    plain = _run(train_net, config, tmp_path / "eval", "--eval-only", f"train.init_checkpoint={tmp_path / 'plain.pth'}")
    assert plain["bbox"]["AP"] != pytest.approx(results["bbox"]["AP"], rel=1e-3)
    assert os.path.isfile(full / "config.yaml")


# ---------------------------------------------------------------- DEIM flat-cosine schedule


def test_flat_cosine_matches_official_values():
    """Computed with the official ``flat_cosine_schedule``
    (DEIM engine/optim/lr_scheduler.py): T=58000, W=2000, F=29000, N=8000, base 5e-4, gamma 0.5 ->
    lr(1000)=1.25e-4, lr(2000)=5e-4, lr(40000)=3.65659e-4, lr(>=50000)=2.5e-4."""
    from dfine.solver import FlatCosine

    # 58 epochs of 1000 iterations: flat until epoch 29, no augmentation for the last 8.
    schedule = FlatCosine(max_iter=58000, iters_per_epoch=1000, flat_epochs=29, no_aug_epochs=8, initial_factor=1 / 500,
                          warmup_iters=2000, lr_gamma=0.5)
    base = 5e-4
    for step, lr in [(1000, 1.25e-4), (2000, 5e-4), (29000, 5e-4), (40000, 3.65659e-4), (50000, 2.5e-4),
                     (57999, 2.5e-4)]:
        assert base * schedule.factor_at_step(step) == pytest.approx(lr, rel=1e-5), step
        # Iteration k trains with the LR of step k - 1, as the official loop steps after each update.
        assert base * schedule((step + 1) / 58000) == pytest.approx(lr, rel=1e-5), step
    assert schedule(0.0) == 1 / 500  # what the official solver's LinearWarmup(500) leaves for iteration 0
    assert schedule(1 / 58000) == 0.0
    # Continuous at the phase borders and monotone over the cosine.
    values = [schedule.factor_at_step(t) for t in range(29000, 50001, 500)]
    assert all(a >= b for a, b in zip(values, values[1:])) and values[0] == 1.0 and values[-1] == 0.5


def test_flat_cosine_runs_to_the_last_iteration():
    from detectron2.solver import LRMultiplier

    from dfine.solver import FlatCosine

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = FlatCosine(max_iter=30, iters_per_epoch=10, flat_epochs=1, no_aug_epochs=1, initial_factor=1 / 500,
                          warmup_iters=5, lr_gamma=0.1)
    multiplier = LRMultiplier(optimizer, schedule, max_iter=30)
    lrs = []
    for _ in range(30):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        multiplier.step()  # also evaluated at where == 1.0 after the last step
    assert lrs[0] == pytest.approx(1 / 500) and lrs[-1] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)


def test_flat_cosine_names_what_it_misses():
    from dfine.solver import FlatCosine

    with pytest.raises(ValueError, match="set train.iters_per_epoch, lr_multiplier.no_aug_epochs"):
        FlatCosine(max_iter=100, iters_per_epoch=None, flat_epochs=4, no_aug_epochs=None, initial_factor=0.1)


def test_nonfinite_loss_stops_with_the_term_the_iteration_and_a_dump(tmp_path):
    """A NaN in one loss term: FloatingPointError naming it and the iteration, the weights
    untouched, and a JSON dump with every loss value and the batch's image ids."""
    import json


    class NaNAtSecondStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.calls = 0

        def forward(self, batch):
            self.calls += 1
            bad = torch.tensor(float("nan")) if self.calls == 2 else torch.zeros(())
            return {"loss_vfl": self.weight.sum() * 2, "loss_giou": self.weight.sum() * bad}

    model = NaNAtSecondStep()
    batches = [[{"image_id": 7, "file_name": "a.jpg"}, {"image_id": 9, "file_name": "b.jpg"}]] * 3
    trainer = Trainer(model=model, data_loader=batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      dump_dir=str(tmp_path))
    with pytest.raises(
        FloatingPointError, match=r"Non-finite loss at iteration 1: loss_giou=nan\. The step was not applied"
    ):
        trainer.train(0, 3)
    assert torch.equal(model.weight.detach(), torch.tensor([0.8]))  # only the first step was applied
    dump = json.loads((tmp_path / "nonfinite_loss_iter_1.json").read_text())
    assert dump["nonfinite_terms"] == ["loss_giou"] and dump["losses"]["loss_vfl"] == pytest.approx(1.6)
    assert [x["image_id"] for x in dump["images"]] == [7, 9]
