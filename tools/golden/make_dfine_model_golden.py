"""Write ``tests/golden/dfine_model_golden.json`` / ``.npz``: whole D-FINE and DEIM-D-FINE models, run by
the official code.

The official D-FINE and DEIM code is imported at run time from clones outside this repository;
nothing of them is copied here, and the JSON records each clone's commit (``git rev-parse HEAD``).
Weights, images and targets come from ``tests/golden/synth.py``, so a test rebuilds them without the
official code. How to rerun, from the repository root, with a venv that holds torch, torchvision,
scipy, PyYAML and faster-coco-eval::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dfine_model_golden.py PATH/TO/D-FINE PATH/TO/DEIM

The numbers (``eval`` and ``train``) are float64: the official model runs after ``model.double()``
on float64 images and targets, so they hold on every CPU whatever its vector kernels (float32 losses
move by up to about 7e-5 between AVX2 and AVX-512 kernels). Three official steps compute in float32
whatever the dtype; they are changed at run time, in the imported modules only, by the shared
``tools/golden/float64_patches.py`` (:func:`patch_for_float64`, names in :data:`PATCHES`):

* ``sincos``: the hybrid encoder's 2-D sin-cos position embedding (built in the training forward and,
  for ``eval_spatial_size``, at construction) is float32, and float32 sin / cos differ by an ulp
  between CPU kernel ISAs; it is computed in float64;
* ``translate_gt`` (``dfine_utils`` of ``src.zoo.dfine`` / ``engine.deim``) casts its bin indices
  with ``.float()``, which makes ``loss_fgl`` / ``loss_ddf`` fail in float64 ("Index put requires the
  source and destination dtypes match"); the replacement computes the same bins and weights in the
  dtype of its input;
* ``dfl_weight``: the criterion's ``unimodal_distribution_focal_loss`` (``DFINECriterion``,
  ``DEIMCriterion``) casts the FGL's IoU weights with ``.float()``, which would round them to float32
  (a 1e-8 relative change of ``loss_fgl``); the wrapper calls the official method without the weight
  and applies it, in its own dtype, and the reduction.

Before use, the ``translate_gt`` and focal-loss replacements are checked to give exactly the official
values in float32 (the embedding: equal to float32 rounding). The JSON lists the patches per repo in
``patches``.

Without arguments every job of ``JOBS`` runs, each in its own subprocess (``D-FINE DEIM JOB REPO SIZE OUT``, which
writes ``OUT.json`` and maybe ``OUT.npz``), and the parent merges their results into the two files.
One official config is loaded per subprocess because the official ``load_config(path, cfg=dict())``
keeps its mutable default dict: every config loaded in a process merges into the keys left by the
previous ones. Only the ``chained`` jobs load several configs in one process, on purpose. The
official ``src`` / ``engine`` packages import ``calflops`` (FLOP counting, never used here), which is
replaced by a stub. Every config is built by ``YAMLConfig(path, HGNetv2={"pretrained": False})``
(no download), with ``torch.set_num_threads(1)``. Two runs give identical files.

Configs: D-FINE ``configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml`` (repo ``dfine``), DEIM
``configs/deim_dfine/deim_hgnetv2_{n,s,m,l,x}_coco.yml`` (repo ``deim``; these include the DEIM copy of
the D-FINE configs plus ``configs/base/deim.yml``: SiLU decoder MLPs and FFN, BatchNorm instead of
FrozenBN and nothing frozen in the backbone, the DEIM criterion with MAL).

Synthetic weights: ``synth_state_dict(keys, seed=0)`` over the model's own state-dict keys, loaded with
``strict=True``. The model keeps its own values for the constructor buffers of
``synth.CONSTRUCTOR_BUFFERS`` (anchors, valid_mask, num_points_scale, num_batches_tracked) and, in
addition, for the leaves ``up`` and ``reg_scale`` (``KEEP_OWN_LEAVES``): the official decoder holds
them as frozen ``nn.Parameter`` of shape [1] (``up`` 0.5 float32; ``reg_scale`` 4 as *int64*, since the
YAML value is the integer 4), shared by ``decoder`` and ``decoder.decoder`` (four state-dict entries,
two parameters). They are hyper-parameters of the weighting function W(n), not weights, and
``synth_state_dict`` has no rule for them (it raises ``ValueError`` on those leaves), so they are
left out of the keys handed to it. No other key of any of the ten configs is unsupported
(``synth_unsupported_keys`` below checks it).

JSON fields:

* provenance: ``official`` ({repo: {"repo", "commit"}}), ``torch``, ``torchvision``, ``numpy``,
  ``command``, ``dtype`` and ``patches``; the inputs: ``weight_seed`` (0), ``keep_own_leaves``
  (``up``, ``reg_scale``),
  ``constructor_buffers``, ``eval_image`` / ``eval_image_crc32`` (``synth_image(640, 640, seed=0)``),
  ``train_images`` / ``train_images_crc32`` (``synth_image(640, 640, seed)`` for seeds 1 and 2),
  ``train_targets`` / ``train_targets_crc32`` (``golden.dfine_inputs.train_targets``: the int64 labels
  and normalised cxcywh boxes of ``synth_targets([3, 5], 80, seed=3)``, whose CRC-32 this is, with the
  boxes shrunk to a 1/256 grid and handed to the model as float64). CRC-32 values are ``synth.fingerprint``.
* ``reference_num_parameters``: {repo: {size: count}}, the parameter counts that the project takes to
  be the published ones (D-FINE N-X, DEIM L and X), checked against ``counts`` and ``chained_counts``.
* ``counts[repo][size]`` (one fresh subprocess per config): ``config`` (path in the official tree),
  ``num_parameters`` (sum of ``numel`` over ``model.parameters()``, which counts each shared parameter
  once; FrozenBN statistics are buffers), ``num_trainable`` (those with ``requires_grad``),
  ``num_parameters_deploy`` (after the official ``model.deploy()``), ``num_state_dict_entries`` and
  ``num_state_dict_entries_deploy``, ``dim_feedforward`` (of the built decoder layers, i.e. the
  resolved ``DFINETransformer.dim_feedforward``), ``use_lab`` (the built ``HGNetv2.use_lab``),
  ``synth_unsupported_keys`` (keys that ``synth_state_dict`` cannot fill, besides the kept leaves:
  empty), ``dtypes`` (state-dict entries that are not float32) and, for the ``dfine`` repo only,
  ``state_dict`` (key -> shape, in state-dict order, buffers included).
* ``chained_counts[repo]``: the five configs loaded one after the other (n, s, m, l, x) in ONE process,
  with the official loader as it is (``order``). Per size: ``num_parameters`` (chained),
  ``num_parameters_fresh`` (from ``counts``), ``dim_feedforward`` and ``use_lab`` as
  ``{"chained": ..., "fresh": ...}`` (resolved from the built models), ``leaked``: every dotted key of
  the model / criterion / postprocessor sections of the resolved YAML whose value differs between the
  chained and the fresh load (``{"chained": value, "fresh": value}``, ``null`` = key absent), and
  ``reference``, ``chained_matches_reference``, ``fresh_matches_reference`` where a reference count
  exists. ``leak_explains_reference`` (per repo): every reference count equals the chained count.
* ``eval[size]`` (size n, s; D-FINE repo; fresh subprocess): ``config``, ``overrides``,
  ``weights_crc32``, ``kept_own_values`` (key -> list of the model's own values), ``eval_idx``,
  ``num_parameters``; ``model.double().eval()`` on the eval image as RGB float64 / 255, 1x3x640x640.
  ``enc_topk_min_gap``, ``enc_topk_num_ties``, ``enc_topk_gap_at_cut``: among the 300 largest
  per-anchor max logits of ``decoder.enc_score_head`` (the official query selection), the smallest
  gap between neighbours, the number of exact ties and the gap between the 300th and 301st;
  ``enc_topk_index``: the 300 selected anchors in the official order (``topk``). Neighbouring
  selected logits differ by as little as about 5e-7 (S): a float32 run may swap a few of them, so
  compare float32 outputs to these after pairing the queries, not query by query.
  ``deploy``: after the official ``model.deploy()``, the same input again: ``num_parameters``,
  ``max_abs_diff_logits`` / ``max_abs_diff_boxes`` (deployed vs not, query by query),
  ``enc_topk_same_set`` and ``enc_topk_same_order`` (deployed query selection vs not) and, when the
  set is the same, ``max_abs_diff_logits_aligned`` / ``max_abs_diff_boxes_aligned``: the same after
  putting the deployed queries back in the undeployed ``enc_topk_index`` order (the decoder is
  permutation-equivariant over queries, so a swap of two nearly tied anchors only permutes them).
* ``train[name]`` (name ``n``, ``s``: D-FINE repo; ``deim_n``: DEIM repo, N config; fresh
  subprocess): ``config``, ``overrides`` (``DFINETransformer.num_denoising: 0``), ``weights_crc32``
  (of the train model's keys, which lack ``decoder.denoising_class_embed.weight``; the shared keys get
  the same tensors as in ``eval``), ``kept_own_values``; ``model.double().train()`` (BatchNorm with batch
  statistics), ``outputs = model(images, targets=targets)``, ``loss_dict = criterion(outputs, targets,
  **metas)`` with the config's criterion (``criterion``: class name; ``criterion_args``: gamma, alpha,
  losses, ``weight_dict``, ``mal_alpha`` / ``use_uni_set`` (DEIM only, else null)) and ``metas``
  as the official training loop passes them for the first step (``{"epoch": 0, "step": 0,
  "global_step": 0, "epoch_step": 1}``; the criteria ignore them). ``losses``: every (weighted,
  float64) entry of ``loss_dict``; ``total``: their sum in the dict's order;
  ``matcher_indices_last_layer``: per image ``[query indices, target indices]`` of the
  official ``HungarianMatcher`` on the final ``pred_logits`` / ``pred_boxes``.

NPZ arrays (float64): ``{size}_eval_logits`` [1, 300, 80] and ``{size}_eval_boxes`` [1, 300, 4]
(normalised cxcywh) for size n, s (not deployed).
"""

