"""Offline relational corpus: scenes of known relation families composed from real object art."""

from relsearch.corpus.art import ArtLibrary, ArtObject, split_of
from relsearch.corpus.captions import TEMPLATES
from relsearch.corpus.compose import ComposeConfig, compose
from relsearch.corpus.families import FAMILIES, NONE_FAMILY

__all__ = [
    "FAMILIES",
    "NONE_FAMILY",
    "TEMPLATES",
    "ArtLibrary",
    "ArtObject",
    "ComposeConfig",
    "compose",
    "split_of",
]
