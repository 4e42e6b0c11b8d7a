"""Data-parallel runs under ``torchrun``: split items over processes, save finished chunks, merge on rank 0.

Why a module of its own: predict, ``evaluate model`` and the FiftyOne bridge all split a list of
images the same way, and a killed run must resume the same way for each. Launched by ``torchrun``
(``WORLD_SIZE`` in the environment), each process joins a gloo process group (it only coordinates:
lists, a status exchange, the gathered records; the networks never talk, so gloo serves on GPUs too),
takes every ``world``-th pending chunk of items and saves each finished chunk's records in a work
folder; rank 0 gets every record back in item order. Without ``torchrun`` the same functions run in
the one process, with no process group and no work folder: exactly what a plain run always did.

The work folder holds ``manifest.json`` (a fingerprint of the inputs: images, weights, config,
options) and ``chunk-NNNNNN.json`` per finished chunk. A re-run with the same manifest skips the
finished chunks (with any number of processes); a different manifest is refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["Group", "ParallelError", "device_for", "init", "is_main_process", "remove_work", "run_items",
           "weights_fingerprint"]

MANIFEST = "manifest.json"
MAX_CHUNK = 32
# ranks wait for the slowest one at the end; a rank that dies is caught by torchrun, which stops the others
TIMEOUT = timedelta(hours=24)
# test hook: a process exits abruptly (as if killed) after saving this many chunks
STOP_AFTER_ENV = "M2F_PARALLEL_STOP_AFTER_CHUNKS"


class ParallelError(RuntimeError):
    """A rank failed (its message is in the error), or the work folder belongs to another run."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run: ``launched`` when started by torchrun (then a work folder is kept)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def share(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` run on rank 0 only, its value on every rank; its exception is raised on rank 0 as it is
        and as a ``ParallelError`` elsewhere (so that no rank waits for a value that will never come)."""
        if self.world_size == 1:
            return compute()
        value, error = None, None
        if self.is_main:
            try:
                value = compute()
            except Exception as e:
                error = e
        value, message = self.broadcast((value, None if error is None else str(error)))
        if error is not None:
            raise error
        if message is not None:
            raise ParallelError(message)
        return value

    def each(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` on every rank (loading the weights...), failing on all ranks if it fails on one: rank 0
        raises its own exception, or a ``ParallelError`` naming the first rank that failed; the others raise
        a ``ParallelError`` (``report_error`` keeps them silent), so a shared mistake is printed once."""
        if self.world_size == 1:
            return compute()
        value, error = None, None
        try:
            value = compute()
        except Exception as e:
            error = e
        failed = [(r, m) for r, m in enumerate(self.all_gather(None if error is None else str(error))) if m]
        if failed:
            if self.is_main and error is not None:
                raise error
            rank, message = failed[0]
            raise ParallelError(f"rank {rank}: {message}")
        return value

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0; None elsewhere."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a torchrun run (read from the environment: no group needed)."""
    return int(os.environ.get("RANK", "0")) == 0


