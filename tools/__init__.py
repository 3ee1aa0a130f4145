"""Contributor tools, not part of the installed package (``python -m tools.docs_table``)."""