import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/, for golden.synth

import float64_patches  # noqa: E402  (tools/golden, this script's directory)
from make_rtdetrv2_golden import DTYPE, _image_tensor, _top_gaps, official_commit  # noqa: E402
from golden.dfine_inputs import train_targets  # noqa: E402
from golden.synth import (  # noqa: E402
    CONSTRUCTOR_BUFFERS,
    fingerprint,
    synth_image,
    synth_state_dict,
    synth_targets,
)

SIZES = ("n", "s", "m", "l", "x")
REPOS = {
    "dfine": {
        "name": "Peterande/D-FINE",
        "package": "src",
        "zoo": "src.zoo.dfine",
        "config": "configs/dfine/dfine_hgnetv2_{}_coco.yml",
    },
    "deim": {
        "name": "Intellindust-AI-Lab/DEIM",
        "package": "engine",
        "zoo": "engine.deim",
        "config": "configs/deim_dfine/deim_hgnetv2_{}_coco.yml",
    },
}
REFERENCE_NUM_PARAMETERS = {
    "dfine": {"n": 3782693, "s": 9533909, "m": 18539440, "l": 29668322, "x": 61045794},
    "deim": {"l": 29714018, "x": 61139714},
}
JOBS = [("counts", repo, size) for repo in REPOS for size in SIZES]
JOBS += [("chained", repo, "-") for repo in REPOS]
JOBS += [("eval", "dfine", "n"), ("eval", "dfine", "s")]
JOBS += [("train", "dfine", "n"), ("train", "dfine", "s"), ("train", "deim", "n")]

