"""Search time of the retrieval and copy-detection protocols vs plain torch, on 100,000 x 768 features.

- Retrieval (revisited Oxford: 70 queries, every database image ranked): the official way,
  ``argsort(-normalize(db) @ normalize(q).T, dim=0)`` in one matmul, vs dinofeat's ``retrieval_ranks``
  (the same ranking, database in blocks of 65,536 rows so it can be a memory map) vs faiss ``Flat``
  asked for all 100,000 neighbours.
- Copy detection (Copydays: 3,212 queries, top 20): the official ``(normalize(q) @ normalize(db).T).topk(20)``
  in one matmul vs dinofeat's ``copy_detection_search`` (faiss ``Flat``, exact, queries in chunks).

Each method runs in its own subprocess (peak RSS is its own); features are random, clustered,
L2-normalised; the time excludes making them. Rankings are compared with the torch reference.

Usage: nice -n 10 python bench/bench_eval_search.py [--db 100000] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

RETRIEVAL_QUERIES = 70
COPY_QUERIES = 3212
TOP = 20
METHODS = ("retrieval-torch", "retrieval-dinofeat", "retrieval-faiss", "copy-torch", "copy-dinofeat")


def _data(num_db: int, num_queries: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(1000, dim, generator=gen)
    db = centres[torch.randint(0, 1000, (num_db,), generator=gen)] + 2 * torch.randn(
        num_db, dim, generator=gen
    )
    queries = db[torch.randint(0, num_db, (num_queries,), generator=gen)] + torch.randn(
        num_queries, dim, generator=gen
    )
    normalise = torch.nn.functional.normalize
    return normalise(db, dim=1), normalise(queries, dim=1)


def _child(method: str, num_db: int, dim: int) -> None:
    from dinofeat.evaluation.copy_detection import copy_detection_search
    from dinofeat.evaluation.retrieval import retrieval_ranks
    from dinofeat.search.neighbors import build_index, search

    queries_wanted = RETRIEVAL_QUERIES if method.startswith("retrieval") else COPY_QUERIES
    db, queries = _data(num_db, queries_wanted, dim)
    start = time.perf_counter()
    normalise = torch.nn.functional.normalize
    if method == "retrieval-torch":  # the official script L2-normalises its (raw) features, then ranks
        result = torch.argsort(-(normalise(db, dim=1) @ normalise(queries, dim=1).T), dim=0)
    elif method == "retrieval-dinofeat":
        result = retrieval_ranks(db, queries)
    elif method == "retrieval-faiss":
        result = search(build_index(db), queries, num_db).indices.T
    elif method == "copy-torch":  # likewise normalised first, as eval_copy_detection.py
        result = (normalise(queries, dim=1) @ normalise(db, dim=1).T).topk(TOP, dim=1).indices
    else:
        result = copy_detection_search(queries, db, TOP)[1]
    seconds = time.perf_counter() - start
    torch.save(result, f"/tmp/bench_eval_search_{method}.pt")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--child", choices=METHODS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.db, args.dim)
        return
    rows = {}
    for method in METHODS:
        done = subprocess.run(
            [sys.executable, __file__, "--child", method, f"--db={args.db}", f"--dim={args.dim}"],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = {m: torch.load(f"/tmp/bench_eval_search_{m}.pt") for m in METHODS}
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[0]
    print(
        f"threads {torch.get_num_threads()}, load average {load}; database {args.db} x {args.dim}; "
        f"retrieval {RETRIEVAL_QUERIES} queries (full ranking), "
        f"copy detection {COPY_QUERIES} queries (top {TOP})"
    )
    for method, row in rows.items():
        print(f"{method:20s} {row['seconds']:8.3f} s   peak RSS {row['peak_rss_mib']:7.0f} MiB")
    for task, reference, others in (
        ("retrieval", "retrieval-torch", ("retrieval-dinofeat", "retrieval-faiss")),
        ("copy", "copy-torch", ("copy-dinofeat",)),
    ):
        for other in others:
            ratio = rows[reference]["seconds"] / rows[other]["seconds"]
            # Ties of equal similarity may be ordered differently: compare the share of equal positions.
            agree = (loaded[other] == loaded[reference]).float().mean().item()
            print(
                f"{task}: {other} speed-up vs torch {ratio:.2f}x; "
                f"same index at {100 * agree:.3f} % of positions"
            )


if __name__ == "__main__":
    main()
