"""Adding rows to an index by streaming them, in one process or in several sharing the work.

One *job* adds one source's rows. Its files are written into a staging folder inside the index
(``.staging-<job>``), which no reader looks at, and become part of the index only when the job
commits: the new manifest is written atomically, so a process killed at any point leaves the previous
index intact (:mod:`dinofeat.search.index.commit`).

Under ``torchrun`` or any launcher that sets ``RANK`` / ``WORLD_SIZE`` (one machine or several sharing a
filesystem), rank 0 prepares the job (decides the method and, for a new index, trains the quantiser on
a sample of the whole source) and writes ``job.json``; every rank waits for it, then encodes a
contiguous share of the source's shards against that one quantiser into its own staged files and a
``done`` marker; the last rank to finish merges everything on disk and commits. No collective
communication is needed. A job interrupted and started again with the same inputs resumes: ranks
whose marker exists are not redone.

Peak memory: the training sample, one shard, and the codes of the rows encoded since the last staged
file (at most ``stage_memory`` bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from dinofeat.search.index.commit import collect_garbage, commit, current_manifest
from dinofeat.search.index.invlists import ivf_of, staged_name, write_staged
from dinofeat.search.index.legacy import read_legacy
from dinofeat.search.index.manifest import LEGACY_VERSION, MANIFEST, SHARDS, STORED, Method, manifest_version
from dinofeat.search.index.method import (
    QUANTIZER_FILE,
    REFINE_FILE,
    IndexOptions,
    choose_method,
    sample_size,
    train,
)
from dinofeat.search.index.rows import RowsWriter
from dinofeat.search.index.searcher import Searcher, read_faiss
from dinofeat.search.index.sources import ArraySource, Batch
from dinofeat.search.index.vectors import runs_of, save_where, where_name
from dinofeat.utils.atomic_write import write_text_atomically
from dinofeat.utils.errors import SetupError
from dinofeat.utils.locking import exclusive

STAGING = ".staging-"
JOB = "job.json"
DEFAULT_STAGE_MEMORY = 256 << 20
#: Seconds a rank waits for rank 0 to prepare the job (training a large index takes minutes).
WAIT_TIMEOUT = 6 * 3600.0
_POLL = 0.5
_ADD_ROWS = 16384


class Source(Protocol):
    dim: int

    def count(self) -> int: ...
    def identity(self) -> str: ...
    def share(self, rank: int, world: int) -> Source: ...
    def all_paths(self) -> pa.Array: ...
    def batches(self) -> Any: ...
    def shard_files(self) -> Any: ...


@dataclass(frozen=True)
class AddReport:
    """What one process did: rows it added, rows in the index, and whether the job is committed."""

    added: int
    total: int
    committed: bool


def launch_rank() -> tuple[int, int]:
    """(rank, world size) from ``RANK`` / ``WORLD_SIZE`` (default 0 and 1)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SetupError("RANK and WORLD_SIZE must be integers") from None
    if not 0 <= rank < world:
        raise SetupError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world


def add_rows(directory: str | os.PathLike[str], source: Source, *, model: str, kind: str,
             options: IndexOptions | None = None, rank: int | None = None, world: int | None = None,
             stage_memory: int = DEFAULT_STAGE_MEMORY, progress: bool = False) -> AddReport:
    """Add the rows of ``source`` not yet in the index in ``directory`` (created if absent).

    Rows whose path is already indexed are skipped. With ``world`` > 1 (default from the environment)
    this process does its share and the last one commits.

    Args:
        options: How a new index searches (ignored when extending one).
        stage_memory: Bytes of codes held in memory before they are written to a staged file.
    """
    folder = Path(directory)
    if rank is None or world is None:
        rank, world = launch_rank()
    job = folder / f"{STAGING}{_job_id(source, options, model, kind)}"
    if world == 1:
        with exclusive(folder):
            info = _prepare(folder, job, source, model, kind, options or IndexOptions())
            added = _encode_share(folder, job, info, source, 0, 1, stage_memory, progress)
            manifest = commit(folder, job, info, 1)
            return AddReport(added, manifest.count if manifest else 0, True)
    if rank == 0:
        with exclusive(folder):
            info = _prepare(folder, job, source, model, kind, options or IndexOptions(), train_now=False)
        info = _train_job(job, info, source)
    else:
        info = _wait_for_job(folder, job)
    added = _encode_share(folder, job, info, source, rank, world, stage_memory, progress)
    with exclusive(folder):
        if not all((job / _done_name(r)).is_file() for r in range(world)):
            manifest = current_manifest(folder)
            return AddReport(added, manifest.count if manifest else 0, False)
        manifest = commit(folder, job, info, world)
    return AddReport(added, manifest.count if manifest else 0, True)


