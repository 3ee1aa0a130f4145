"""Choosing how an index searches (exact, or compressed codes in faiss inverted lists) and training it.

The rules (``docs/deploy.md`` shows them with measurements):

- **Exact** for up to :data:`EXACT_LIMIT` rows (a folder of photos): every stored float32 vector is
  compared with the query; search takes about 10 ms per query at 100,000 x 384.
- **Compressed** above: ``PCAR{4m},IVF{nlist},PQ{m}``. The vectors are projected on their ``4m``
  principal axes and rotated (PCAR, which balances the variance over the code's sub-vectors),
  assigned to one of ``nlist`` k-means cells (about ``2 sqrt(n)``, a power of two) and coded in ``m``
  bytes (product quantisation, 4 dimensions per byte). The search visits ``nprobe`` cells and re-ranks
  ``candidates x top`` codes by their exact vectors (read from the shards, or stored refine codes).
  ``m`` is ``dim / 12`` (32 at 384), or what the memory budget allows: the budget is the memory the
  search keeps busy (codes, ids, quantiser), ``m + 8`` bytes per row plus the quantiser.
- Or a faiss factory string with an IVF stage (``"OPQ32_128,IVF16384_HNSW32,PQ32"``); ``"Flat"`` is exact.

The IVF stage ranks by L2 distance, which on unit vectors orders like the cosine and, unlike the
inner product, does not change when PCA subtracts the mean.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dinofeat.search.index.invlists import ivf_of
from dinofeat.search.index.manifest import EXACT, IVF, Method

EXACT_LIMIT = 100_000
#: Refine codec of vectors stored in the index when they cannot be read from the shards.
DEFAULT_REFINE = "SQfp16"
DEFAULT_CANDIDATES = 10
_CODE_BYTES = (8, 12, 16, 24, 32, 48, 64, 96, 128)
_ID_BYTES = 8
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
QUANTIZER_FILE = "quantizer.faiss"
REFINE_FILE = "refine.faiss"


@dataclass(frozen=True)
class IndexOptions:
    """What a user may ask of a new index (everything else follows from the number of rows).

    Attributes:
        index_type: A faiss factory string for the IVF stage, ``"Flat"`` for exact search, or None (by
            the rules).
        memory_budget: Bytes the search may keep in memory (None: codes of ``dim / 12`` bytes).
        refine: faiss codec string of vectors kept in the index when the shards cannot serve them
            (``"SQfp16"``, ``"SQ8"``, ``"Flat"``).
        nprobe: Inverted lists visited per query (None: the rule).
        candidates: Codes re-ranked per result.
        exact_limit: Up to this many rows the index is exact.
        seed: Seed of the training sample and of k-means.
    """

    index_type: str | None = None
    memory_budget: int | None = None
    refine: str = DEFAULT_REFINE
    nprobe: int | None = None
    candidates: int = DEFAULT_CANDIDATES
    exact_limit: int = EXACT_LIMIT
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("candidates", "exact_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {self.nprobe}")


def parse_size(text: str) -> int:
    """Bytes of a size such as ``"4G"``, ``"512M"``, ``"1.5GB"`` or ``"1000000"`` (powers of 1024).

    Example:
        >>> parse_size("1.5G"), parse_size("512M"), parse_size("100")
        (1610612736, 536870912, 100)
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (write e.g. 4G, 512M, 1.5GB)")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def _cells(count: int) -> int:
    """Inverted lists for ``count`` rows: about 2 sqrt(count), a power of two, >= 39 training rows each."""
    cells = 1 << round(math.log2(max(2 * math.sqrt(count), 16)))
    while cells > 16 and cells * 39 > count:
        cells //= 2
    return min(cells, 65536)


