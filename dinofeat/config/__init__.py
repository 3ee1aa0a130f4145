"""Typed preprocessing (RGB evaluation transform, per-band normalisation) shared by every layer."""