def _job_id(source: Source, options: IndexOptions | None, model: str, kind: str) -> str:
    what = [source.identity(), asdict(options) if options else None, model, kind]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]


def _done_name(rank: int) -> str:
    return f"done-{rank:05d}.json"


def _read_job(job: Path) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads((job / JOB).read_text())
        return info
    except (OSError, ValueError):
        return None


def _prepare(folder: Path, job: Path, source: Source, model: str, kind: str, options: IndexOptions,
             train_now: bool = True) -> dict[str, Any]:
    """Under the index's lock: check the index fits, decide the method, start (or resume) the job."""
    if manifest_version(folder) == LEGACY_VERSION:
        convert_legacy(folder)
    manifest = current_manifest(folder, model=model, kind=kind, dim=source.dim)
    generation = manifest.generation if manifest else 0
    info = _read_job(job)
    if info is not None and info["generation"] == generation:
        return info  # resume: same inputs, nothing committed since
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    method = manifest.method if manifest else choose_method(source.count(), source.dim, options)
    info = {"generation": generation, "base": manifest.count if manifest else 0, "method": asdict(method),
            "new": manifest is None, "model": model, "kind": kind, "dim": source.dim, "seed": options.seed}
    return _train_job(job, info, source) if train_now else info


def _train_job(job: Path, info: dict[str, Any], source: Source) -> dict[str, Any]:
    """Train a new compressed index on a sample of the whole source, then publish ``job.json``."""
    method = Method(**info["method"])
    if info["new"] and not method.exact and not (job / JOB).is_file():
        sample = draw_sample(source, sample_size(method, source.count(), source.dim), info["seed"])
        train(method, sample, job, info["seed"])
    write_text_atomically(job / JOB, json.dumps(info))
    return info


def convert_legacy(folder: Path) -> None:
    """Rewrite the version-1 index in ``folder`` in the current format (caller holds the index's lock).

    The new index is built beside (in a staging folder), its files moved in, and its manifest replaces
    the old one in one rename; the old files are deleted after.
    """
    legacy = read_legacy(folder)
    staging = folder / f"{STAGING}legacy"
    shutil.rmtree(staging, ignore_errors=True)
    add_rows(staging / "index", ArraySource(legacy.files, legacy.features), model=legacy.model,
             kind=legacy.kind, rank=0, world=1)
    built = staging / "index"
    for path in built.iterdir():
        if path.is_file() and path.name != MANIFEST:
            path.replace(folder / path.name)
    (built / MANIFEST).replace(folder / MANIFEST)
    manifest = current_manifest(folder)
    assert manifest is not None
    collect_garbage(folder, manifest)


def _wait_for_job(folder: Path, job: Path) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while time.monotonic() < deadline:
        info = _read_job(job)
        manifest = current_manifest(folder)
        if info is not None and info["generation"] == (manifest.generation if manifest else 0):
            return info
        time.sleep(_POLL)
    raise SetupError(f"rank 0 did not prepare {job / JOB} within {WAIT_TIMEOUT:.0f} s; did it fail?")


