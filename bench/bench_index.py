"""The image index at scale: build, size, recall, latency and append, against today's flat index.

Generates synthetic clustered features in the shard-folder format `dinofeat embed -o FOLDER` writes
(the bundled model's name, ``--shard-rows`` rows per shard), 1,000 held-out queries and 10,000 rows
to append, then measures, each build and query in a process of its own (peak RSS = that process's):

- ``dinofeat index SHARDS -o IDX``: wall time, peak RSS, index size on disk;
- recall@1 / @10 of the index against exact search over all rows, on the held-out queries;
- query latency p50 / p99 in a warm process (one query per call, after 1,000 other queries warmed
  the inverted lists), and one cold ``dinofeat search IDX queries.npy`` (a fresh process);
- ``dinofeat index APPEND -o IDX``: appending 10,000 rows, time and peak RSS;
- with ``--baseline-checkout PATH`` (a checkout of dinofeat before the version-2 index, e.g.
  ``git worktree add /tmp/dinofeat-flat 4b23ae2``): the same build and queries with that code.

The features: ``clusters`` centres drawn from a Gaussian whose variances fall as 1/i (a power law,
as in image embeddings) in a random basis; each row is a centre plus ``spread`` times noise of the
same spectrum, normalised; a ``--duplicates`` fraction of rows are near-copies of a row before them.

Usage: nice -n 10 python bench/bench_index.py --rows 1000000 --baseline-checkout /tmp/dinofeat-flat
       nice -n 10 python bench/bench_index.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "vit_t16_d4_imagenette"
QUERY_SEED, WARM_SEED, APPEND_SEED = 1_000_001, 1_000_002, 1_000_003


class Generator:
    """Synthetic clustered unit vectors; rows depend only on (seed, count), so runs are reproducible."""

    def __init__(self, dim: int, clusters: int, spread: float, duplicates: float) -> None:
        rng = np.random.default_rng(0)
        self.scale = (np.arange(1, dim + 1, dtype=np.float64) ** -0.5 / np.sqrt(np.log(dim) + 0.58)
                      ).astype(np.float32)
        self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.centres = (rng.standard_normal((clusters, dim)).astype(np.float32) * self.scale) @ self.basis.T
        self.spread, self.duplicates = spread, duplicates

    def rows(self, seed: int, count: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((count, len(self.scale)), dtype=np.float32) * (self.scale * self.spread)
        rows = self.centres[rng.integers(0, len(self.centres), count)] + noise @ self.basis.T
        copies = np.flatnonzero(rng.random(count) < self.duplicates)
        copies = copies[copies > 0]
        rows[copies] = rows[rng.integers(0, copies)] + 0.02 * noise[copies]
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _shards(folder: Path, gen: Generator, rows: int, shard_rows: int, seed: int, prefix: str) -> None:
    from dinofeat.features.stores.shards import write_feature_shards

    if (folder / "manifest.json").exists():
        return

    def batches() -> Any:
        for number, start in enumerate(range(0, rows, shard_rows)):
            count = min(shard_rows, rows - start)
            paths = [f"/data/{prefix}/{number:05d}/{row:07d}.jpg" for row in range(count)]
            yield paths, gen.rows(seed + number, count)

    write_feature_shards(folder, batches(), model=MODEL)


def _exact_top(shards: Path, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids (in shard order) of the exact top ``k`` of each query, streaming the shards."""
    import faiss

    from dinofeat.features.stores.shards import iter_shard_tables, table_features

    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    start = 0
    for table in iter_shard_tables(shards):
        features = table_features(table)[0].numpy()
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        scores, ids = faiss.knn(queries, features, k, metric=faiss.METRIC_INNER_PRODUCT)
        scores, ids = np.concatenate([best_s, scores], 1), np.concatenate([best_i, ids + start], 1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        start += len(features)
    return best_i


def _measured(argv: list[str], pythonpath: Path = ROOT) -> dict[str, Any]:
    """Run ``argv`` as a child: wall time, peak RSS (from wait4), and the JSON of its last output line."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=pythonpath, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stderr is not None
    out = process.stdout.read()  # small outputs: stderr is read after the child ends
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    err = process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed with status {process.returncode}:\n{err[-3000:]}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024,
            **(json.loads(last) if last.startswith("{") else {})}


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _row_of(path: str, shard_rows: int) -> int:
    """The row id of a generated path (/data/images/SHARD/ROW.jpg), as the shards order the rows."""
    shard, row = path.split("/")[-2:]
    return int(shard) * shard_rows + int(row.split(".")[0])


def _child_query(index: str, queries: str, warm: str, truth: str, shard_rows: str) -> None:
    """In a fresh process: import, open and answer one query (cold), warm up on 1,000 other queries,
    then time the held-out queries one call each and score them against exact search."""
    start = time.perf_counter()
    import torch

    from dinofeat.search.index import ImageIndex  # from PYTHONPATH: this checkout, or the baseline's

    opened = ImageIndex.open(index)
    q, w, gt = np.load(queries), np.load(warm), np.load(truth)
    opened.search(torch.from_numpy(q[:1]), top=10)
    cold = time.perf_counter() - start
    for row in w:
        opened.search(torch.from_numpy(row[None]), top=10)
    latencies, found = [], []
    for row in q:
        tick = time.perf_counter()
        hits = opened.search(torch.from_numpy(row[None]), top=10)[0]
        latencies.append(time.perf_counter() - tick)
        found.append([_row_of(h.path, int(shard_rows)) for h in hits])
    pairs = list(zip(found, gt, strict=True))
    recall1 = float(np.mean([row[:1] == [int(g[0])] for row, g in pairs]))
    recall10 = float(np.mean([len(set(row) & set(g.tolist())) / 10 for row, g in pairs]))
    print(json.dumps({"fresh_process_first_query_s": cold, "warm_p50_ms": 1e3 * float(np.median(latencies)),
                      "warm_p99_ms": 1e3 * float(np.percentile(latencies, 99)), "recall@1": recall1,
                      "recall@10": recall10}))


def _variant(name: str, code: Path, options: list[str], work: Path, shards: Path, files: dict[str, Path],
             args: argparse.Namespace) -> dict[str, Any]:
    cli = [sys.executable, "-m", "dinofeat.cli"]
    index = work / name
    subprocess.run(["rm", "-rf", str(index)], check=True)
    build = _measured([*cli, "index", str(shards), "-o", str(index), "--no-progress", *options], code)
    query = _measured([sys.executable, __file__, "--child-query", str(index),
                       *(str(files[k]) for k in ("queries", "warm", "truth")), str(args.shard_rows)], code)
    row: dict[str, Any] = {"build_s": build["seconds"], "build_peak_rss_mib": build["peak_rss_mib"],
                           "index_mib": _size_mib(index),
                           **{k: v for k, v in query.items() if k not in ("seconds", "peak_rss_mib")},
                           "query_process_peak_rss_mib": query["peak_rss_mib"]}
    if code != ROOT:
        return row
    one = work / "one_query.npy"
    np.save(one, np.load(files["queries"])[:1])
    row["cold_cli_one_query_s"] = _measured([*cli, "search", str(index), str(one)], code)["seconds"]
    row["cli_all_queries_s"] = _measured([*cli, "search", str(index), str(files["queries"])], code)["seconds"]
    more = work / f"append-{args.append}"
    append = _measured([*cli, "index", str(more), "-o", str(index), "--no-progress"], code)
    row |= {"append_rows": args.append, "append_s": append["seconds"],
            "append_peak_rss_mib": append["peak_rss_mib"], "append_share_of_build": append["seconds"]
            / build["seconds"], "index_mib_after_append": _size_mib(index)}
    if args.dedup:
        dedup = _measured([*cli, "dedup", str(index), "--threshold", str(args.dedup), "--no-progress",
                           "--json", str(work / "dedup.json")], code)
        groups = json.loads((work / "dedup.json").read_text())["groups"]
        row |= {"dedup_threshold": args.dedup, "dedup_s": dedup["seconds"], "dedup_groups": len(groups),
                "dedup_peak_rss_mib": dedup["peak_rss_mib"]}
    return row


def _prepare(args: argparse.Namespace, work: Path) -> None:
    """The shard folders, queries and exact neighbours (skipped when present)."""
    gen = Generator(args.dim, args.clusters or max(args.rows // 1000, 16), args.spread, args.duplicates)
    _shards(work / "shards", gen, args.rows, args.shard_rows, 0, "images")
    _shards(work / f"append-{args.append}", gen, args.append, args.shard_rows, APPEND_SEED, "more")
    if not (work / "truth.npy").exists():
        np.save(work / "queries.npy", gen.rows(QUERY_SEED, args.queries))
        np.save(work / "warm.npy", gen.rows(WARM_SEED, args.queries))
        np.save(work / "truth.npy", _exact_top(work / "shards", np.load(work / "queries.npy"), 10))


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    work = args.work / f"{args.rows}x{args.dim}"
    work.mkdir(parents=True, exist_ok=True)
    # In a child, so that this process stays small: a child's peak RSS counts what it inherits at fork.
    data = _measured([sys.executable, __file__, *argv, "--prepare-only"])
    files = {name: work / f"{name}.npy" for name in ("queries", "warm", "truth")}
    results: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "shard_rows": args.shard_rows,
                               "raw_features_mib": args.rows * args.dim * 4 / 2**20,
                               "data_s": data["seconds"]}
    shards = work / "shards"
    results["index"] = _variant("index", ROOT, shlex.split(args.index_options), work, shards, files, args)
    if args.baseline_checkout:
        results["flat_before"] = _variant("flat_before", args.baseline_checkout.resolve(), [], work, shards,
                                          files, args)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--append", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, help="default: rows / 1000")
    parser.add_argument("--spread", type=float, default=0.6)
    parser.add_argument("--duplicates", type=float, default=0.001)
    parser.add_argument("--dedup", type=float, help="also time `dinofeat dedup INDEX --threshold T`")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_index"))
    parser.add_argument("--baseline-checkout", type=Path, help="a checkout of dinofeat before the version-2 "
                                                                "index: its flat index is measured too")
    parser.add_argument("--index-options", default="", help="extra `dinofeat index` options, in one string "
                                                            "(e.g. '--memory-budget 1G')")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child-query", nargs=5, metavar=("INDEX", "QUERIES", "WARM", "TRUTH", "SHARD_ROWS"))
    parser.add_argument("--prepare-only", action="store_true", help="only write the data")
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.child_query:
        _child_query(*args.child_query)
        return
    if args.prepare_only:
        sys.path.insert(0, str(ROOT))  # this checkout's dinofeat writes the shards
        _prepare(args, args.work / f"{args.rows}x{args.dim}")
        return
    results = run(args, sys.argv[1:])
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