KEEP_OWN_LEAVES = frozenset({"up", "reg_scale"})
WEIGHT_SEED = 0
EVAL_IMAGE_SEED = 0
TRAIN_IMAGE_SEEDS = (1, 2)
TRAIN_TARGET_SEED = 3
TRAIN_NUM_TARGETS = [3, 5]
NUM_CLASSES = 80
TRAIN_METAS = {"epoch": 0, "step": 0, "global_step": 0, "epoch_step": 1}
BASE_OVERRIDES = {"HGNetv2": {"pretrained": False}}
TRAIN_OVERRIDES = {"DFINETransformer": {"num_denoising": 0}}
MODEL_SECTIONS = ("model", "criterion", "postprocessor", "HGNetv2", "HybridEncoder", "DFINETransformer")
COMMAND = "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_dfine_model_golden.py <D-FINE clone> <DEIM clone>"
ROOTS = {}  # repo -> the official clone, given on the command line
PATCHES = ("sincos", "dfl_weight", "translate_gt")  # float64_patches names, for eval and train
def patch_for_float64(repo: str, *names: str) -> list:
    """The float64 patches of ``tools/golden/float64_patches.py`` (all of :data:`PATCHES`, or the named
    ones) in the official package of ``repo`` (``dfine`` or ``deim``), imported already; returns their
    provenance texts."""
    return float64_patches.install(REPOS[repo]["zoo"], *(names or PATCHES))


