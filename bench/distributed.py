"""One run on several devices: the process group, ranks, batch shards and rank-0 writes.

    torchrun --nproc-per-node N -m bench.run trainer.batch_size=16 ...   # one run, N processes

A process that torchrun started (its environment names RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address) joins one process group: `gloo` on the CPU, `nccl` for CUDA tensors
(`cpu:gloo,cuda:nccl` where CUDA exists), each rank on `cuda:LOCAL_RANK`. A plain process has no
group: `current()` is `SINGLE`, whose methods are the identity, and nothing changes.

The design, in the order a step meets it:

- **The batch.** `trainer.batch_size` is the global batch. Every rank draws the same global batch
  (`bench.data.corpus.get_batch`, a pure function of (seed, step)) and trains on its slice of
  B / N windows (`shard`). Its mean loss is weighted by its share of the global batch's counted
  tokens (1.0 when no token is left out of the loss, as with the built-in corpora), so the
  average over ranks is the global batch's mean loss: an N-process run is the 1-process run
  with the same global batch, to float rounding (one sum taken in another order).
- **The gradients.** The model is wrapped in DistributedDataParallel, which all-reduces (averages)
  every gradient during the backward pass, before the optimizer step. That covers every
  optimizer without a special case: `geoopt.ManifoldParameter` is a `torch.nn.Parameter`
  subclass, and DDP's reducer averages its gradient like any other's (tests/bench/
  test_distributed.py checks the Riemannian runs). Every rank then holds the same gradient and
  the same weights and optimizer state, so the Riemannian optimizers (their retractions and
  transports), BaLoRA's projection after the step and Muon's Newton-Schulz iteration compute the
  same numbers on every rank: the ranks stay bitwise equal with no broadcast after DDP's initial
  one. Nothing is sharded but the batch (FSDP2, for models larger than one device, is not wired:
  docs/design.md §2 says which optimizers could run on sharded parameters).
- **Decisions.** What a rank decides from numbers uses numbers every rank holds identically: the
  all-reduced training loss (`average`), the evaluations (every rank evaluates the whole
  evaluation batches with its identical weights), the weights' norms. What is decided from the
  run folder (whether this launch runs the run at all, whether its record lost rows) is rank 0's
  decision, broadcast (`agree`), so no rank trains alone into a collective the others never join.
- **Writes.** Rank 0 alone writes: the run record, checkpoints, the W&B mirror, the summary, the
  launch log. The other ranks get `writer(record)`, a record that writes nothing, and a disabled
  W&B logger. Every rank reads the checkpoint it resumes from (a shared file system, as on a
  multi-node cluster, or one node). The summary's tokens/s are the global batch's; its peak
  memory is rank 0's device's.
- **Resume with another N.** The checkpoint holds the unwrapped model's state, the optimizer's
  (replicated: the same on every rank), the adapter's and the RNG states; the global batch of a
  step does not depend on N. So a run stopped under N processes resumes under any M that divides
  `trainer.batch_size` (1 included) and continues the same run, to float rounding. The run id
  does not depend on N (`meta.world_size` states the last launch's).

Not covered: dropout (0 in every config here) draws the same masks on every rank (one seeded
generator, replicated), on different windows, so with dropout > 0 an N-process run is another
draw than the 1-process run, not the same numbers.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bench.data.corpus import IGNORE_INDEX
from bench.errors import ConfigError
from bench.record import RunRecord

# torchrun's environment (torch.distributed.run): a process it started sets all of these
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer fails the run


def requested() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_world_size() -> int:
    """The ranks on this machine (they divide its cores between them): 1 for a plain process."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if requested() else 1


@dataclass(frozen=True)
class Group:
    """This process's place in the run: its rank among `world_size`, and the collectives the
    training loop needs. `SINGLE` (one process) makes every method the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def check(self, cfg) -> None:
        """ConfigError in one line for what a run on several processes cannot do."""
        if self.world_size == 1:
            return
        if cfg.task != "lm":
            raise ConfigError(f"task={cfg.task} runs in one process; allowed under torchrun: "
                              "task=lm")
        if cfg.trainer.batch_size % self.world_size:
            raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} (the global batch) "
                              f"must be a multiple of the {self.world_size} processes; allowed "
                              f"values: multiples of {self.world_size}")

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK under several processes, else `device`."""
        if device.type != "cuda" or self.world_size == 1:
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: DDP around `model` (the same parameters, so the
        optimizer, the adapter and the checkpoint keep using `model`), or `model` itself."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        on_cuda = next(model.parameters()).device.type == "cuda"
        # no buffer is trained (causal masks, rotary tables): they need no syncing per forward
        return DistributedDataParallel(model, device_ids=[self.local_rank] if on_cuda else None,
                                       forward_sync_buffers=False)

    def shard(self, x: torch.Tensor, y: torch.Tensor):
        """(x, y, weight): this rank's rows of the global batch, and the factor its mean loss is
        multiplied by so that the ranks' average is the global batch's mean loss: the rank's
        share of the counted tokens (targets other than IGNORE_INDEX) times N."""
        if self.world_size == 1:
            return x, y, 1.0
        rows = x.shape[0] // self.world_size
        part = slice(self.rank * rows, (self.rank + 1) * rows)
        counted = y != IGNORE_INDEX
        total = int(counted.sum())
        weight = int(counted[part].sum()) * self.world_size / total if total else 1.0
        return x[part], y[part], weight

    @staticmethod
    def weighted(loss: torch.Tensor, weight: float) -> torch.Tensor:
        """The rank's loss times its weight; a shard without counted tokens (a mean over
        nothing: NaN) contributes zero loss and zero gradients."""
        if weight == 1.0:
            return loss
        if weight == 0.0:
            return loss.nan_to_num(0.0) * 0.0
        return loss * weight

    def average(self, value: torch.Tensor) -> float:
        """The mean of a scalar over the ranks, the same float on every rank."""
        if self.world_size == 1:
            return value.item()
        value = value.detach().float().clone()
        dist.all_reduce(value)
        return (value / self.world_size).item()

    def agree(self, decision):
        """Rank 0's `decision` (any picklable value) on every rank: for what is decided from the
        run folder, which only rank 0 writes."""
        if self.world_size == 1:
            return decision
        box = [decision if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def decide(self, read):
        """`read()` on rank 0, its value on every rank: what rank 0 reads from the run folder."""
        return self.agree(read() if self.is_main else None)

    def writer(self, record: RunRecord) -> RunRecord:
        """The record this rank writes through: rank 0's own, a silent one for the others."""
        return record if self.is_main else SilentRecord(record.dir)


class SilentRecord(RunRecord):
    """The run record of a rank other than 0: it writes nothing and reads no rows (rank 0 keeps
    them: its decisions about them are broadcast), so one record is written per run."""

    def create(self, config) -> None:
        pass

    def log(self, row) -> None:
        pass

    def read_metrics(self) -> list[dict]:
        return []

    def keep_rows_until(self, step: int) -> list[dict]:
        return []

    def write_summary(self, summary) -> None:
        pass


SINGLE = Group()
_current = SINGLE


def current() -> Group:
    """This process's group: the one `init` joined, else SINGLE."""
    return _current


def init() -> Group:
    """Join torchrun's process group once per process (later calls return it); SINGLE for a
    process torchrun did not start as one of several ranks."""
    global _current
    if _current is not SINGLE or not requested():
        return _current
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                          "unset: start several processes with torchrun --nproc-per-node N")
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:  # collectives on CUDA tensors go through this rank's GPU
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    _current = Group(dist.get_rank(), dist.get_world_size(), local_rank)
    return _current
