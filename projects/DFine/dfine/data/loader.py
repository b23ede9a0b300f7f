"""Train/test data loaders whose samples carry their epoch.

Detectron2 trains from an infinite stream of samples, and its loader iterator lives for the whole
run, so epoch-dependent data behaviour cannot be switched by setting attributes (they never
reach live workers). Here the sampler yields ``(index, epoch)`` pairs of one global sample
stream, the dataset hands the epoch to the mapper, and the collate function reads it from the
mapped dicts. Everything epoch-dependent is then a pure function of the stream position: the
same in every worker, reproducible, and resumable with :meth:`EpochAwareSampler.set_start_iter`.

The random draws of the augmentations are tied to the stream as well: with a ``seed``, each sample
is mapped with Python's, NumPy's and torch's global RNGs seeded from ``(seed, epoch, index)`` and
each batch collated with them seeded from its first sample (:func:`stream_rngs`). A sample's
augmentation then does not depend on which worker maps it, nor on what that worker mapped before,
so a run resumed at any iteration, with any number of workers, draws the batches of an
uninterrupted run. The global RNGs are restored afterwards: with ``num_workers=0`` they are the
trainer process's, which also drive the model's random parts (e.g. denoising queries).
"""
import contextlib
import inspect
import itertools
import logging
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from detectron2.data import DatasetFromList, build_detection_test_loader
from detectron2.data.build import worker_init_reset_seed
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm

from .datasets import load_dataset_dicts
from .dense_o2o import CopyBlend, MixUp, draw_mix_weight

__all__ = [
    "EpochAwareSampler",
    "stream_rngs",
    "DetectionDataset",
    "BatchCollate",
    "generate_scales",
    "TrainLoader",
    "build_train_loader",
    "build_test_loader",
]

logger = logging.getLogger(__name__)


