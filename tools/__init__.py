"""Standalone project tools (corpus composition), runnable as ``python -m tools.<name>``."""
