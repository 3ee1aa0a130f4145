"""Where weights come from: downloads, weight files, checkpoints, the folder format, ``load``, torch.hub."""
