"""HGNetv2 against the official D-FINE backbone: state-dict layout, parameter counts (all sizes,
with and without LAB, with the configs' freezing) and the feature maps of synthetic weights.
Golden values: tools/golden/make_dfine_golden.py ran the official D-FINE backbone (hgnetv2_golden.json /
.npz; commit in the JSON). The feature maps are float64 on both sides and compared to ``RTOL64 = 1e-9``
(sums relative; slices relative to the slice's largest magnitude): the two differ only by the order
of float64 operations, measured at most 2.6e-15 natively on AVX-512, with ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 and with ATEN_CPU_CAPABILITY=default."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dfine.modeling.backbone import HGNETV2_ARCHS, HGNetv2
from golden.synth import synth_image, synth_state_dict

GOLDEN_DIR = Path(__file__).parent / "golden"
RTOL64 = 1e-9

GOLDEN = json.loads((GOLDEN_DIR / "hgnetv2_golden.json").read_text())
ARRAYS = np.load(GOLDEN_DIR / "hgnetv2_golden.npz")


@pytest.mark.parametrize("arch", sorted(GOLDEN["archs"]))
def test_parameter_count_of_every_size(arch):
    name, _, lab = arch.partition("_")
    model = HGNetv2(name, use_lab=bool(lab), freeze_norm=False)
    assert sum(p.numel() for p in model.parameters()) == GOLDEN["archs"][arch]
    assert set(HGNETV2_ARCHS) == {a.partition("_")[0] for a in GOLDEN["archs"]}


@pytest.mark.parametrize("size", sorted(GOLDEN["models"]))
def test_state_dict_layout_and_freezing_of_the_dfine_configs(size):
    golden = GOLDEN["models"][size]
    model = HGNetv2(**golden["config"])
    # Same names, order and shapes: official checkpoints load unchanged.
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == golden["state_dict"]
    assert list(model.state_dict()) == list(golden["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == golden["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == golden["num_trainable"]


@pytest.mark.parametrize("size", ["s", "l"])
def test_feature_maps_match_official(size):
    golden = GOLDEN["models"][size]
    model = HGNetv2(**golden["config"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = model.load_state_dict(synth_state_dict(shapes, seed=0), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    image = torch.from_numpy(synth_image(98, 130, seed=4)).permute(2, 0, 1)[None].double() / 255
    with torch.no_grad():
        outs = model.double().eval()(image)
    assert model.out_strides == [8, 16, 32] and model.out_channels == [o["shape"][1] for o in golden["outputs"]]
    for i, (out, expected) in enumerate(zip(outs, golden["outputs"])):
        assert list(out.shape) == expected["shape"] and out.dtype == torch.float64
        assert out.sum().item() == pytest.approx(expected["sum"], rel=RTOL64)
        assert out.abs().sum().item() == pytest.approx(expected["abs_sum"], rel=RTOL64)
        golden = ARRAYS[f"{size}_{i}"]
        np.testing.assert_allclose(out[0, :8, ::4, ::4].numpy(), golden, rtol=RTOL64,
                                   atol=RTOL64 * np.abs(golden).max())


def test_configuration_errors():
    with pytest.raises(ValueError, match="B0"):
        HGNetv2("B9")
    with pytest.raises(ValueError, match="return_idx"):
        HGNetv2("B0", return_idx=[3, 1])
