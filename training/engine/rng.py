"""The random streams of a training run, each a function of the run's position alone.

A resumed run must draw exactly the random numbers the uninterrupted run draws. A single global
generator cannot promise that: anything that draws from it (a DataLoader creating its iterator, which
happens once per process with persistent workers; an evaluation hook; user code) shifts every later draw,
and a restarted process draws at other points than an uninterrupted one. So every stream the trajectory
depends on is derived from ``run.seed`` and the position in the run:

- initial weights: the global generator seeded with ``run.seed`` before the networks are built;
- data order: the sampler's generator, seeded with ``(run.seed, epoch)`` (``DistributedSampler``);
- augmentation: per sample, seeded with ``(run.seed, epoch, sample index)`` (``ImageDataset``);
- the step's own randomness (the student's drop-path): per iteration and rank, seeded with
  ``(run.seed, iteration, rank)`` inside :func:`iteration_rng`, which forks the global generator, so the
  step neither depends on nor advances it;
- DINOv2's iBOT masks: a ``random.Random`` per iteration and rank seeded from
  ``iteration_seed(run.seed, iteration, rank, MASK_STREAM)``;
- the DataLoader's base seed for its workers: a generator of its own (:func:`loader_generator`), so
  creating a loader iterator never advances the global generator. (The workers' own seeds do not reach the
  data: augmentation is seeded per sample.)

Checkpointing the position (epoch, iteration within the epoch) therefore checkpoints every stream; the
global generators' states are saved too, for code outside the trajectory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

_STEP_STREAM = 1  # keeps the step's seeds apart from other (seed, a, b) streams
MASK_STREAM = 2  # DINOv2's iBOT masks


def iteration_seed(seed: int, iteration: int, rank: int, stream: int = _STEP_STREAM) -> int:
    """A 63-bit seed that depends only on (run seed, global iteration, rank) and the stream.

    Example:
        >>> iteration_seed(0, 5, 0) == iteration_seed(0, 5, 0) != iteration_seed(0, 5, 1)
        True
    """
    words = np.random.SeedSequence([seed, stream, iteration, rank]).generate_state(2, np.uint64)
    return int(words[0] >> np.uint64(1))


@contextmanager
def iteration_rng(seed: int, iteration: int, rank: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's generators (CPU, and ``device`` if CUDA) seeded from
    :func:`iteration_seed`, and restore their previous states afterwards."""
    value = iteration_seed(seed, iteration, rank)
    cuda = device.type == "cuda"
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(value)
        if cuda:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(value)
        yield


def loader_generator(seed: int) -> torch.Generator:
    """A generator for ``DataLoader(generator=...)``: the loader's per-iterator base-seed draws come
    from here, never from the global generator."""
    return torch.Generator().manual_seed(seed)
