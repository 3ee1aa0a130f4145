"""Dense features: features(cls, patches, attention) vs embed() on the same batch; PCA fit, torch vs faiss.

Part 1 runs one architecture (ViT-S/16 at 224 x 224, random weights: timing only) on one batch of
ready float tensors, the variants interleaved round-robin after a warm-up; the median of the
repeats is reported, and the goal is features(cls, patches, attention) <= 1.15x the time of embed().
Part 2 times the PCA fit that dinofeat.dense.pca uses (float64 covariance + torch.linalg.eigh)
against faiss.PCAMatrix on random tokens of typical sizes (best of the repeats).

    nice -n 10 python bench/bench_dense.py --threads 2 --batch 8 --repeats 7
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import faiss
import numpy as np
import torch
from timing import interleaved_medians

import dinofeat
from dinofeat.dense.pca import fit_pca

PCA_SIZES = [(784, 192), (3136, 192), (3136, 384), (12544, 384), (10000, 768)]


def _best_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def bench_features(batch: int, repeats: int, device: str) -> None:
    model = dinofeat.load("vit_s16", pretrained=False, device=device)
    ready = torch.randn(batch, 3, 224, 224, device=device)

    def synced(run: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            out = run()
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        return call

    variants = {
        "embed()": synced(lambda: model.embed(ready, progress=False)),
        'features(("cls", "patches", "attention"))': synced(
            lambda: model.features(ready, outputs=("cls", "patches", "attention"), progress=False)),
        "features(all five, n_layers=4)": synced(
            lambda: model.features(ready, outputs=("cls", "patches", "registers", "attention", "layers"),
                                   progress=False)),
    }
    medians = {name: 1000 * seconds for name, seconds in interleaved_medians(variants, repeats).items()}
    reference = medians["embed()"]
    print(f"\n## features vs embed (ViT-S/16, batch {batch} at 224 x 224, {device}, median of {repeats})\n")
    print("| variant | ms / batch | time / embed() |\n|---|---|---|")
    for name, ms in medians.items():
        print(f"| `{name}` | {ms:.1f} | {ms / reference:.3f}x |")


def bench_pca(repeats: int) -> None:
    print(f"\n## PCA fit, 3 components (best of {repeats})\n")
    print("| tokens x dims | dinofeat fit_pca (torch eigh) ms | faiss.PCAMatrix train ms |\n|---|---|---|")
    for count, dim in PCA_SIZES:
        tokens = torch.randn(count, dim)
        rows = tokens.numpy()

        def faiss_fit(rows: np.ndarray = rows, dim: int = dim) -> None:
            faiss.PCAMatrix(dim, 3).train(rows)

        ours = _best_ms(lambda tokens=tokens: fit_pca(tokens), repeats)
        print(f"| {count} x {dim} | {ours:.1f} | {_best_ms(faiss_fit, repeats):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-pca", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"faiss {faiss.__version__}, {args.threads} threads")
    bench_features(args.batch, args.repeats, args.device)
    if not args.skip_pca:
        bench_pca(args.repeats)


if __name__ == "__main__":
    main()
