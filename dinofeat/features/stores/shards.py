"""Extracting features of large image collections into Parquet shards: streaming, resumable, multi-process.

An output folder holds ``shard-000000.parquet``, ``shard-000001.parquet``, ... (one per
:class:`~dinofeat.data.collections.Unit`: ``shard_size`` files, or one input tar shard) and ``manifest.json``.
Each shard has the columns ``path`` (string), ``cls`` (fixed-size list of float32, the feature),
``width`` / ``height`` (of the source image) and ``metadata`` (JSON text of a tar sample's other
members, else null), so pandas, DuckDB, Spark and Hugging Face ``datasets`` read the folder as is.

* Memory: one shard's features at a time (``shard_size`` x dim floats), whatever the collection's size.
* Atomic and resumable: a shard is written to a temporary file and renamed; a restarted run with the
  same inputs, model and settings checks the finished shards (their Parquet footer) and skips them.
  Shards are deterministic, so the result equals an uninterrupted run's.
* Several processes: under ``torchrun`` (or any launcher setting ``RANK`` / ``WORLD_SIZE``) rank r
  extracts units r, r + world, ...; no collective is needed. Every process checks its plan against
  the one manifest under a file lock, and the last one to finish marks it complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from dinofeat.data.collections import UNIT_FAILED, Sample, Unit, UnitImages
from dinofeat.data.preprocess import Size
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.loop import image_loader, run_batches
from dinofeat.features.stores.shard_pages import FEATURE_COLUMN
from dinofeat.utils.atomic_write import replace_atomically, write_text_atomically
from dinofeat.utils.errors import DinofeatError, ImageReadError
from dinofeat.utils.locking import exclusive

SHARDS_FORMAT = "dinofeat-shards"
SHARDS_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 10_000
BatchFeatures = Callable[[torch.Tensor], torch.Tensor]


class ShardError(DinofeatError, ValueError):
    """An output folder or shard does not fit this run (other inputs or model) or cannot be read."""


@dataclass(frozen=True)
class ExtractionSettings:
    """What decides the content of the shards (and so must match when a run is resumed)."""

    model: str
    kind: str = "cls"
    size: Size | None = None


@dataclass(frozen=True)
class ExtractionReport:
    """What one process did: shards written now, shards found finished, images, unreadable images."""

    written: int
    resumed: int
    images: int
    skipped: list[str]
    complete: bool


def shard_path(output: Path, unit: Unit) -> Path:
    return output / f"shard-{unit.index:06d}.parquet"


def plan_id(settings: ExtractionSettings, units: Sequence[Unit]) -> str:
    """A digest of the settings and of every unit's inputs: equal plans make equal shards."""
    size = list(settings.size) if isinstance(settings.size, tuple) else settings.size
    what = [SHARDS_FORMAT, settings.model, settings.kind, size, [u.fingerprint() for u in units]]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def extract_to_shards(extractor: FeatureExtractor, units: Sequence[Unit], output: str | os.PathLike[str],
                      settings: ExtractionSettings, *, feature_fn: BatchFeatures | None = None,
                      batch_size: int = 64, num_workers: int = 0, skip_unreadable: bool = False,
                      progress: bool = True, rank: int | None = None, world: int | None = None
                      ) -> ExtractionReport:
    """Extract this process's units into Parquet shards under ``output`` (see the module docstring).

    Args:
        extractor: The model.
        units: The whole collection's units (:func:`dinofeat.data.collections.plan_units`), the same in
            every process.
        output: Output folder (created; resumed if it holds this plan's manifest).
        settings: Model identity, feature kind and preprocessing size, recorded in every shard.
        feature_fn: Preprocessed batch -> (batch, dim) features; default the CLS embedding.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers decoding images.
        skip_unreadable: Leave unreadable images out (named in the shard's metadata) instead of stopping.
        progress: Show images/s and the ETA (rank 0).
        rank: This process's rank (default ``$RANK`` or 0); ``world``: the number of processes
            (default ``$WORLD_SIZE`` or 1).

    Raises:
        ShardError: the folder holds another plan's output, or a finished shard is unreadable (named).
        ImageReadError: an image (or a tar shard) cannot be read and ``skip_unreadable`` is false.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    folder = Path(output)
    plan = plan_id(settings, units)
    _start(folder, plan, settings, units)
    mine = [unit for unit in units if unit.index % world == rank]
    pending = [unit for unit in mine if _finished_count(shard_path(folder, unit), plan, unit) is None]
    bar = tqdm(total=sum(unit.count() for unit in pending), unit="img", dynamic_ncols=True,
               desc=f"features ({extractor.name or settings.model})", disable=not progress or rank != 0)
    compute = feature_fn if feature_fn is not None else extractor
    images, skipped = 0, []
    with bar:
        for unit in pending:
            rows, unreadable = _extract_unit(extractor, compute, unit, settings, batch_size, num_workers,
                                             skip_unreadable, bar)
            _write_shard(shard_path(folder, unit), rows, unreadable, plan, unit, settings)
            images += len(rows["path"])
            skipped += unreadable
    complete = _finish(folder, plan, settings, units)
    return ExtractionReport(len(pending), len(mine) - len(pending), images, skipped, complete)


def _start(folder: Path, plan: str, settings: ExtractionSettings, units: Sequence[Unit]) -> None:
    """Record the plan in the manifest, or check that the folder's manifest has the same plan."""
    with exclusive(folder):
        manifest = folder / MANIFEST
        if manifest.is_file():
            meta = _read_manifest(folder)
            if meta.get("plan") != plan:
                differs = [key for key in ("model", "kind", "size")
                           if meta.get(key) != _describe(settings, units).get(key)] or ["input files"]
                raise ShardError(f"{folder} holds the output of another run (different "
                                 f"{', '.join(differs)}); use a new output folder, or the same command "
                                 "as that run to resume it")
            return
        if folder.is_dir() and any(folder.glob("shard-*.parquet")):
            raise ShardError(f"{folder} holds shards but no {MANIFEST}; use a new output folder")
        write_text_atomically(manifest, json.dumps({**_describe(settings, units), "plan": plan,
                                                    "complete": False}, indent=1))


