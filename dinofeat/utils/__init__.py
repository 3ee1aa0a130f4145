"""Helpers for every layer: errors, atomic writes, file locks, devices, process groups, extras."""