def _config_path(repo: str, size: str) -> str:
    return REPOS[repo]["config"].format(size)


def _overrides(train: bool) -> dict:
    out = {k: dict(v) for k, v in BASE_OVERRIDES.items()}
    if train:
        out.update({k: dict(v) for k, v in TRAIN_OVERRIDES.items()})
    return out


def _build(repo: str, size: str, train: bool = False):
    """The official config object (imported lazily from the repo's package)."""
    yaml_config = sys.modules[REPOS[repo]["package"] + ".core"].YAMLConfig
    root = ROOTS[repo]
    return yaml_config(str(root / _config_path(repo, size)), **_overrides(train))


def _count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _resolved(model: torch.nn.Module) -> dict:
    """The values the leak is suspected to change, read from the built model."""
    return {
        "dim_feedforward": model.decoder.decoder.layers[0].linear1.out_features,
        "use_lab": bool(model.backbone.use_lab),
    }


def _flat_sections(cfg, sections=MODEL_SECTIONS) -> dict:
    """Dotted key -> value of the model / criterion / postprocessor sections of the resolved YAML
    and of the named ``sections``."""
    yaml_cfg = cfg.yaml_cfg
    names = [yaml_cfg.get(k) for k in ("model", "criterion", "postprocessor")] + list(sections)
    out = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}.{k}", v)
        else:
            out[prefix] = value

    for name in dict.fromkeys(n for n in names if isinstance(n, str)):
        if name in yaml_cfg:
            visit(name, yaml_cfg[name])
    return json.loads(json.dumps(out))


def _synth_weights(module: torch.nn.Module):
    """``synth_state_dict`` over the module's keys except the kept leaves, plus the kept own values."""
    own = module.state_dict()
    shapes = {k: list(v.shape) for k, v in own.items() if k.rpartition(".")[2] not in KEEP_OWN_LEAVES}
    weights = synth_state_dict(shapes, seed=WEIGHT_SEED)
    kept = [k for k in own if k not in weights]
    assert all(k.rpartition(".")[2] in CONSTRUCTOR_BUFFERS | KEEP_OWN_LEAVES for k in kept), kept
    return weights, {k: own[k] for k in kept}


def _load_synth_weights(module: torch.nn.Module):
    """Load the synthetic weights strictly; return their fingerprint and the kept up / reg_scale values."""
    weights, kept = _synth_weights(module)
    module.load_state_dict({**kept, **weights}, strict=True)
    kept_values = {k: v.tolist() for k, v in kept.items() if k.rpartition(".")[2] in KEEP_OWN_LEAVES}
    return fingerprint(weights), kept_values