def _describe(settings: ExtractionSettings, units: Sequence[Unit]) -> dict[str, Any]:
    size = list(settings.size) if isinstance(settings.size, tuple) else settings.size
    return {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "model": settings.model,
            "kind": settings.kind, "size": size, "units": len(units)}


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShardError(f"{folder / MANIFEST} is unreadable: {error}") from None
    if meta.get("format") != SHARDS_FORMAT or meta.get("version") != SHARDS_VERSION:
        raise ShardError(f"{folder} is not a dinofeat shard folder (format {meta.get('format')!r} "
                         f"version {meta.get('version')!r})")
    return meta


def _shard_meta(path: Path) -> dict[str, Any]:
    try:
        footer = pq.read_metadata(path)
        meta: dict[str, Any] = json.loads((footer.metadata or {})[b"dinofeat"])
    except (pa.ArrowException, OSError, KeyError, json.JSONDecodeError) as error:
        raise ShardError(f"shard {path} is corrupt ({error}); nothing else was touched: delete it and run "
                         "the same command again to extract it anew") from None
    if footer.num_rows != meta.get("count"):
        raise ShardError(f"shard {path} is corrupt: {footer.num_rows} rows, its metadata says "
                         f"{meta.get('count')}; delete it and run the same command again")
    return meta


def _finished_count(path: Path, plan: str, unit: Unit) -> int | None:
    """Rows of the finished shard of ``unit`` (None if not written yet); refuses a foreign or corrupt one."""
    if not path.exists():
        return None
    meta = _shard_meta(path)
    if meta.get("plan") != plan or meta.get("fingerprint") != unit.fingerprint():
        raise ShardError(f"shard {path} comes from another run (plan {meta.get('plan')}, this run {plan})")
    return int(meta["count"])


def _collate(samples: list[Sample]) -> tuple[torch.Tensor, list[Sample]]:
    images = [s.image for s in samples if s.position != UNIT_FAILED]
    batch = torch.stack(images) if images else torch.zeros(0)
    return batch, [replace(s, image=torch.zeros(0)) for s in samples]


def _readable(batches: Iterable[tuple[torch.Tensor, list[Sample]]], skip_unreadable: bool
              ) -> Iterator[tuple[torch.Tensor, list[Sample]]]:
    """The batches, after refusing a damaged tar shard, or an unreadable image unless ``skip_unreadable``."""
    for batch, samples in batches:
        errors = [s for s in samples if s.error]
        if any(s.position == UNIT_FAILED for s in errors) or (errors and not skip_unreadable):
            raise ImageReadError(errors[0].error)
        yield batch, samples