class EpochAwareSampler(Sampler):
    """Infinite sampler over a global stream of ``(index, epoch)`` pairs.

    The global stream is the concatenation of epochs; epoch ``e`` is a permutation of
    ``range(size)`` seeded by ``(seed, e)`` (or the identity without ``shuffle``), so stream
    position ``p`` belongs to epoch ``p // size``. At global iteration ``it`` rank ``r`` takes
    positions ``[it * TB + r * B, it * TB + (r + 1) * B)``, where ``TB = total_batch_size`` and
    ``B = TB / world_size``: the ranks' batches partition the global batch, and the epoch of a
    sample does not depend on the number of ranks or workers. An epoch is ``size / TB``
    iterations, possibly fractional: no sample is dropped at epoch ends and a batch may straddle
    two epochs.

    With ``with_batch_epoch`` the items are ``(index, epoch, batch_epoch)``: ``batch_epoch`` is the
    epoch of the global batch (that of its last sample), the same in every rank, so that batch-level
    decisions (:class:`BatchCollate`) switch at the same iteration in every process even when a
    rank's own part of a straddling batch lies wholly in the earlier epoch.
    """

    def __init__(
        self,
        size: int,
        total_batch_size: int,
        shuffle: bool = True,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        with_batch_epoch: bool = False,
    ):
        """
        Args:
            size: number of samples in the data set.
            total_batch_size: batch size summed over all ranks.
            shuffle: shuffle every epoch (else epochs are ``0..size-1`` in order).
            seed: shared by all ranks; ``None`` draws one shared random seed across ranks.
            rank, world_size: default to the current process group's.
            with_batch_epoch: yield ``(index, epoch, batch_epoch)`` instead of ``(index, epoch)``.
        """
        if size <= 0:
            raise ValueError(f"EpochAwareSampler needs a non-empty data set, got size={size}.")
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size
        if total_batch_size <= 0 or total_batch_size % self._world_size != 0:
            raise ValueError(
                f"total_batch_size={total_batch_size} must be a positive multiple of world_size={self._world_size}: "
                f"each of the {self._world_size} processes takes an equal part of the batch "
                "(dataloader.train.total_batch_size is the batch of all processes together)."
            )
        self._size = size
        self._total_batch_size = total_batch_size
        self.batch_size = total_batch_size // self._world_size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        if self._seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self._with_batch_epoch = with_batch_epoch
        self._start_iter = 0

    @property
    def seed(self) -> int:
        """The seed of the epoch permutations, the same on all ranks."""
        return self._seed

    def set_seed(self, seed: int) -> None:
        """Use ``seed`` from the next ``iter()`` on (see :meth:`TrainLoader.set_seed`)."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self._seed = int(seed)

    def set_start_iter(self, iteration: int) -> None:
        """Start the stream at global iteration ``iteration`` (for resume). Takes effect at the
        next ``iter()`` of the sampler, i.e. when the DataLoader iterator is created."""
        self._start_iter = int(iteration)

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """Order of the data set indices in ``epoch``."""
        if not self._shuffle:
            return np.arange(self._size)
        return np.random.default_rng([self._seed, epoch]).permutation(self._size)

    def __iter__(self) -> Iterator[Tuple[int, ...]]:
        epoch, order = -1, None
        for iteration in itertools.count(self._start_iter):
            batch_epoch = ((iteration + 1) * self._total_batch_size - 1) // self._size
            start = iteration * self._total_batch_size + self._rank * self.batch_size
            for position in range(start, start + self.batch_size):
                if position // self._size != epoch:
                    epoch = position // self._size
                    order = self.epoch_permutation(epoch)
                index = int(order[position % self._size])
                yield (index, epoch, batch_epoch) if self._with_batch_epoch else (index, epoch)


# Domain tags of the seeds drawn by `stream_rngs`, so a sample and a batch never share one.
_SAMPLE_STREAM, _BATCH_STREAM = 0, 1


@contextlib.contextmanager
def stream_rngs(*key: int):
    """Seed Python's ``random``, NumPy's global RNG and torch's CPU RNG from the non-negative
    integers ``key`` for the duration of the block, then put their previous states back."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    python_seed, numpy_seed, torch_seed = np.random.SeedSequence(list(key)).generate_state(3)
    with torch.random.fork_rng(devices=[]):
        random.seed(int(python_seed))
        np.random.seed(int(numpy_seed))
        torch.manual_seed(int(torch_seed))
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class DetectionDataset(Dataset):
    """Map-style data set of Detectron2 dataset dicts whose items are indexed by ``(index, epoch)``.

    ``dataset[(i, e)]`` is ``mapper(copy of dicts[i], e)`` with ``"epoch": e`` and
    ``"dataset_index": i`` added; ``dataset[(i, e, b)]`` adds ``"batch_epoch": b`` too (the epoch
    of the global batch, from :class:`EpochAwareSampler`). A mapper with a ``dataset`` argument
    (:class:`~dfine.data.mapper.DetrDatasetMapper`, for Mosaic) also gets the sequence of all
    dicts. A plain integer index means epoch 0. With a ``seed``, the mapper draws inside
    ``stream_rngs`` keyed on ``(seed, e, i)`` (see the module docstring); without, from the RNGs
    as they are. The dicts are pickled into one byte buffer each (detectron2's
    :class:`DatasetFromList`), so DataLoader workers share them instead of copying Python objects.
    """

    def __init__(self, dataset_dicts: List[Dict], mapper: Callable[..., Dict], seed: Optional[int] = None):
        self._dicts = DatasetFromList(dataset_dicts, copy=True, serialize=True)
        self.mapper = mapper
        self.seed = seed
        self._mapper_takes_dataset = "dataset" in inspect.signature(mapper).parameters

    def __len__(self) -> int:
        return len(self._dicts)

    def __getitem__(self, key: Union[int, Tuple[int, ...]]) -> Dict:
        index, epoch = key[:2] if isinstance(key, tuple) else (key, 0)
        rngs = contextlib.nullcontext() if self.seed is None else stream_rngs(self.seed, _SAMPLE_STREAM, epoch, index)
        with rngs:
            if self._mapper_takes_dataset:
                sample = self.mapper(self._dicts[index], epoch, dataset=self._dicts)
            else:
                sample = self.mapper(self._dicts[index], epoch)
        sample["epoch"] = epoch
        sample["dataset_index"] = index
        if isinstance(key, tuple) and len(key) == 3:
            sample["batch_epoch"] = key[2]
        return sample


def generate_scales(base_size: int, base_size_repeat: int) -> List[int]:
    """The official multi-scale list of D-FINE/DEIM (``generate_scales``): multiples of 32 from
    ``0.75 * base_size`` up, ``base_size`` repeated ``base_size_repeat`` times, then multiples of
    32 from ``1.25 * base_size`` down. ``(640, 3)`` gives ``[480, ..., 608, 640, 640, 640, 800,
    ..., 672]``."""
    low, high = int(base_size * 0.75 / 32) * 32, int(base_size * 1.25 / 32) * 32
    steps = (base_size - low) // 32
    return [low + 32 * i for i in range(steps)] + [base_size] * base_size_repeat + [high - 32 * i for i in range(steps)]


