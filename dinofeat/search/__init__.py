"""Finding images by their features: neighbours, descriptors, the image index, near-duplicate groups."""
