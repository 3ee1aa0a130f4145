"""Typed training configuration: sections, presets, files and overrides, range checks."""
