"""Evaluation and search on DINO features (weighted k-NN, linear probe, image index)."""