def _extract_unit(extractor: FeatureExtractor, compute: BatchFeatures, unit: Unit,
                  settings: ExtractionSettings, batch_size: int, num_workers: int, skip_unreadable: bool,
                  bar: tqdm[Any]) -> tuple[dict[str, list[Any]], list[str]]:
    """The unit's rows in input order (unreadable images left out and returned by name)."""
    loader = image_loader(UnitImages(unit, extractor.preprocess, settings.size), extractor.device,
                          batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    found: list[tuple[Sample, np.ndarray]] = []
    unreadable: list[tuple[int, str]] = []
    for features, samples in run_batches(_readable(loader, skip_unreadable), compute, extractor.device,
                                         extractor.dtype):
        values = features.float().cpu().numpy()
        found.extend((s, row) for s, row in zip(samples, values, strict=True) if not s.error)
        unreadable.extend((s.position, s.path) for s in samples if s.error)
        bar.update(len(samples))
    found.sort(key=lambda item: item[0].position)  # workers interleave their batches
    rows: dict[str, list[Any]] = {"path": [], "cls": [], "width": [], "height": [], "metadata": []}
    for sample, feature in found:
        for key, value in (("path", sample.path), ("cls", feature), ("width", sample.width),
                           ("height", sample.height), ("metadata", sample.metadata)):
            rows[key].append(value)
    return rows, [name for _, name in sorted(unreadable)]


def _write_shard(path: Path, rows: dict[str, list[Any]], unreadable: list[str], plan: str, unit: Unit,
                 settings: ExtractionSettings) -> None:
    dim = len(rows["cls"][0]) if rows["cls"] else 0
    flat = np.concatenate(rows["cls"]).astype(np.float32) if rows["cls"] else np.zeros(0, np.float32)
    table = pa.table({
        "path": pa.array(rows["path"], pa.string()),
        "cls": pa.FixedSizeListArray.from_arrays(pa.array(flat), max(dim, 1)) if dim
        else pa.array([], pa.list_(pa.float32(), 1)),
        "width": pa.array(rows["width"], pa.int32()),
        "height": pa.array(rows["height"], pa.int32()),
        "metadata": pa.array(rows["metadata"], pa.string()),
    })
    meta = {"plan": plan, "unit": unit.index, "fingerprint": unit.fingerprint(), "model": settings.model,
            "kind": settings.kind, "dim": dim, "count": table.num_rows, "skipped": unreadable}
    write_shard_table(path, table, meta)


def write_shard_table(path: Path, table: pa.Table, meta: dict[str, Any]) -> None:
    """Write one shard atomically, its metadata (``meta``) in the footer.

    The features are stored plainly (no compression, no dictionary: float features gain nothing from
    either), so that a search index can read single rows' features in place
    (:mod:`dinofeat.features.stores.shard_pages`); the other columns are compressed.
    """
    table = table.replace_schema_metadata({"dinofeat": json.dumps(meta)})
    others = [name for name in table.column_names if name != FEATURE_COLUMN]
    compression = {name: "snappy" for name in others} | {FEATURE_COLUMN: "none"}
    replace_atomically(lambda temporary: pq.write_table(table, temporary, compression=compression,
                                                        use_dictionary=others), path)


def _finish(folder: Path, plan: str, settings: ExtractionSettings, units: Sequence[Unit]) -> bool:
    """Mark the manifest complete, with every shard's counts, once all shards exist (by any process)."""
    with exclusive(folder):
        if _read_manifest(folder).get("complete"):
            return True
        if not all(shard_path(folder, unit).exists() for unit in units):
            return False
        metas = [(shard_path(folder, unit).name, _shard_meta(shard_path(folder, unit))) for unit in units]
        dims = {meta["dim"] for _, meta in metas if meta["count"]}
        shards = [{"file": name, "count": meta["count"], "skipped": len(meta["skipped"])}
                  for name, meta in metas]
        write_text_atomically(folder / MANIFEST, json.dumps({
            **_describe(settings, units), "plan": plan, "complete": True, "dim": dims.pop() if dims else 0,
            "count": sum(s["count"] for s in shards), "shards": shards}, indent=1))
        return True


def write_feature_shards(output: str | os.PathLike[str], batches: Iterable[tuple[Sequence[str], np.ndarray]],
                         *, model: str, kind: str = "cls") -> int:
    """Write features computed elsewhere as a complete shard folder, one shard per batch of (paths,
    (n, dim) features), so that everything reading ``dinofeat embed`` output (``dinofeat index``,
    :func:`load_shards`) reads them. Image sizes and metadata are left empty.

    Returns:
        The number of rows written.

    Raises:
        ShardError: ``output`` already holds a shard folder.
    """
    folder = Path(output)
    if (folder / MANIFEST).exists():
        raise ShardError(f"{folder} already holds a shard folder; write to a new folder")
    shards: list[dict[str, Any]] = []
    dim = 0
    for number, (paths, features) in enumerate(batches):
        array = np.ascontiguousarray(features, np.float32)
        dim = array.shape[1]
        table = pa.table({
            "path": pa.array(list(paths), pa.string()),
            "cls": pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), dim),
            "width": pa.nulls(len(paths), pa.int32()), "height": pa.nulls(len(paths), pa.int32()),
            "metadata": pa.nulls(len(paths), pa.string())})
        name = f"shard-{number:06d}.parquet"
        meta = {"plan": "imported", "unit": number, "model": model, "kind": kind, "dim": dim,
                "count": len(paths), "skipped": []}
        write_shard_table(folder / name, table, meta)
        shards.append({"file": name, "count": len(paths), "skipped": 0})
    count = sum(int(shard["count"]) for shard in shards)
    write_text_atomically(folder / MANIFEST, json.dumps({
        "format": SHARDS_FORMAT, "version": SHARDS_VERSION, "model": model, "kind": kind, "size": None,
        "units": len(shards), "plan": "imported", "complete": True, "dim": dim, "count": count,
        "shards": shards}, indent=1))
    return count


