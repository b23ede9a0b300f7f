"""Refactors change no model: every config builds the same model, and one config per family computes
the same outputs, losses and gradients as before.

Golden values: tests/golden/refactor_golden.{json,npz}, made by our own code (the commit in the JSON's
``made_by``, before the decoder and criterion became composed parts) with
``tools/golden/make_refactor_golden.py``, in float64. This test rebuilds everything with the same
functions of that script.

Tolerances: counts, state-dict layouts (keys, shapes, dtypes), optimizer groups and the resolved
training recipes must be equal.
Outputs, losses and gradient norms are float64 on weights and inputs that are exactly representable;
a refactor may reorder a sum or fuse two steps, which moves float64 results by about 1e-15 relative per
operation, so 1e-9 relative leaves ample room for reordering while any real change (a lost detach, a
different normaliser, another noise draw) moves them by far more. Labels must be equal.
"""
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "golden"))

import make_refactor_golden as refactor  # noqa: E402

RTOL = 1e-9


@lru_cache(maxsize=None)
def _golden():
    return json.loads((ROOT / "tests" / "golden" / "refactor_golden.json").read_text())


@lru_cache(maxsize=None)
def _arrays():
    with np.load(ROOT / "tests" / "golden" / "refactor_golden.npz") as npz:
        return {k: npz[k] for k in npz.files}


def test_every_config_of_the_golden_still_exists():
    """Configs added after the golden are new; none of those it covers may disappear."""
    assert set(_golden()["configs"]) <= set(refactor.config_files())


@pytest.mark.parametrize("config", sorted(_golden()["configs"]))
def test_config_builds_the_same_model_and_parameter_groups(config):
    assert refactor.config_entry(config) == _golden()["configs"][config]


def _assert_close_dict(ours, golden, what):
    assert sorted(ours) == sorted(golden), what
    for key, value in golden.items():
        assert ours[key] == pytest.approx(value, rel=RTOL, abs=1e-12), f"{what}: {key}"


def _assert_train(ours, golden, what):
    _assert_close_dict(ours["losses"], golden["losses"], f"{what} losses")
    assert ours["total"] == pytest.approx(golden["total"], rel=RTOL)
    _assert_close_dict(ours["grad_norms"], golden["grad_norms"], f"{what} gradient norms")


@pytest.mark.parametrize("name", sorted(refactor.RUNS))
def test_family_outputs_losses_and_gradients_are_unchanged(name):
    golden = _golden()["runs"][name]
    config = refactor.RUNS[name]
    assert golden["config"] == config
    cfg = refactor.load(config)
    num_classes = cfg.model.decoder.num_classes
    _assert_train(refactor.train_outputs(refactor.build(config), num_classes), golden["train"], name)
    if "train_switched" in golden:
        epoch = golden["train_switched"]["epoch"]
        _assert_train(refactor.train_outputs(refactor.build(config), num_classes, epoch),
                      golden["train_switched"], f"{name} after the matcher switch")

    forms = {"eval": refactor.build(config)}
    if f"{name}_deploy_scores" in _arrays():
        forms["deploy"] = refactor.build(config).deploy()
    for form, model in forms.items():
        for key, value in refactor.eval_outputs(model, num_classes).items():
            expected = _arrays()[f"{name}_{form}_{key}"]
            if key == "labels":
                np.testing.assert_array_equal(value.numpy(), expected, err_msg=f"{name} {form} {key}")
            else:
                np.testing.assert_allclose(
                    value.numpy(), expected, rtol=RTOL, atol=1e-12, err_msg=f"{name} {form} {key}"
                )
