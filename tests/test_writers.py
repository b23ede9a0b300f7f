"""The training log line: the loss terms summed into their groups (dfine.engine.writers)."""
import logging
import statistics

import pytest
from detectron2.utils.events import EventStorage

from decoders import family_criterion
from dfine.engine import LossGroupPrinter


@pytest.mark.parametrize("family,key,group", [
    ("rtdetrv2", "loss_vfl", "classification"),
    ("rtdetrv2", "loss_vfl_enc_0", "classification"),
    ("rtdetrv2", "loss_bbox_aux_2", "boxes"),
    ("rtdetrv2", "loss_giou_pre", "boxes"),
    ("rtdetrv2", "loss_giou_dn_5", "denoising"),
    ("dfine", "loss_fgl_aux_0", "distribution"),
    ("dfine", "loss_ddf", "distribution"),
    ("dfine", "loss_vfl_dn_pre", "denoising"),
    ("deimv2", "loss_mal_pre", "classification"),
])
def test_every_loss_key_has_its_group(family, key, group):
    assert family_criterion(family).loss_group(key) == group


def test_the_line_prints_the_total_and_the_group_medians(caplog):
    criterion = family_criterion("dfine")
    terms = {  # three iterations of a few terms
        "loss_vfl": [1.0, 2.0, 4.0], "loss_vfl_aux_0": [1.0, 1.0, 1.0],
        "loss_bbox": [0.5, 0.25, 0.5], "loss_giou": [0.5, 0.5, 0.5],
        "loss_fgl": [0.1, 0.2, 0.3], "loss_ddf_aux_0": [0.0, 0.0, 0.1],
        "loss_vfl_dn_0": [3.0, 3.0, 3.0], "loss_bbox_dn_0": [1.0, 2.0, 0.0],
    }
    printer = LossGroupPrinter(max_iter=10, group_of=criterion.loss_group, window_size=20)
    with EventStorage(start_iter=0) as storage:
        for i in range(3):
            storage.iter = i
            for key, values in terms.items():
                storage.put_scalar(key, values[i])
            storage.put_scalar("total_loss", sum(values[i] for values in terms.values()))
            storage.put_scalar("lr", 1e-4 * (i + 1), smoothing_hint=False)
        with caplog.at_level(logging.INFO, logger="dfine.engine.writers"):
            printer.write()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "dfine.engine.writers"]
    # Medians of the per-iteration sums: classification 2, 3, 5 -> 3; boxes 1, 0.75, 1 -> 1;
    # distribution 0.1, 0.2, 0.4 -> 0.2; denoising 4, 5, 3 -> 4; total 7.1, 8.95, 9.4 -> 8.95.
    expected_total = statistics.median([sum(v[i] for v in terms.values()) for i in range(3)])
    assert (
        f"iter: 2/10  total_loss: {expected_total:.4g} (classification 3, boxes 1, distribution 0.2, denoising 4)"
        in line
    )
    assert "lr: 0.0003" in line and "loss_vfl" not in line
