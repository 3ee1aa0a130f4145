"""The persistent image index: exact for small collections, compressed faiss inverted lists on disk for large
ones, built by streaming Parquet shards (in one process or several), appendable, memory-mapped for search."""

from dinofeat.search.index.build import AddReport
from dinofeat.search.index.image_index import ImageIndex, SearchHit
from dinofeat.search.index.manifest import IndexCorruptError, IndexMismatchError, Method
from dinofeat.search.index.method import IndexOptions, parse_size

__all__ = ["AddReport", "ImageIndex", "IndexCorruptError", "IndexMismatchError", "IndexOptions", "Method",
           "SearchHit", "parse_size"]