def _synth_unsupported_keys(state_dict: dict) -> list:
    bad = []
    for key, value in state_dict.items():
        if key.rpartition(".")[2] in KEEP_OWN_LEAVES:
            continue
        try:
            synth_state_dict({key: list(value.shape)}, seed=WEIGHT_SEED)
        except ValueError:
            bad.append(key)
    return bad



def job_counts(repo: str, size: str) -> tuple:
    cfg = _build(repo, size)
    sections = _flat_sections(cfg)
    model = cfg.model
    sd = model.state_dict()
    result = {
        "config": _config_path(repo, size),
        "num_parameters": _count(model),
        "num_trainable": _count(model, trainable=True),
        "num_state_dict_entries": len(sd),
        **_resolved(model),
        "synth_unsupported_keys": _synth_unsupported_keys(sd),
        "dtypes": {k: str(v.dtype)[len("torch.") :] for k, v in sd.items() if v.dtype != torch.float32},
    }
    if repo == "dfine":
        result["state_dict"] = {k: list(v.shape) for k, v in sd.items()}
    model.deploy()
    result["num_parameters_deploy"] = _count(model)
    result["num_state_dict_entries_deploy"] = len(model.state_dict())
    return {"result": result, "sections": sections}, {}


def job_chained(repo: str, _size: str) -> tuple:
    out = {}
    for size in SIZES:  # one process, the official loader's shared default dict left as it is
        cfg = _build(repo, size)
        sections = _flat_sections(cfg)
        model = cfg.model
        out[size] = {"num_parameters": _count(model), **_resolved(model), "sections": sections}
        del cfg, model
    return out, {}


def job_eval(repo: str, size: str) -> tuple:
    cfg = _build(repo, size)
    model = cfg.model
    weights_crc32, kept_values = _load_synth_weights(model)
    model.to(DTYPE).eval()
    captured = {}
    model.decoder.enc_score_head.register_forward_hook(lambda m, i, o: captured.__setitem__("enc", o))

    images = _image_tensor(EVAL_IMAGE_SEED)[None]
    num_queries = model.decoder.num_queries
    with torch.no_grad():
        outputs = model(images)
        enc_max = captured["enc"].max(-1).values
        topk = torch.topk(enc_max, num_queries, dim=-1).indices
        num_parameters = _count(model)
        model.deploy()
        deployed = model(images)
        topk_deploy = torch.topk(captured["enc"].max(-1).values, num_queries, dim=-1).indices
    min_gap, num_ties, gap_at_cut = _top_gaps(enc_max, num_queries)

    result = {
        "config": _config_path(repo, size),
        "overrides": {"HGNetv2.pretrained": False},
        "weight_seed": WEIGHT_SEED,
        "weights_crc32": weights_crc32,
        "kept_own_values": kept_values,
        "eval_idx": model.decoder.decoder.eval_idx,
        "num_parameters": num_parameters,
        "enc_topk_min_gap": min_gap,
        "enc_topk_num_ties": num_ties,
        "enc_topk_gap_at_cut": gap_at_cut,
        "enc_topk_index": topk[0].tolist(),
        "deploy": {
            "num_parameters": _count(model),
            "max_abs_diff_logits": (deployed["pred_logits"] - outputs["pred_logits"]).abs().max().item(),
            "max_abs_diff_boxes": (deployed["pred_boxes"] - outputs["pred_boxes"]).abs().max().item(),
            "enc_topk_same_set": set(topk[0].tolist()) == set(topk_deploy[0].tolist()),
            "enc_topk_same_order": bool(torch.equal(topk, topk_deploy)),
        },
    }
    if result["deploy"]["enc_topk_same_set"]:  # queries in the undeployed order, as the decoder is equivariant
        where = {int(a): i for i, a in enumerate(topk_deploy[0])}
        order = torch.tensor([where[int(a)] for a in topk[0]])
        for key, name in (("pred_logits", "logits"), ("pred_boxes", "boxes")):
            diff = deployed[key][:, order] - outputs[key]
            result["deploy"][f"max_abs_diff_{name}_aligned"] = diff.abs().max().item()
    arrays = {
        f"{size}_eval_logits": outputs["pred_logits"].numpy(),
        f"{size}_eval_boxes": outputs["pred_boxes"].numpy(),
    }
    return result, arrays


