"""Anonymous caption templates, several per family.

Captions name roles through placeholders ({Object}, {Other}, {Container}, {Center}, {Cover},
{Shape}) and
never the concrete object, so a caption describes the relation and nothing the objects look like.
"""

from __future__ import annotations

import numpy as np

PLACEHOLDERS = ("{Object}", "{Other}", "{Container}", "{Center}", "{Cover}", "{Shape}")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "nesting": (
        "{Object} nested inside {Container}, layer within layer",
        "{Object} inside {Container} inside a still larger shape, like layers of a peach",
        "concentric layers: {Object} held within {Container}, held within another",
        "{Object} at the core of {Container}, wrapped in layer after layer",
        "shapes nested one inside the next, with {Object} at the very centre",
    ),
    "progression": (
        "the same {Object} repeated in a row, growing at every step",
        "a line of {Object}s whose size changes steadily from one to the next",
        "{Object} copies getting smaller and smaller along a line",
        "a sequence of {Object}s, each one a step bigger than the last",
        "{Object}s in a row scaling up or down in regular steps",
    ),
    "mirror": (
        "{Object} facing its own reflection across a central line",
        "{Object} and its mirror image on either side of an axis",
        "a reflected pair: {Object} flipped across a line of symmetry",
        "{Object} mirrored, as if seen in water or glass",
        "two halves of a symmetric picture, {Object} and its reflection",
    ),
    "odd_one_out": (
        "a grid of identical {Object}s broken by a single {Other}",
        "rows of the same {Object} with one {Other} that does not belong",
        "one {Other} hidden among many identical {Object}s in a grid",
        "a repeated pattern of {Object}s with a single odd one out, {Other}",
        "every cell holds {Object} except one, which holds {Other}",
    ),
    "stack": (
        "{Object}s piled on top of one another into a tower",
        "a vertical stack with {Object} resting on top of the pile",
        "{Object}s balanced one upon another, bottom to top",
        "a tower of things stacked up, {Object} sitting on {Other}",
        "a pile of {Object}s, each resting on the one below",
    ),
    "orbit": (
        "{Object}s arranged in a ring around a central {Center}",
        "a circle of {Object}s evenly spaced around {Center}",
        "{Center} in the middle, surrounded by a ring of {Object}s",
        "{Object}s orbiting {Center} like satellites",
        "a wreath of identical {Object}s circling {Center}",
    ),
    "size_contrast": (
        "a giant {Object} towering over a tiny {Other}",
        "a huge {Object} next to a very small {Other}",
        "tiny {Other} dwarfed by an enormous {Object}",
        "{Object} many times larger than the {Other} beside it",
        "one very big {Object} and one very little {Other} side by side",
    ),
    "split": (
        "{Object} cut into pieces drifting apart",
        "{Object} sliced into parts with gaps between them",
        "the pieces of a broken {Object} pulled away from each other",
        "{Object} split apart along straight cuts",
        "fragments of {Object} separated, as if exploded",
    ),
    "occlusion": (
        "{Object} peeking out from behind {Cover}",
        "{Object} partly hidden behind {Cover}",
        "{Cover} in front, covering part of {Object}",
        "only part of {Object} shows, the rest is blocked by {Cover}",
        "{Object} half concealed by {Cover} overlapping it",
    ),
    "made_of": (
        "a large {Shape} made of many small {Object}s",
        "many tiny {Object}s packed together into the silhouette of a {Shape}",
        "a {Shape} built entirely out of small {Object}s, like a mosaic",
        "small {Object}s filling the form of one big {Shape}",
        "the whole body of a {Shape}, composed of dozens of little {Object}s",
    ),
    "face": (
        "{Object}s arranged so that they form a face",
        "two {Object}s as eyes above a {Other} nose and a mouth, making a face",
        "a face made of things: {Object} eyes, {Other} for a nose, a mouth below",
        "{Object}s placed like eyes, nose and mouth, so the picture looks like a face",
        "a funny face whose features are {Object}s and {Other}s",
    ),
    "outline": (
        "{Object}s tracing the outline of a {Shape}",
        "copies of {Object} lined up along the edge of a {Shape}, empty inside",
        "a {Shape} drawn only by its border of small {Object}s",
        "many {Object}s placed around the contour of a {Shape}, nothing in the middle",
        "a hollow {Shape} whose edge is marked out by repeated {Object}s",
    ),
    "none": (
        "a background with nothing arranged on it",
        "{Object} alone, with no other shape to relate to",
        "a few unrelated {Object}s scattered at random",
        "an empty scene",
    ),
}

def sample_caption(family: str, rng: np.random.Generator) -> str:
    """One of the family's templates, drawn with ``rng``."""
    options = TEMPLATES[family]
    return options[int(rng.integers(len(options)))]
