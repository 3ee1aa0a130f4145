"""Running a model over images: the extractor, its outputs, masks, the one batch loop, files, video."""