def _indices_lists(indices) -> list:
    return [[src.tolist(), tgt.tolist()] for src, tgt in indices]


def job_train(repo: str, size: str) -> tuple:
    cfg = _build(repo, size, train=True)
    model, criterion = cfg.model, cfg.criterion
    assert model.decoder.num_denoising == 0
    weights_crc32, kept_values = _load_synth_weights(model)
    model.to(DTYPE).train()
    criterion.train()

    images = torch.stack([_image_tensor(s) for s in TRAIN_IMAGE_SEEDS])
    targets = train_targets(DTYPE)
    torch.manual_seed(0)  # nothing random is expected in this forward (no dropout, no denoising)
    outputs = model(images, targets=targets)
    losses = criterion(outputs, targets, **TRAIN_METAS)
    matched = criterion.matcher({k: outputs[k] for k in ("pred_logits", "pred_boxes")}, targets)["indices"]

    assert all(v.dtype == DTYPE for v in losses.values())
    name = size if repo == "dfine" else f"{repo}_{size}"
    result = {
        "config": _config_path(repo, size),
        "overrides": {"HGNetv2.pretrained": False, "DFINETransformer.num_denoising": 0},
        "mode": "model.train() (BatchNorm with batch statistics), criterion from the config",
        "weight_seed": WEIGHT_SEED,
        "weights_crc32": weights_crc32,
        "kept_own_values": kept_values,
        "criterion": type(criterion).__name__,
        "criterion_args": {
            "losses": list(criterion.losses),
            "weight_dict": dict(criterion.weight_dict),
            "alpha": criterion.alpha,
            "gamma": criterion.gamma,
            "mal_alpha": getattr(criterion, "mal_alpha", None),
            "use_uni_set": getattr(criterion, "use_uni_set", None),
        },
        "metas": TRAIN_METAS,
        "losses": {k: v.item() for k, v in losses.items()},
        "total": sum(v.item() for v in losses.values()),
        "matcher_indices_last_layer": _indices_lists(matched),
    }
    return {"name": name, "result": result}, {}


def _run_job(job: str, repo: str, size: str, out: str) -> None:
    sys.path.insert(0, str(ROOTS[repo]))
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))  # imported, not used
    __import__(REPOS[repo]["package"])  # registers every official module
    patch_for_float64(repo)
    torch.set_num_threads(1)  # one reduction order, whatever the machine
    result, arrays = {"counts": job_counts, "chained": job_chained, "eval": job_eval, "train": job_train}[job](
        repo, size
    )
    Path(out + ".json").write_text(json.dumps(result))
    if arrays:
        np.savez(out + ".npz", **arrays)


def _leaked(chained: dict, fresh: dict) -> dict:
    return {
        k: {"chained": chained.get(k), "fresh": fresh.get(k)}
        for k in sorted(set(chained) | set(fresh))
        if chained.get(k) != fresh.get(k)
    }


