"""Chunked, resumable, sharded work: the checkpoint store and the process group a job runs in.

A job splits its examples into fixed chunks (``chunk_size`` examples; the boundaries depend on
nothing else, in particular not on the number of processes). Each finished chunk is written to
``chunks/{tag}-{index:05d}.safetensors`` with an atomic rename, so a killed job (``kill -9``
included) leaves only whole chunk files and a rerun computes exactly the missing ones. Identical
chunks in, identical bytes out: a resumed job's final files equal an uninterrupted one's.

Processes: under ``torchrun`` (``WORLD_SIZE > 1``) a ``torch.distributed`` group is started
(gloo on CPU, NCCL on CUDA); chunk ``i`` belongs to rank ``i % world``. After a phase every rank
receives every chunk (``all_gather_object`` of safetensors bytes: tensors never travel as
pickles), and rank 0 writes the ones its disk lacks, so it ends with the same files as a
one-process run whether or not the ranks share a filesystem.

Fault injection for the tests: with ``SYCOINTERP_CRASH_AFTER_CHUNKS=N`` in the environment the
process sends itself SIGKILL right after writing its N-th chunk (a real ``kill -9`` at a
reproducible point); with ``SYCOINTERP_FAULT_AT_CHUNK=N:ENOSPC`` (or ``EROFS``, ``EACCES``, any
``errno`` name) writing its N-th chunk fails with that error, as a full disk or a directory turned
read-only would.
"""

import errno
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load, save

from sycointerp._config import ConfigError
from sycointerp._io import atomic_write
from sycointerp.errors import UserError

__all__ = ["Chunk", "ChunkMismatch", "ChunkStore", "Group", "process_group", "chunk_ranges"]

log = logging.getLogger("sycointerp.patch")
CRASH_ENV = "SYCOINTERP_CRASH_AFTER_CHUNKS"
FAULT_ENV = "SYCOINTERP_FAULT_AT_CHUNK"


class ChunkMismatch(UserError):
    """A saved chunk was computed from other inputs (changed data file, model or ranking)."""


@dataclass(frozen=True)
class Chunk:
    """One chunk's tensors and JSON-serializable metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def to_bytes(self) -> bytes:
        """The chunk as safetensors bytes (``meta`` as JSON in the header): no pickle."""
        return save(
            {k: v.contiguous() for k, v in self.tensors.items()},
            metadata={"meta": json.dumps(self.meta)},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "Chunk":
        """Inverse of :meth:`to_bytes`.

        Raises:
            Exception: the bytes are not a chunk (truncated, edited); the store recomputes such
                chunks.
        """
        # safetensors layout: an 8-byte little-endian header length, then the JSON header.
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["meta"])
        return cls(load(data), meta)


def chunk_ranges(n: int, size: int) -> list[range]:
    """``[0, n)`` in consecutive ranges of ``size`` (the last may be shorter)."""
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


@dataclass(frozen=True)
class Group:
    """This process's place in the job: ``rank`` of ``world`` (1 without torchrun);
    ``local_rank`` of ``local_world`` on this node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that writes)."""
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether chunk ``index`` is this rank's to compute (``index mod world == rank``)."""
        return index % self.world == self.rank

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank arrives (nothing with one process)."""
        if self.world > 1:
            dist.barrier()


@contextmanager
def process_group(device: str) -> Iterator[Group]:
    """The torchrun process group (started and torn down here), or a one-process group.

    Under NCCL each rank first selects its local GPU: the object collectives stage their buffers on
    the current device, which would otherwise be ``cuda:0`` on every rank.

    Raises:
        ConfigError: a CUDA job under torchrun without CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Group()
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' under torchrun but CUDA is not available; use --device cpu"
            )
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        yield Group(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size()))),
        )
    finally:
        dist.destroy_process_group()