def init() -> Group:
    """Join the process group torchrun describes (gloo); a single-process ``Group`` without torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return Group()
    world = int(os.environ["WORLD_SIZE"])
    group = Group(rank=int(os.environ.get("RANK", "0")), world_size=world,
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")), launched=True)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=TIMEOUT)
    return group


def close() -> None:
    """Leave the process group (if one was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(group: Group, device: str | None) -> str | None:
    """One GPU per process: ``cuda`` (or the default on a CUDA machine) becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if not group.launched:
        return device
    import torch

    if device in (None, "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(group.local_rank)
        return f"cuda:{group.local_rank}"
    return device


def fingerprint(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def weights_fingerprint(weights: str | Path | None) -> Any:
    """What identifies the weights: name, size and modification time of each file of a local source,
    else the name (a hub id, the built-in model). Cheap: the weights are never read for it."""
    if weights is None:
        return "builtin"
    path = Path(weights).expanduser()
    if not path.exists():
        return str(weights)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [str(path.resolve())] + [[str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size,
                                     p.stat().st_mtime_ns] for p in files]


def default_chunk_size(n: int, world_size: int) -> int:
    """About four chunks per process (load balance), at most ``MAX_CHUNK`` items (little lost to a kill)."""
    return max(1, min(MAX_CHUNK, math.ceil(n / (4 * world_size))))


def _chunk_path(work: Path, index: int) -> Path:
    return work / f"chunk-{index:06d}.json"


def _open_work(work: Path, manifest: dict[str, Any], n: int, world_size: int) -> tuple[int, list[int]]:
    """(chunk size, finished chunks) of the work folder, created for ``manifest`` when new; refuses another run's."""
    from .atomic import atomic_write_json, remove_stale_temporaries

    manifest = json.loads(json.dumps(manifest, default=str))  # as it reads back (tuples become lists)
    record = {"fingerprint": fingerprint(manifest), "items": n, "manifest": manifest}
    path = work / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ParallelError(f"{path}: unreadable ({e}); remove {work} to start again") from None
        if old.get("fingerprint") != record["fingerprint"] or old.get("items") != n:
            changed = sorted(k for k in set(manifest) | set(old.get("manifest", {}))
                             if manifest.get(k) != old.get("manifest", {}).get(k))
            raise ParallelError(f"{work} holds an unfinished run with other inputs (differs in: "
                                f"{', '.join(changed) or 'items'}); run with the same inputs to resume it, or "
                                f"remove {work} to start again")
        remove_stale_temporaries(work)
        chunk = int(old["chunk_size"])
        done = [i for i in range(math.ceil(n / chunk)) if _chunk_path(work, i).is_file()]
        return chunk, done
    work.mkdir(parents=True, exist_ok=True)
    record["chunk_size"] = default_chunk_size(n, world_size)
    atomic_write_json(path, record)
    return record["chunk_size"], []


def _prepare(group: Group, work: Path | None, manifest: dict[str, Any], n: int) -> tuple[int, list[int]]:
    """Rank 0 opens the work folder; every rank gets (chunk size, finished chunks) or the same error."""
    answer: tuple[str, Any]
    if not group.is_main:
        answer = ("", None)
    elif work is None:
        answer = ("ok", (default_chunk_size(n, group.world_size), []))
    else:
        try:
            answer = ("ok", _open_work(work, manifest, n, group.world_size))
        except (ParallelError, OSError) as e:
            answer = ("error", str(e))
    status, value = group.broadcast(answer)
    if status != "ok":
        raise ParallelError(value)
    return value


def _bar(group: Group, total: int, desc: str, progress: bool):
    from tqdm import tqdm

    label = desc if group.world_size == 1 else f"{desc} (rank 0 of {group.world_size})"
    return tqdm(total=total, desc=label, unit="img", disable=not (progress and group.is_main))


def run_items(group: Group, n: int, process: Callable[[int], Any], work: Path | None = None,
              manifest: dict[str, Any] | None = None, desc: str = "predict",
              progress: bool = True) -> Iterator[Any] | None:
    """``process(i)`` for every item ``i < n`` split over the group; the JSON-able records in item order on
    rank 0 (None on the other ranks), as an iterator.

    With a ``work`` folder every finished chunk is saved there and skipped by a re-run of the same
    ``manifest``; rank 0 then reads the records from there, one chunk at a time (no rank keeps them in
    memory). Without one they come to rank 0 over the process group. In a group, a rank's exception is
    reported to all: every rank raises ``ParallelError("rank R: ...")`` once all have stopped; alone, it
    propagates as it is.
    """
    from .atomic import atomic_write_json

    chunk, done = _prepare(group, work, manifest or {}, n)
    chunks = [range(i * chunk, min(n, (i + 1) * chunk)) for i in range(math.ceil(n / chunk))]
    finished = set(done)
    mine = [i for i in range(len(chunks)) if i not in finished][group.rank::group.world_size]
    if group.is_main and done:
        print(f"resuming: {len(done)} of {len(chunks)} chunks done earlier in {work}", file=sys.stderr)
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0"))
    records: dict[int, list[Any]] = {}
    failure = None
    with _bar(group, sum(len(chunks[i]) for i in mine), desc, progress) as bar:
        try:
            for count, c in enumerate(mine, start=1):
                out = []
                for i in chunks[c]:
                    out.append(process(i))
                    bar.update(1)
                if work is None:
                    records[c] = out
                else:
                    atomic_write_json(_chunk_path(work, c), out)
                if stop_after and count >= stop_after:
                    os._exit(3)  # the test hook: as if killed here
        except Exception as e:
            if group.world_size == 1 and not group.launched:
                raise
            failure = f"rank {group.rank}: {' '.join(str(e).split()) or type(e).__name__}"
    failures = [f for f in group.all_gather(failure) if f]
    if failures:
        raise ParallelError("; ".join(failures))
    if work is not None:
        return (r for c in range(len(chunks)) for r in _read_chunk(_chunk_path(work, c))) if group.is_main else None
    gathered = group.gather(records)
    if gathered is None:
        return None
    for part in gathered:
        records.update(part)
    return (r for c in range(len(chunks)) for r in records[c])


def _read_chunk(path: Path) -> list[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ParallelError(f"{path}: unreadable ({e}); remove {path.parent} to start again") from None


def remove_work(group: Group, work: Path | None) -> None:
    """Rank 0 deletes the work folder once the merged outputs are written."""
    if group.is_main and work is not None and work.exists():
        shutil.rmtree(work, ignore_errors=True)


def finish(group: Group, code: int, error: str | None = None) -> int:
    """Rank 0's exit code (and error) on every rank, so that the run ends alike everywhere."""
    code, error = group.broadcast((code, error))
    if error:
        raise ParallelError(error)
    return code


def report_error(error: BaseException) -> None:
    """Print ``error: ...`` once per run: rank 0 reports what all ranks share (a ``ParallelError``), every rank its
    own failure (prefixed with its rank, since no other rank knows of it)."""
    message = str(error)
    if is_main_process():
        print(f"error: {message}", file=sys.stderr)
    elif not isinstance(error, ParallelError):
        print(f"error: rank {os.environ.get('RANK')}: {message}", file=sys.stderr)