def _code_bytes(count: int, dim: int, budget: int | None) -> int:
    default = max(1, min(max(8, round(dim / 48) * 4), dim // 4))
    if budget is None:
        return default
    per_row = budget / count - _ID_BYTES
    fitting = [m for m in _CODE_BYTES if m <= per_row and 4 * m <= dim]
    if not fitting:
        need = (_CODE_BYTES[0] + _ID_BYTES) * count
        raise ValueError(f"a memory budget of {budget / 2**20:.0f} MiB is too small for {count:,} rows: the "
                         f"smallest codes need {need / 2**20:.0f} MiB")
    return max(fitting)


def choose_method(count: int, dim: int, options: IndexOptions) -> Method:
    """The method of a new index of ``count`` rows of dimension ``dim`` (see the module docstring)."""
    spec = options.index_type
    if spec is not None and spec.strip().lower() in ("flat", "exact"):
        return Method(EXACT)
    if spec is None:
        fits = options.memory_budget is None or count * dim * 4 <= options.memory_budget
        if count <= options.exact_limit and fits:
            return Method(EXACT)
        code = _code_bytes(count, dim, options.memory_budget)
        cells = _cells(count)
        quantizer = "_HNSW32" if cells > 16384 else ""
        spec = f"PCAR{4 * code},IVF{cells}{quantizer},PQ{code}"
        nlist = cells
    else:
        nlist = _check_factory(spec, dim)
    refine_codec(options.refine, dim)
    if count < max(nlist, 256):
        raise ValueError(f"a compressed index ({spec}) trains on its rows: {count:,} are too few (at least "
                         f"{max(nlist, 256):,}); use an exact index (index type 'Flat') or fewer lists")
    nprobe = options.nprobe or int(np.clip(nlist // 64, 16, 128))
    return Method(IVF, factory=spec, refine=options.refine, nprobe=nprobe, candidates=options.candidates)


def _check_factory(spec: str, dim: int) -> int:
    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_L2)
    except RuntimeError as error:
        raise ValueError(f"invalid faiss index type {spec!r}: {str(error).splitlines()[-1]}") from None
    try:
        return int(ivf_of(index).nlist)
    except RuntimeError:
        raise ValueError(f"index type {spec!r} has no inverted lists: an index on disk needs an IVF stage "
                         "(e.g. 'IVF4096,PQ32'), or 'Flat' for exact search") from None


def sample_size(method: Method, count: int, dim: int) -> int:
    """Rows to train on: 40 per inverted list (at least 50,000 for the codes), at most 1,000,000."""
    if method.exact or method.factory is None:
        return 0
    return min(count, max(40 * _check_factory(method.factory, dim), 50_000), 1_000_000)


def train(method: Method, sample: np.ndarray, directory: Path, seed: int) -> dict[str, Path]:
    """Train the IVF stage and the refine codec on ``sample`` and write them (empty) into ``directory``.

    Returns:
        {role: file} of what was written (quantiser, refine codec).
    """
    dim = sample.shape[1]
    assert method.factory is not None
    index = faiss.index_factory(dim, method.factory, faiss.METRIC_L2)
    ivf: Any = faiss.downcast_index(ivf_of(index))
    ivf.cp.seed = seed
    ivf.cp.niter = 10  # k-means rounds (faiss: 25): the cells only choose where to look
    if hasattr(ivf, "do_polysemous_training"):  # IVF-PQ
        ivf.do_polysemous_training = False  # Hamming filtering is not used; it costs 20x the training
        ivf.pq.cp.niter = 10  # the codes only shortlist candidates: 10 k-means rounds are enough
        ivf.pq.cp.seed = seed
    index.train(sample)
    written = {"quantizer": directory / QUANTIZER_FILE, "refine": directory / REFINE_FILE}
    faiss.write_index(index, str(written["quantizer"]))
    codec = refine_codec(method.refine, dim)
    if not codec.is_trained:
        codec.train(sample[:65536])
    faiss.write_index(codec, str(written["refine"]))
    return written


def refine_codec(spec: str, dim: int) -> Any:
    """An (untrained) faiss codec for stored vectors: ``"Flat"``, ``"SQfp16"``, ``"SQ8"``, ``"PQ48"``..."""
    try:
        codec = faiss.index_factory(dim, spec, faiss.METRIC_L2)
    except RuntimeError as error:
        raise ValueError(f"invalid refine codec {spec!r}: {str(error).splitlines()[-1]}") from None
    if not hasattr(codec, "sa_code_size"):
        raise ValueError(f"refine codec {spec!r} cannot code single vectors")
    return codec
