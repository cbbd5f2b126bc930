"""Data-parallel training: ``TrainConfig.workers`` processes train one model.
Each starts from the same seed, so from the same weights and the same shuffled
order; each takes its share of every global batch, and the gradients are
averaged over the processes (``torch.distributed``, gloo on CPU) before every
step, so every process holds the same weights after it. The global batch and
the learning rate are the single-process recipe's. The calling process is rank
0 (it validates, chooses the checkpoint and returns the model); the others are
started here and only train.

The others are processes on this machine, or tasks on the running Ray
(``RECSYS_ENGINE=ray``: with a cluster, other hosts); they reach rank 0 at its
address and a free port.
"""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

# What rank 0 decided at the end of an epoch, as sent to the others.
STOP_REASONS = (None, "patience", "time budget")


class Group:
    """This process's place among the training processes (``world`` 1: alone,
    every method a no-op)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @classmethod
    def join(cls, rank: int, world: int, address: str) -> Group:
        dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
        return cls(rank, world)

    def leave(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch's rows."""
        return rows[self.rank::self.world]

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for parameter in parameters:
            # a process without rows this step contributes zeros
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)
            parameter.grad /= self.world

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true in any process (every process calls it)."""
        if self.world == 1:
            return bool(flag)
        value = torch.tensor([int(bool(flag))])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def decision(self, stop: str | None) -> str | None:
        """Rank 0's ``stop`` (one of ``STOP_REASONS``) in every process."""
        if self.world == 1:
            return stop
        value = torch.tensor([STOP_REASONS.index(stop)])
        dist.broadcast(value, src=0)
        return STOP_REASONS[int(value.item())]


def free_address(host: str = "127.0.0.1") -> str:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return f"tcp://{host}:{probe.getsockname()[1]}"


def launch(world: int, target: Callable, args: tuple, on_ray: bool = False,
           threads: int = 1) -> tuple[Group, list]:
    """Ranks 1..world-1, each calling ``target(*args, group=its Group)``: new
    processes on this machine, or (``on_ray``) Ray tasks of ``threads`` CPUs on
    the running Ray, wherever it places them; this process joins as rank 0 and
    the others reach it at this node's address. Returns its Group and the
    others (``finish`` them)."""
    if on_ray:
        import ray

        address = free_address(ray.util.get_node_ip_address())
        task = ray.remote(num_cpus=threads, max_retries=0)(_helper)
        helpers = [task.remote(target, args, rank, world, address) for rank in range(1, world)]
    else:
        address = free_address()
        context = multiprocessing.get_context("spawn")  # no forked copy of torch's threads
        helpers = [context.Process(target=_helper, args=(target, args, rank, world, address),
                                   daemon=True, name=f"train-rank-{rank}")
                   for rank in range(1, world)]
        for helper in helpers:
            helper.start()
    try:
        return Group.join(0, world, address), helpers
    except Exception:
        finish(None, helpers, failed=True)
        raise


def finish(group: Group | None, helpers: list, failed: bool = False) -> None:
    """Leave the group and wait for the others (stopped, on a failure); a failure
    of one of them is raised here."""
    if group is not None:
        group.leave()
    if helpers and not isinstance(helpers[0], multiprocessing.process.BaseProcess):
        import ray

        if failed:
            for helper in helpers:
                ray.cancel(helper, force=True)
        else:
            ray.get(helpers)
        return
    for helper in helpers:
        if failed:
            helper.terminate()
        helper.join(timeout=60)
    codes = [helper.exitcode for helper in helpers]
    if not failed and any(code != 0 for code in codes):
        raise RuntimeError(f"a training process failed (exit codes {codes})")


def _helper(target: Callable, args: tuple, rank: int, world: int, address: str) -> None:
    group = Group.join(rank, world, address)
    try:
        target(*args, group=group)
    finally:
        group.leave()