def draw_sample(source: Source, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn uniformly (without replacement) from the whole source, in one pass."""
    count = source.count()
    chosen = np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))
    sample = np.empty((len(chosen), source.dim), np.float32)
    start = 0
    for batch in source.batches():
        stop = start + len(batch.paths)
        lo, hi = np.searchsorted(chosen, [start, stop])
        sample[lo:hi] = batch.features[chosen[lo:hi] - start]
        start = stop
        del batch  # before the next shard is read
    return sample


def _present(folder: Path, source: Source) -> pa.Array:
    """The paths of ``source`` that the index already holds."""
    manifest = current_manifest(folder)
    if manifest is None or not manifest.count:
        return pa.array([], pa.string())
    wanted = source.all_paths()
    searcher = Searcher(folder, manifest)
    hits = np.concatenate([part.rows.find(wanted) for part in searcher.parts])
    return pc.take(wanted, pa.array(np.unique(hits), pa.int64()))


def _new_rows(paths: Sequence[str] | pa.Array, present: pa.Array) -> np.ndarray:
    """Mask of the ``paths`` not in ``present``."""
    if not len(present):
        return np.ones(len(paths), bool)
    known = pc.is_in(pa.array(paths, pa.string()) if isinstance(paths, list) else paths, value_set=present)
    mask: np.ndarray = ~known.to_numpy(zero_copy_only=False)
    return mask


def _encode_share(folder: Path, job: Path, info: dict[str, Any], source: Source, rank: int, world: int,
                  stage_memory: int, progress: bool) -> int:
    """Encode this rank's share of the rows into staged files, then write its done marker; returns the
    rows it added.

    Rows are numbered in source order: this rank's first row follows the new rows of the shares
    before it (all of their rows for a new index; otherwise counted by checking their paths), so the
    ranks' staged lists merge into ascending global ids without renumbering.
    """
    done = job / _done_name(rank)
    if done.is_file():
        return int(json.loads(done.read_text())["count"])
    prefix = f"rank{rank:05d}"
    for stale in job.glob(f"*{prefix}*"):
        stale.unlink()
    present = _present(folder, source)
    before = sum(source.share(r, world).count() if not len(present) else
                 int(_new_rows(source.share(r, world).all_paths(), present).sum()) for r in range(rank))
    share = source.share(rank, world)
    encoder = _Encoder(job, prefix, Method(**info["method"]), job if info["new"] else folder,
                       info["base"] + before, share, stage_memory)
    bar = tqdm(total=share.count(), unit="row", desc=f"index (rank {rank})", disable=not progress,
               dynamic_ncols=True)
    with bar:
        for batch in share.batches():
            encoder.add(batch, _new_rows(batch.paths, present))
            bar.update(len(batch.paths))
            del batch  # before the next shard is read
    marker = encoder.finish()
    write_text_atomically(done, json.dumps(marker))
    return int(marker["count"])


class _Encoder:
    """One rank's staged output: rows (paths, codes or shard runs) and inverted lists in staged files."""

    def __init__(self, job: Path, prefix: str, method: Method, trained: Path, base: int, source: Source,
                 stage_memory: int) -> None:
        self.job, self.prefix, self.method, self.base = job, prefix, method, base
        self.quantizer = None if method.exact else read_faiss(trained / QUANTIZER_FILE)
        self.shards = None if method.exact else source.shard_files()
        self.codec = read_faiss(trained / REFINE_FILE) if not method.exact and self.shards is None else None
        self.rows = RowsWriter(job, prefix, codes=self.shards is None)
        self.folder = getattr(source, "folder", None)
        entry = 8 + (int(ivf_of(self.quantizer).code_size) if self.quantizer is not None else 0)
        self.flush_rows = max(1, stage_memory // entry)
        self.staged: list[str] = []
        self.runs: list[np.ndarray] = []
        self.local = self.count = 0  # rows since the last staged file, rows of this rank

    def add(self, batch: Batch, keep: np.ndarray) -> None:
        if not keep.any():
            return
        if keep.all():  # the usual case: no copy
            features, paths = batch.features, batch.paths
        else:
            features = batch.features[keep]
            paths = [path for path, kept in zip(batch.paths, keep.tolist(), strict=True) if kept]
        if self.quantizer is not None:
            for start in range(0, len(paths), _ADD_ROWS):  # bounds faiss' temporary projections
                rows = features[start:start + _ADD_ROWS]
                self.quantizer.add_with_ids(rows, self.base + self.count + start + np.arange(len(rows)))
        codes = features if self.method.exact else None
        if self.codec is not None:
            codes = self.codec.sa_encode(features)
        self.rows.write(paths, codes)
        if self.shards is not None:
            assert batch.rows is not None
            self.runs.append(runs_of(batch.rows[keep], batch.shard, self.count))
        self.count += len(paths)
        self.local += len(paths)
        if self.local >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if self.quantizer is not None and self.local:
            name = staged_name(f"{self.prefix}-{len(self.staged):05d}")
            write_staged(self.quantizer, self.job / name)
            self.staged.append(name)
        self.local = 0

    def finish(self) -> dict[str, Any]:
        """Close the files; the done marker: rows, staged lists, and where the vectors are."""
        self._flush()
        self.rows.close()
        marker: dict[str, Any] = {"count": self.count, "lists": self.staged, "vectors": STORED,
                                  "shards": None}
        if self.shards is not None:
            runs = np.concatenate(self.runs) if self.runs else np.zeros((0, 3), np.int64)
            save_where(self.job / where_name(self.prefix), runs, [m for _, m in self.shards])
            marker["vectors"] = SHARDS
            marker["shards"] = {"folder": str(self.folder),
                                "files": [[path.name, path.stat().st_size] for path, _ in self.shards]}
        return marker