class BatchCollate:
    """Batch collate of the official ``BatchImageCollateFunction``: a list of mapped dicts, with
    batch MixUp or Copy-Blend and then the batch-level multi-scale resize.

    The batch's epoch is that of the global batch, over all processes: its samples'
    ``"batch_epoch"`` (from :class:`EpochAwareSampler`), else the largest sample epoch in it (the
    same in one process). ``mixup`` (a
    :class:`~dfine.data.dense_o2o.MixUp`, or ``None``) decides for itself from that epoch.
    ``copy_blend`` (a :class:`~dfine.data.dense_o2o.CopyBlend`, DEIMv2) switches to the draws of
    DEIMv2's collate: the blend weight first, then the MixUp coin (drawn also without MixUp, as
    the official draws it at ``mixup_prob=0``), and Copy-Blend only in batches that MixUp left
    alone (the official ``elif``), so the two never meet in one batch. DEIMv2 configs that switch
    it off (``prob=0`` or an empty window) still pass one, to keep those draws. While
    the epoch is below ``stop_epoch``, one size is drawn with ``random.choice(scales)`` and every
    image is resized to it with nearest interpolation, as the official collate does with
    ``F.interpolate`` on the batch (DEIM ``engine/data/dataloader.py``). Ground-truth boxes are
    scaled with the image. ``scales=None`` disables it; ``stop_epoch=None`` never stops it.

    With a ``seed``, both draw inside ``stream_rngs`` keyed on the epoch and ``"dataset_index"`` of
    the batch's first sample (its stream position, unique to the batch), see the module docstring.
    """

    def __init__(
        self,
        scales: Optional[Sequence[Union[int, Tuple[int, int]]]] = None,
        stop_epoch: Optional[int] = None,
        mixup: Optional[MixUp] = None,
        seed: Optional[int] = None,
        copy_blend: Optional[CopyBlend] = None,
    ):
        self.scales = list(scales) if scales is not None else None
        self.stop_epoch = stop_epoch
        self.mixup = mixup
        self.seed = seed
        self.copy_blend = copy_blend

    def __call__(self, batch: List[Dict]) -> List[Dict]:
        if self.seed is None:
            return self._collate(batch)
        with stream_rngs(self.seed, _BATCH_STREAM, batch[0]["epoch"], batch[0]["dataset_index"]):
            return self._collate(batch)

    def _collate(self, batch: List[Dict]) -> List[Dict]:
        epoch = max(sample.get("batch_epoch", sample.get("epoch", 0)) for sample in batch)
        batch = self._dense_o2o(batch, epoch)
        if not self.scales or (self.stop_epoch is not None and epoch >= self.stop_epoch):
            return batch
        size = random.choice(self.scales)
        size = (size, size) if isinstance(size, int) else tuple(size)
        return [_resize_sample(sample, size) for sample in batch]

    def _dense_o2o(self, batch: List[Dict], epoch: int) -> List[Dict]:
        if self.copy_blend is None:
            return batch if self.mixup is None else self.mixup(batch, epoch)
        # DEIMv2's order of draws (see the class docstring), so seeded batches match the official.
        beta = draw_mix_weight()
        mixup = self.mixup if self.mixup is not None else MixUp(prob=0.0)
        if mixup.decide(epoch):
            return MixUp.mix(batch, draw_mix_weight())
        return self.copy_blend(batch, epoch, beta)


def _resize_sample(sample: Dict, size: Tuple[int, int]) -> Dict:
    """Resize ``sample["image"]`` ``(C, H, W)`` to ``size = (h, w)`` (nearest) and its gt boxes."""
    image = sample["image"]
    old_h, old_w = image.shape[-2:]
    out = dict(sample)
    out["image"] = F.interpolate(image[None], size=size, mode="nearest")[0]
    if "instances" in sample:
        old = sample["instances"]
        scale = torch.tensor([size[1] / old_w, size[0] / old_h] * 2, dtype=torch.float32)
        instances = Instances(size)
        for name, value in old.get_fields().items():
            instances.set(name, value)
        instances.gt_boxes = Boxes(old.gt_boxes.tensor * scale.to(old.gt_boxes.tensor.device))
        out["instances"] = instances
    return out


class TrainLoader(DataLoader):
    """The DataLoader of :func:`build_train_loader`, with the seed of its sample stream.

    One seed decides the epoch permutations of the :class:`EpochAwareSampler` and the
    augmentations' draws (:func:`stream_rngs`). A run resumed from a checkpoint must use the seed
    of the run that wrote it, which differs when the seed was drawn at random (``seed=None``):
    the trainer saves :attr:`seed` and calls :meth:`set_seed` on resume, before the iterator is
    created (the workers start with the new seed then).
    """

    @property
    def seed(self) -> int:
        return self.sampler.seed

    def set_seed(self, seed: int) -> None:
        self.sampler.set_seed(seed)
        self.dataset.seed = self.collate_fn.seed = self.sampler.seed
        self.generator.manual_seed(self.sampler.seed)