class ChunkStore:
    """The ``chunks/`` folder of a job: atomic chunk files, resumption and gathering."""

    def __init__(self, directory: Path, group: Group) -> None:
        self.dir = directory
        self.group = group
        self.written = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        if group.is_main:  # temp files of writes a kill interrupted; one rank, before anyone writes
            for stale in self.dir.glob(".*"):
                stale.unlink(missing_ok=True)
        group.barrier()

    def path(self, tag: str, index: int) -> Path:
        """The file of chunk ``index`` of phase ``tag``."""
        return self.dir / f"{tag}-{index:05d}.safetensors"

    def _write(self, tag: str, index: int, data: bytes) -> None:
        self._inject_fault()
        atomic_write(self.path(tag, index), lambda p: Path(p).write_bytes(data))

    def _inject_fault(self) -> None:
        fault = os.environ.get(FAULT_ENV)
        if fault:
            at, name = fault.split(":")
            if self.written + 1 == int(at):
                code = getattr(errno, name)
                raise OSError(code, os.strerror(code), str(self.dir))

    def run(
        self,
        tag: str,
        n_chunks: int,
        compute: Callable[[int], Chunk],
        progress: Callable[[Sequence[int]], Sequence[int]] = lambda todo: todo,
        inputs: Callable[[int], str] = lambda i: "",
    ) -> list[Chunk]:
        """Every chunk of a phase, in order, on every rank; computes only this rank's missing ones.

        A collective: every rank must call it, in the same order of phases.

        Args:
            tag: the phase's name (chunk file prefix).
            n_chunks: chunks in the phase.
            compute: chunk index -> its result.
            progress: wraps the list of chunks to compute (e.g. a tqdm bar).
            inputs: chunk index -> a fingerprint of what it is computed from; stored in the chunk
                and compared when a saved chunk is reused.

        Raises:
            ChunkMismatch: a saved chunk's fingerprint differs from ``inputs(i)``.
        """
        mine = [i for i in range(n_chunks) if self.group.owns(i)]
        todo = [i for i in mine if not self._intact(self.path(tag, i))]
        if len(todo) < len(mine):
            log.info(
                "%s: %d of %d chunks already done, resuming", tag, len(mine) - len(todo), len(mine)
            )
        for i in progress(todo):
            chunk = compute(i)
            chunk.meta["inputs"] = inputs(i)
            self._write(tag, i, chunk.to_bytes())
            self._after_write()
        local = {i: self.path(tag, i).read_bytes() for i in mine}
        every: dict[int, bytes] = {}
        for part in self.group.all_gather(local):
            every.update(part)
        chunks = [Chunk.from_bytes(every[i]) for i in range(n_chunks)]
        stale = [i for i, ch in enumerate(chunks) if ch.meta.get("inputs", "") != inputs(i)]
        if stale:
            raise ChunkMismatch(
                f"{self.path(tag, stale[0])} was computed from other inputs (the data file, model "
                "or ranking changed since, or an older sycointerp wrote it); pass --overwrite to "
                "start the job again"
            )
        if self.group.is_main:
            for i, data in every.items():
                if not self.path(tag, i).is_file():
                    self._write(tag, i, data)
        return chunks

    def _intact(self, path: Path) -> bool:
        """Whether a saved chunk exists and reads back whole; a damaged one (truncated, edited,
        not UTF-8) is removed and recomputed, saying so. Writes are atomic, so only something
        outside the job can damage a chunk."""
        if not path.is_file():
            return False
        try:
            Chunk.from_bytes(path.read_bytes())
        except Exception as err:  # noqa: BLE001 - any unreadable chunk is recomputed the same way
            log.warning("%s is damaged (%s); recomputing that chunk", path, type(err).__name__)
            path.unlink(missing_ok=True)
            return False
        return True

    def _after_write(self) -> None:
        self.written += 1
        crash_after = os.environ.get(CRASH_ENV)
        if crash_after and self.written >= int(crash_after):
            os.kill(os.getpid(), signal.SIGKILL)
