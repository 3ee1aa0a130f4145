"""k-NN monitoring of the teacher during training, through the library's own k-NN.

The hook embeds a labelled train and val folder (ImageFolder layout) with the current teacher
backbone and reports the paper's weighted k-NN accuracy. Under torchrun every rank extracts
its shard; the features are gathered and scored on rank 0, the other ranks report nothing.
"""

from __future__ import annotations

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.files import scan_image_folder
from dinofeat.evaluation.knn import check_knn_settings, knn_classify
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.stores.feature_set import extract_folder
from dinofeat.models import Backbone
from dinofeat.training.engine.trainer import EvalHook


def knn_monitor(
    train_dir: str,
    val_dir: str,
    preprocess: PreprocessConfig,
    *,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 128,
    num_workers: int = 2,
) -> EvalHook:
    """An :data:`~dinofeat.training.engine.trainer.EvalHook` computing weighted k-NN top-1/top-5.

    Example:
        >>> preprocess = PreprocessConfig(resize=110, crop=96)
        >>> hook = knn_monitor("data/train", "data/val", preprocess)  # doctest: +SKIP
        >>> hook(teacher_backbone)  # doctest: +SKIP
        {'knn20_top1': 61.2, 'knn20_top5': 93.0}

    Raises:
        FileNotFoundError / ValueError: a folder is missing or not in the ImageFolder layout, or has fewer
            than ``k`` training images; checked now rather than at the first evaluation, an epoch later.
    """
    # Scanned once here: a missing folder fails now, and each evaluation reuses the listings.
    listings = scan_image_folder(train_dir), scan_image_folder(val_dir)
    check_knn_settings([k], temperature, len(listings[0].files))

    def hook(backbone: Backbone) -> dict[str, float]:
        was_training = backbone.training
        extractor = FeatureExtractor(backbone, preprocess, name="teacher")
        try:
            sets = [
                extract_folder(extractor, listing, model="teacher", batch_size=batch_size,
                               num_workers=num_workers, progress=False)
                for listing in listings
            ]
        finally:
            backbone.train(was_training)
        train, val = sets
        if train is None or val is None:  # not rank 0
            return {}
        result = knn_classify(train.features, train.labels, val.features, val.labels, ks=(k,),
                              temperature=temperature)[k]
        return {f"knn{k}_top1": result["top1"], f"knn{k}_top5": result["top5"]}

    return hook
