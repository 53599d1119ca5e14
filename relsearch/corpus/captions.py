"""Anonymous caption templates, several per family.

Captions name roles through placeholders ({Object}, {Other}, {Container}, {Center}, {Cover},
{Shape}) and
never the concrete object, so a caption describes the relation and nothing the objects look like.
"""

from __future__ import annotations

import numpy as np

PLACEHOLDERS = ("{Object}", "{Other}", "{Container}", "{Center}", "{Cover}", "{Shape}", "{Scene}", "{Surface}",
                "{Frame}", "{Space}", "{Parts}", "{Lines}", "{Background}", "{Material}")

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
    # Relations of real photographs, made by relation-making edits (relsearch.corpus.photo_edits).
    "reflection": (
        "{Scene} mirrored upside down in the {Surface} beneath it",
        "{Scene} and its reflection in still water below the horizon",
        "a landscape doubled by its upside-down image on a shiny surface",
        "{Scene} above a line, the same {Scene} flipped and darker beneath it",
    ),
    "symmetry": (
        "{Object} balanced symmetrically on both sides of a central axis",
        "a picture whose left half mirrors its right half",
        "{Object} perfectly symmetric about a vertical line through the middle",
        "two matching halves of {Object} facing each other across the centre",
    ),
    "repetition": (
        "many similar {Object}s repeated in a regular pattern",
        "rows and columns of the same {Object}, like tiles",
        "{Object} repeated again and again across the whole picture",
        "a grid filled with copies of one {Object}",
    ),
    "frame_within_frame": (
        "{Scene} seen through an opening of {Frame} that frames it",
        "a view through a window or doorway, framed by the dark wall around it",
        "{Scene} visible through an arch in the {Frame}",
        "a picture inside the picture: {Scene} framed by an opening",
    ),
    "small_in_vast": (
        "one tiny {Object} alone in a vast empty {Space}",
        "a small {Object} lost in a huge empty expanse",
        "a single little {Object} far away in an open {Space} with nothing else",
        "mostly empty {Space}, with one tiny {Object} in it",
    ),
    "radial": (
        "{Parts} radiating outward from a central {Center}",
        "rays spreading from one point in the middle like spokes of a wheel",
        "petals or spokes arranged all around a centre",
        "a pattern that fans out in every direction from {Center}",
    ),
    "vanishing_point": (
        "{Lines} running away from the viewer and converging to one distant point",
        "a road or rails narrowing toward the horizon",
        "parallel lines meeting at a single point far ahead",
        "{Lines} that recede into the distance and come together",
    ),
    "silhouette": (
        "a dark {Object} silhouetted against a bright {Background}",
        "a black shape of {Object} in front of a glowing sky",
        "{Object} seen only as a dark outline against the light",
        "dark land and {Object} cut out against a bright sunset",
    ),
    "horizontal_bands": (
        "{Scene} stacked in horizontal bands, one above another",
        "layers of different textures stacked from bottom to top",
        "the picture divided into horizontal strips, like ground, sea and sky",
        "stripes of {Scene} lying one over the next across the whole width",
    ),
    "close_texture": (
        "the surface of {Material} filling the whole frame, seen up close",
        "a close-up of {Material}, texture from edge to edge with no subject",
        "{Material} seen so near that only its texture remains",
        "a pattern of {Material} covering the entire picture",
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
