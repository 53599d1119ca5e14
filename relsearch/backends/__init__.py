"""Outside engines relsearch can run on: Ray (the embedding step of a build), Milvus (serving).

Both are optional extras (``relsearch[ray]``, ``relsearch[milvus]``); nothing here is
imported by a plain local build or query, and each module names its extra when the
package is missing.
"""
