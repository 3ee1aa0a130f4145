"""faiss k-NN vs a plain torch matmul top-k (50,000 x 384 train, 10,000 queries, k=20).

Each method runs in its own subprocess so that peak resident memory (``ru_maxrss``) is its own.
Both use the same random L2-normalised features and must return identical neighbours and
identical weighted-k-NN accuracy.

Usage: nice -n 10 python bench/bench_knn.py [--train 50000] [--test 10000] [--dim 384] [--k 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _data(n_train: int, n_test: int, dim: int, classes: int = 100) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(classes, dim, generator=gen)
    train_labels = torch.randint(0, classes, (n_train,), generator=gen)
    test_labels = torch.randint(0, classes, (n_test,), generator=gen)
    noise_train, noise_test = (
        torch.randn(n_train, dim, generator=gen),
        torch.randn(n_test, dim, generator=gen),
    )
    train = torch.nn.functional.normalize(centers[train_labels] + 3 * noise_train)
    test = torch.nn.functional.normalize(centers[test_labels] + 3 * noise_test)
    return train, train_labels, test, test_labels


APPROXIMATE = ("IVF256,Flat", "nprobe=8")


def _torch_topk(train: torch.Tensor, test: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """The reference: the official eval_knn.py way, similarity matmul then topk per test chunk."""
    parts = [(test[i : i + chunk] @ train.T).topk(k, dim=1).indices for i in range(0, test.shape[0], chunk)]
    return torch.cat(parts)


def _child(method: str, n_train: int, n_test: int, dim: int, k: int) -> None:
    from dinofeat.evaluation.knn import knn_classify
    from dinofeat.search.neighbors import build_index, search

    train, train_labels, test, test_labels = _data(n_train, n_test, dim)
    start = time.perf_counter()
    spec, params = APPROXIMATE if method == "faiss-ivf" else ("Flat", None)
    if method == "torch":
        neighbors = _torch_topk(train, test, k)
    else:  # index build (and IVF training) is included in the time
        neighbors = search(build_index(train, spec, params), test, k).indices
    seconds = time.perf_counter() - start
    accuracy = knn_classify(
        train,
        train_labels,
        test,
        test_labels,
        ks=(k,),
        normalize=False,
        index_spec=spec,
        search_params=params,
    )[k]["top1"]
    torch.save(neighbors, f"/tmp/bench_knn_{method}.pt")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_mib": peak_mib, "top1": accuracy}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--child", choices=["faiss", "faiss-ivf", "torch"])
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.train, args.test, args.dim, args.k)
        return
    shape = [f"--train={args.train}", f"--test={args.test}", f"--dim={args.dim}", f"--k={args.k}"]
    rows = {}
    for method in ("torch", "faiss", "faiss-ivf"):
        done = subprocess.run(
            [sys.executable, __file__, "--child", method, *shape], capture_output=True, text=True, check=True
        )
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
    reference = torch.load("/tmp/bench_knn_torch.pt")
    same = torch.equal(torch.load("/tmp/bench_knn_faiss.pt"), reference)
    ivf = torch.load("/tmp/bench_knn_faiss-ivf.pt")
    recall = (
        sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ivf, reference, strict=True))
        / reference.numel()
    )
    print(
        f"threads: {torch.get_num_threads()}  train {args.train} x {args.dim}, {args.test} queries, "
        f"k={args.k}; approximate = {APPROXIMATE}"
    )
    for method, row in rows.items():
        print(
            f"{method:6s} {row['seconds']:8.3f} s   peak RSS {row['peak_rss_mib']:8.0f} MiB   "
            f"top-1 {row['top1']:.2f}"
        )
    for method in ("faiss", "faiss-ivf"):
        print(f"speed-up {method} vs torch: {rows['torch']['seconds'] / rows[method]['seconds']:.2f}x")
    print(f"exact faiss: identical neighbours to torch: {same}; faiss-ivf recall@{args.k}: {recall:.4f}")


if __name__ == "__main__":
    main()
