"""Embed every photo of a folder and print each one's nearest neighbours (cosine similarity).

    python examples/embed_folder_neighbours.py ../shared/data/photos --model vit_s16 -k 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import dinofeat
from dinofeat.data.files import list_image_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    photos = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
    parser.add_argument("folder", nargs="?", default=str(photos))
    parser.add_argument("--model", default="vit_s16", help="zoo name, hf-hub:org/repo or a model folder")
    parser.add_argument("-k", type=int, default=3)
    args = parser.parse_args()

    files = list_image_files(args.folder)
    model = dinofeat.load(args.model)
    feats = torch.nn.functional.normalize(model.embed(files), dim=1)
    similarity = feats @ feats.T
    similarity.fill_diagonal_(-float("inf"))  # an image is not its own neighbour
    k = min(args.k, len(files) - 1)
    scores, indices = similarity.topk(k, dim=1)
    for row, path in enumerate(files):
        pairs = zip(scores[row].tolist(), indices[row].tolist(), strict=True)
        neighbours = ", ".join(f"{files[j].name} ({s:.3f})" for s, j in pairs)
        print(f"{path.name:28s} -> {neighbours}")


if __name__ == "__main__":
    main()
