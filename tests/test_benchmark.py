"""tools/benchmark.py: one JSON line per measurement, with the fields its docstring promises."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark", ROOT / "tools" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

TOY = str(ROOT / "configs" / "quickstart" / "deim_rtdetrv2_r18_toy.py")


def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_params_flops_latency(capsys):
    benchmark.main(["--config-file", TOY, "--what", "params,flops,latency", "--repeats", "1", "--warmup", "0",
                    "--batch-size", "2", "--device", "cpu"])
    lines = _lines(capsys)
    params, flops, *latency = lines
    assert params["benchmark"] == "params" and params["params"] == params["trainable"] > params["deploy_params"] > 0
    assert flops["benchmark"] == "flops" and flops["image_size"] == [128, 128]
    assert flops["gflops"] == pytest.approx(2 * flops["gmacs"], rel=1e-3) and flops["gmacs"] > 0.1
    assert [(x["form"], x["batch_size"]) for x in latency] == [
        ("eager", 1), ("eager", 2), ("deploy", 1), ("deploy", 2), ("onnxruntime", 1), ("onnxruntime", 2)]
    assert [x["device"] for x in latency[4:]] == ["cpu", "cpu"]
    assert all(x["ms"] > 0 and x["images_per_s"] > 0 and x["config"] == TOY for x in latency)
    assert all(x["peak_memory_mb"] > 0 for x in latency)


def test_train_step(capsys):
    benchmark.main(["--config-file", TOY, "--what", "train", "--repeats", "2", "--warmup", "1", "--batch-size", "2",
                    "--device", "cpu", "model.decoder.denoising.num_denoising=0"])
    (train,) = _lines(capsys)
    assert train["benchmark"] == "train" and train["batch_size"] == 2 and train["image_size"] == [128, 128]
    assert len(train["ms_all"]) == 2 and train["ms"] > 0 and train["peak_memory_mb"] > 0
    assert train["images_per_s"] == pytest.approx(2000 / train["ms"], rel=1e-2) and train["amp"] is False


def test_loader_variants(capsys):
    benchmark.main(["--config-file", TOY, "--what", "loader", "--variants", "mosaic_cache", "mixup",
                    "--repeats", "1", "--warmup", "1", "--batches", "2", "--num-workers", "0"])
    lines = _lines(capsys)
    assert [x["variant"] for x in lines] == ["mosaic_cache", "mixup"]
    assert all(x["benchmark"] == "loader" and x["images_per_s"] > 0 and x["batch_size"] == 8 for x in lines)


def test_loader_memory_samples_every_process(capsys):
    benchmark.main(["--config-file", TOY, "--what", "loader_memory", "--variants", "dense_o2o_cache",
                    "--batches", "4", "--num-workers", "1"])
    *samples, summary = _lines(capsys)
    assert [x["batches"] for x in samples] == [1, 2, 3, 4] and [x["images"] for x in samples] == [8, 16, 24, 32]
    assert all(len(x["workers_rss_mb"]) == 1 and x["main_rss_mb"] > 0 and x["total_pss_mb"] > 0 for x in samples)
    assert summary["summary"] and summary["images"] == 32 and summary["num_workers"] == 1
    assert summary["pss_growth_mb"] == pytest.approx(
        samples[-1]["total_pss_mb"] - samples[0]["total_pss_mb"], abs=0.11)


def test_unknown_measurement_is_refused():
    with pytest.raises(SystemExit):
        benchmark.main(["--config-file", TOY, "--what", "speed"])