def is_shard_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by :func:`extract_to_shards`."""
    manifest = Path(path) / MANIFEST
    try:
        return bool(json.loads(manifest.read_text()).get("format") == SHARDS_FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def shard_manifest(output: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete shard folder (model, kind, size, dim, count, shards).

    Raises:
        ShardError: not a shard folder, or the extraction is not complete.
    """
    folder = Path(output)
    meta = _read_manifest(folder)
    if not meta.get("complete"):
        raise ShardError(f"the extraction in {folder} is not complete; run the same command again "
                         "to finish it")
    return meta


def iter_shard_tables(output: str | os.PathLike[str], only: Collection[str] | None = None
                      ) -> Iterator[pa.Table]:
    """The non-empty shards of a complete folder (those named in ``only``, if given), one Arrow table at a
    time, in input order."""
    folder = Path(output)
    for shard in shard_manifest(folder)["shards"]:
        if only is not None and shard["file"] not in only:
            continue
        if _shard_meta(folder / shard["file"])["count"]:  # a shard of only unreadable images has no rows
            yield pq.read_table(folder / shard["file"])


def read_shards(output: str | os.PathLike[str]) -> pa.Table:
    """All rows of a complete shard folder, in input order, as one Arrow table.

    Raises:
        ShardError: the extraction is not complete, or a shard is unreadable.
    """
    tables = list(iter_shard_tables(output))
    if not tables:
        raise ShardError(f"{output} holds no readable image")
    return pa.concat_tables(tables)


def table_features(table: pa.Table) -> tuple[torch.Tensor, list[str]]:
    """(features (N, D) float32, paths) of shard rows."""
    column = table.column("cls").combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    features = torch.from_numpy(values.reshape(-1, column.type.list_size).copy())
    return features, table.column("path").to_pylist()


def load_shards(output: str | os.PathLike[str]) -> tuple[torch.Tensor, list[str]]:
    """(features (N, D) float32, paths) of a complete shard folder."""
    return table_features(read_shards(output))


def print_report(report: ExtractionReport, output: str | os.PathLike[str]) -> None:
    """One line on stderr: what this process did and whether the folder is complete."""
    state = "complete" if report.complete else "waiting for other processes' shards"
    print(f"{output}: {report.images} images in {report.written} new shard(s), {report.resumed} shard(s) "
          f"already done, {len(report.skipped)} unreadable skipped; {state}", file=sys.stderr)
