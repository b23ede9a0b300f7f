"""Starting the processes of a training or evaluation run: one process, several on one machine,
several machines, or the processes that ``torchrun`` (or a cluster's scheduler) has started.

:func:`launch` takes detectron2's arguments (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url`` of ``default_argument_parser``) and differs from
``detectron2.engine.launch`` in three ways:

* Without CUDA, ``--num-gpus N`` starts N processes that talk through the gloo backend, on
  detectron2 0.6 as on main (0.6's ``launch`` asserts that CUDA is available). With CUDA nothing
  changes: NCCL, one process per GPU, each on the GPU of its local rank.
* Under ``torchrun`` (the variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
  ``MASTER_ADDR`` and ``MASTER_PORT`` are set), the process joins the run that torchrun describes
  instead of starting processes of its own.
* A machine that runs a single process runs it in the launching process (nothing to spawn).

In every case detectron2's ``comm`` works as under its own ``launch``: the world and the local
(per-machine) process groups are set up, so ``comm.get_rank()``, ``comm.get_local_rank()`` and
``comm.get_local_size()`` are right.
"""
import logging
import os
import socket
from datetime import timedelta
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = ["ProcessPlace", "launch", "default_backend", "free_port", "torchrun_place", "describe_processes"]

logger = logging.getLogger(__name__)

# What torchrun sets for each process it starts (the environment of torch's "env://" rendezvous).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class ProcessPlace(NamedTuple):
    """Where a process stands in a run: its global ``rank`` among ``world_size`` processes, and its
    ``local_rank`` among the ``local_world_size`` processes of its machine."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def default_backend() -> str:
    """The torch.distributed backend: NCCL when CUDA is available (one process per GPU), else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    """A TCP port that is free on this machine now (the system picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def torchrun_place() -> Optional[ProcessPlace]:
    """This process's place from the variables that torchrun sets, or ``None`` when ``RANK`` is not
    set (the process was not started by torchrun or a scheduler that sets them).

    Raises:
        RuntimeError: ``RANK`` is set but another of :data:`TORCHRUN_VARIABLES` is not.
    """
    if "RANK" not in os.environ:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"RANK is set, so this process is taken to be one of a torchrun-style run, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: set all of {', '.join(TORCHRUN_VARIABLES)} "
            "(torchrun does), or unset RANK to start the processes with --num-gpus / --num-machines.")
    return ProcessPlace(*(int(os.environ[name]) for name in TORCHRUN_VARIABLES[:4]))


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in every process of the run (call it on every machine).

    Args:
        main_func: what each process runs (picklable when processes are spawned).
        num_gpus_per_machine: processes per machine: one per GPU with CUDA, else CPU processes.
        num_machines: number of machines; ``machine_rank``: this machine's, from 0.
        dist_url: where the processes meet, e.g. ``tcp://10.0.0.1:29500`` (an address of machine 0
            and a free port), or ``auto`` for a free port on this machine (one machine only).
        args: the arguments of ``main_func``.
        timeout: how long a collective operation may wait for the other processes.

    Under torchrun the arguments that describe processes are not used (a warning says so when
    they ask for more than one process): torchrun has started the processes already.
    """
    backend = default_backend()
    place = torchrun_place()
    if place is not None:
        if num_gpus_per_machine * num_machines > 1:
            logger.warning(
                "Started by torchrun (world size %d): --num-gpus %d and --num-machines %d are not used.",
                place.world_size, num_gpus_per_machine, num_machines)
        _run_in_process_group(main_func, args, backend, "env://", place, timeout)
        return

    world_size = num_gpus_per_machine * num_machines
    if world_size == 1:
        main_func(*args)
        return
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"--machine-rank {machine_rank} must be in [0, --num-machines {num_machines}).")
    if backend == "nccl" and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(f"--num-gpus {num_gpus_per_machine} but this machine has {torch.cuda.device_count()} GPU(s).")
    if dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--dist-url auto is a port on this machine; several machines need machine 0's address.")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    if num_gpus_per_machine == 1:
        place = ProcessPlace(machine_rank, world_size, 0, 1)
        _run_in_process_group(main_func, args, backend, dist_url, place, timeout)
        return
    mp.start_processes(
        _spawned_process,
        nprocs=num_gpus_per_machine,
        args=(main_func, args, backend, dist_url, machine_rank, num_gpus_per_machine, world_size, timeout),
        daemon=False,
        start_method="spawn",
    )


def _spawned_process(local_rank, main_func, args, backend, dist_url, machine_rank, local_world_size, world_size,
                     timeout):
    """Entry point of each process that :func:`launch` spawns on a machine."""
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        # The processes share the machine's cores (torchrun sets OMP_NUM_THREADS for the same reason).
        torch.set_num_threads(max(1, torch.get_num_threads() // local_world_size))
    place = ProcessPlace(machine_rank * local_world_size + local_rank, world_size, local_rank, local_world_size)
    _run_in_process_group(main_func, args, backend, dist_url, place, timeout)


def _run_in_process_group(main_func, args, backend: str, init_method: str, place: ProcessPlace, timeout) -> None:
    """Join the process group at ``init_method`` as ``place``, set up detectron2's local process
    group, run ``main_func(*args)``, and leave the group."""
    if backend == "nccl":
        torch.cuda.set_device(place.local_rank)
    try:
        dist.init_process_group(
            backend, init_method=init_method, rank=place.rank, world_size=place.world_size, timeout=timeout)
    except Exception:
        logger.error("Could not join the process group at %s as rank %d of %d.", init_method, place.rank,
                     place.world_size)
        raise
    try:
        _create_local_process_group(place.local_world_size)
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _create_local_process_group(local_world_size: int) -> None:
    """Set up the process group of this machine's processes, which ``comm.get_local_rank()`` and
    ``comm.get_local_size()`` read. The ranks of a machine are consecutive (as detectron2's launch
    and torchrun number them). Every process must call it: creating a group is collective."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 main
        comm.create_local_process_group(local_world_size)
        return
    # detectron2 0.6 has no function for it; its comm reads the group from _LOCAL_PROCESS_GROUP.
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size % local_world_size != 0:
        raise ValueError(f"World size {world_size} is not a multiple of {local_world_size} processes per machine.")
    for machine in range(world_size // local_world_size):
        group = dist.new_group(list(range(machine * local_world_size, (machine + 1) * local_world_size)))
        if machine == rank // local_world_size:
            comm._LOCAL_PROCESS_GROUP = group


def describe_processes() -> str:
    """One line on how this process runs: the backend, the world size, its place (and process id, to
    find the process of a rank), its threads."""
    threads = f"{torch.get_num_threads()} intra-op thread(s)"
    if not (dist.is_available() and dist.is_initialized()):
        return f"One process (no torch.distributed), {threads}."
    return (f"torch.distributed with backend {dist.get_backend()}: world size {comm.get_world_size()}, "
            f"this process (pid {os.getpid()}) is rank {comm.get_rank()}, local rank {comm.get_local_rank()} "
            f"of {comm.get_local_size()} on its machine, {threads}.")