def _provenance() -> dict:
    import torchvision

    return {
        "official": {
            repo: {"repo": spec["name"], "commit": official_commit(ROOTS[repo])} for repo, spec in REPOS.items()
        },
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "command": COMMAND,
        "dtype": "float64 (eval and train; counts are of the models as built, in float32)",
        "patches": {
            repo: [float64_patches.describe(spec["zoo"], k) for k in PATCHES] for repo, spec in REPOS.items()
        },
        "weight_seed": WEIGHT_SEED,
        "keep_own_leaves": sorted(KEEP_OWN_LEAVES),
        "constructor_buffers": sorted(CONSTRUCTOR_BUFFERS),
        "eval_image": f"synth_image(640, 640, seed={EVAL_IMAGE_SEED}) -> RGB float64/255, 1x3x640x640",
        "eval_image_crc32": fingerprint(synth_image(640, 640, EVAL_IMAGE_SEED)),
        "train_images": f"synth_image(640, 640, seed) for seeds {list(TRAIN_IMAGE_SEEDS)} -> RGB float64/255, "
        "stacked to 2x3x640x640",
        "train_images_crc32": fingerprint([synth_image(640, 640, s) for s in TRAIN_IMAGE_SEEDS]),
        "train_targets": f"golden.dfine_inputs.train_targets(float64): synth_targets({TRAIN_NUM_TARGETS}, "
        f"{NUM_CLASSES}, seed={TRAIN_TARGET_SEED}) (train_targets_crc32) with the boxes shrunk to a 1/256 grid",
        "train_targets_crc32": fingerprint(synth_targets(TRAIN_NUM_TARGETS, NUM_CLASSES, seed=TRAIN_TARGET_SEED)),
    }


def main(argv) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    ROOTS.update(dfine=Path(argv[0]).resolve(), deim=Path(argv[1]).resolve())
    if argv[2:]:
        _run_job(*argv[2:])
        return

    results, arrays = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for job, repo, size in JOBS:
            out = os.path.join(tmp, f"{job}_{repo}_{size}")
            print("running", job, repo, size, flush=True)
            cmd = [sys.executable, __file__, str(ROOTS["dfine"]), str(ROOTS["deim"]), job, repo, size, out]
            subprocess.run(cmd, check=True, cwd=REPO_ROOT)
            results[(job, repo, size)] = json.loads(Path(out + ".json").read_text())
            if os.path.exists(out + ".npz"):
                with np.load(out + ".npz") as npz:
                    arrays.update({k: npz[k] for k in npz.files})

    golden = _provenance()
    golden["reference_num_parameters"] = REFERENCE_NUM_PARAMETERS
    golden["counts"] = {
        repo: {size: results[("counts", repo, size)]["result"] for size in SIZES} for repo in REPOS
    }
    golden["chained_counts"] = {}
    for repo in REPOS:
        chained = results[("chained", repo, "-")]
        entry = {"order": list(SIZES)}
        explains = True
        for size in SIZES:
            fresh = results[("counts", repo, size)]
            c = chained[size]
            item = {
                "num_parameters": c["num_parameters"],
                "num_parameters_fresh": fresh["result"]["num_parameters"],
                "dim_feedforward": {"chained": c["dim_feedforward"], "fresh": fresh["result"]["dim_feedforward"]},
                "use_lab": {"chained": c["use_lab"], "fresh": fresh["result"]["use_lab"]},
                "leaked": _leaked(c["sections"], fresh["sections"]),
            }
            reference = REFERENCE_NUM_PARAMETERS[repo].get(size)
            if reference is not None:
                item["reference"] = reference
                item["chained_matches_reference"] = c["num_parameters"] == reference
                item["fresh_matches_reference"] = fresh["result"]["num_parameters"] == reference
                explains = explains and item["chained_matches_reference"]
            entry[size] = item
        entry["leak_explains_reference"] = explains
        golden["chained_counts"][repo] = entry
    golden["eval"] = {size: results[(job, repo, size)] for job, repo, size in JOBS if job == "eval"}
    golden["train"] = {}
    for job, repo, size in JOBS:
        if job == "train":
            r = results[(job, repo, size)]
            golden["train"][r["name"]] = r["result"]

    (GOLDEN_DIR / "dfine_model_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print("wrote dfine_model_golden.json")
    np.savez_compressed(GOLDEN_DIR / "dfine_model_golden.npz", **dict(sorted(arrays.items())))
    print("wrote dfine_model_golden.npz", (GOLDEN_DIR / "dfine_model_golden.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
