"""LMDB metadata store: records, paths, content hashes and raw vectors."""

from relsearch.store.lmdb_store import SCHEMA_VERSION, PathEntry, Record, Store

__all__ = ["SCHEMA_VERSION", "PathEntry", "Record", "Store"]