def build_train_loader(
    dataset: Union[str, Sequence[str], List[Dict]],
    mapper: Callable[[Dict, int], Dict],
    total_batch_size: int,
    num_workers: int = 4,
    seed: Optional[int] = None,
    multi_scale: Optional[Sequence[int]] = None,
    multi_scale_stop_epoch: Optional[int] = None,
    mixup_prob: float = 0.0,
    mixup_epochs: Sequence[int] = (0, 0),
    copy_blend: Optional[CopyBlend] = None,
) -> DataLoader:
    """Infinite training loader yielding lists of ``total_batch_size / world_size`` mapped dicts.

    Args:
        dataset: registered data set name(s), loaded with
            :func:`~dfine.data.datasets.load_dataset_dicts`, or a list of dataset dicts.
        mapper: ``mapper(dataset_dict, epoch) -> dict``, e.g. :class:`DetrDatasetMapper`.
        total_batch_size: batch size summed over all ranks.
        num_workers: DataLoader worker processes. Their number does not change the batches.
        seed: seed of the epoch permutations and of the augmentations' draws (shared by ranks,
            see the module docstring); ``None`` draws a shared one.
        multi_scale, multi_scale_stop_epoch: the ``scales`` and ``stop_epoch`` of
            :class:`BatchCollate` (see :func:`generate_scales` for the official lists).
        mixup_prob, mixup_epochs: DEIM's batch MixUp (:class:`~dfine.data.dense_o2o.MixUp`);
            ``mixup_prob=0`` disables it.
        copy_blend: DEIMv2's batch Copy-Blend, e.g. ``L(CopyBlend)(prob=0.5, epochs=[4, 120])`` in
            a config; ``None`` (DEIM and earlier) keeps the DEIM collate's draws (see
            :class:`BatchCollate`).

    ``len(loader.dataset)`` is the number of training images, to convert epochs to iterations
    (``iterations_per_epoch = len(loader.dataset) / total_batch_size``); ``loader.sampler`` is the
    :class:`EpochAwareSampler` (``set_start_iter`` before iterating, to resume); ``loader.seed`` and
    ``loader.set_seed`` (:class:`TrainLoader`) save and restore the stream's seed.
    """
    dicts = _as_dataset_dicts(dataset)
    sampler = EpochAwareSampler(len(dicts), total_batch_size, shuffle=True, seed=seed, with_batch_epoch=True)
    dataset = DetectionDataset(dicts, mapper, seed=sampler.seed)
    logger.info(
        f"Train loader: {len(dataset)} images, batch {sampler.batch_size} per rank "
        f"({total_batch_size} in total), multi-scale {multi_scale} until epoch {multi_scale_stop_epoch}, "
        f"MixUp with prob {mixup_prob} in epochs {list(mixup_epochs)}, {copy_blend or 'no CopyBlend'}."
    )
    mixup = MixUp(mixup_prob, mixup_epochs) if mixup_prob > 0 else None
    return TrainLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=BatchCollate(multi_scale, multi_scale_stop_epoch, mixup, seed=sampler.seed, copy_blend=copy_blend),
        worker_init_fn=worker_init_reset_seed,
        # Its own generator for the workers' base seed: creating the iterator (at a resumed
        # iteration too) then draws nothing from the trainer process's global torch RNG.
        generator=torch.Generator().manual_seed(sampler.seed),
        drop_last=True,
    )


def build_test_loader(
    dataset: Union[str, Sequence[str], List[Dict]], mapper: Callable[[Dict], Dict], num_workers: int = 2
) -> DataLoader:
    """Inference loader: batch size 1, each rank gets its shard (detectron2's InferenceSampler),
    images without annotations are kept. ``dataset``: registered name(s) or a list of dataset dicts
    (e.g. ``L(load_dataset_dicts)(names=...)`` in a config, as detectron2's own configs do)."""
    return build_detection_test_loader(_as_dataset_dicts(dataset), mapper=mapper, num_workers=num_workers)


def _as_dataset_dicts(dataset: Union[str, Sequence[str], List[Dict]]) -> List[Dict]:
    """Registered data set name(s) loaded with checks, or a list of dataset dicts as it is."""
    if isinstance(dataset, str) or (len(dataset) > 0 and all(isinstance(d, str) for d in dataset)):
        return load_dataset_dicts(dataset)
    return dataset
