"""One renderer per relation family (see the relation table of the corpus).

A renderer draws one scene onto an opaque RGBA canvas and returns the identities of the objects
it used, in role order ({Object} first). Everything outside the relation (sizes, position, small
rotations, counts inside the family's range) is drawn from the scene's own random generator, so
a scene is a pure function of (canvas, objects, generator state).

Renderers take objects from an :class:`ObjectSource` front to back, so a benchmark group that
passes the same source to every family shows the same objects in every family.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from relsearch.corpus.art import ArtObject, paste_clipped
from relsearch.corpus.realism import current_style, shadow_of

ObjectSource = Callable[[int], list[ArtObject]]
"""``take(n)`` -> the first ``n`` objects of the scene's object list (distinct when possible)."""

FAMILIES = (
    "nesting",
    "progression",
    "mirror",
    "odd_one_out",
    "stack",
    "orbit",
    "size_contrast",
    "split",
    "occlusion",
    "made_of",
    "face",
    "outline",
)
#: The nine families of the first corpus (benchmarks compare against them).
CLASSIC_FAMILIES = FAMILIES[:9]
NONE_FAMILY = "none"
MARGIN = 0.04  # share of each side kept clear of objects
# Object counts each family draws at most, so a group can hold enough distinct objects.
MAX_OBJECTS = 6


# ---------------------------------------------------------------------------------------------
# drawing helpers


def _sized(obj: ArtObject | Image.Image, longest: float, angle: float = 0.0) -> Image.Image:
    """The object scaled so its longer side is ``longest`` px, then rotated by ``angle`` deg."""
    im = obj.image if isinstance(obj, ArtObject) else obj
    scale = max(2.0, longest) / max(im.width, im.height)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    out = im.resize((w, h), Image.BILINEAR)
    if abs(angle) > 0.5:
        out = out.rotate(angle, resample=Image.BILINEAR, expand=True)
    return out


def _fit_box(im: Image.Image, box_w: float, box_h: float) -> float:
    """Longest-side length that makes ``im``'s aspect fit inside a box."""
    aspect = im.width / im.height
    return min(box_w, box_h * aspect) if aspect >= 1 else min(box_h, box_w / aspect)


def _halo(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The object on a thin outline of one colour, so it separates from what lies under it."""
    radius = max(1, round(max(im.size) / 60))
    alpha = im.getchannel("A").filter(ImageFilter.MaxFilter(2 * radius + 1))
    light = rng.random() < 0.6
    lo, hi = (215, 256) if light else (0, 50)
    shade = tuple(int(v) for v in rng.integers(lo, hi, 3))
    out = Image.new("RGBA", im.size, (*shade, 0))
    out.putalpha(alpha)
    out.alpha_composite(im)
    return out


def _paste(canvas: Image.Image, im: Image.Image, x: float, y: float, shadow: bool = True) -> None:
    """Alpha-composite ``im`` with its top-left corner at (x, y), clipped to the canvas.

    Under a realistic drawing style the object first casts a soft drop shadow.
    """
    if shadow:
        cast = shadow_of(im, current_style())
        if cast is not None:
            sh, dx, dy = cast
            _paste(canvas, sh, x + dx, y + dy, shadow=False)
    paste_clipped(canvas, im, round(x), round(y))


def _paste_center(canvas: Image.Image, im: Image.Image, cx: float, cy: float) -> None:
    _paste(canvas, im, cx - im.width / 2, cy - im.height / 2)


def _tilt(rng: np.random.Generator, max_deg: float = 12.0) -> float:
    """A small rotation; half the scenes stay upright."""
    return float(rng.uniform(-max_deg, max_deg)) if rng.random() < 0.5 else 0.0


def _place_layout(
    canvas: Image.Image,
    rng: np.random.Generator,
    items: list[tuple[Image.Image, float, float]],
    overflow: bool = False,
) -> None:
    """Paste items given by centres in a local frame, shifted to a random spot that fits.

    With ``overflow`` (families whose relation survives a cut edge) and a realistic style, the
    layout may also slide partly out of the frame.
    """
    w, h = canvas.size
    x0 = min(cx - im.width / 2 for im, cx, _ in items)
    x1 = max(cx + im.width / 2 for im, cx, _ in items)
    y0 = min(cy - im.height / 2 for im, _, cy in items)
    y1 = max(cy + im.height / 2 for im, _, cy in items)
    mx, my = MARGIN * w, MARGIN * h
    room_x, room_y = w - 2 * mx - (x1 - x0), h - 2 * my - (y1 - y0)
    spill = current_style().overflow if overflow else 0.0
    if spill > 0:
        ox, oy = spill * (x1 - x0), spill * (y1 - y0)
        mx, my = mx - ox, my - oy
        room_x, room_y = room_x + 2 * ox, room_y + 2 * oy
    dx = mx - x0 + (rng.uniform(0, room_x) if room_x > 0 else room_x / 2)
    dy = my - y0 + (rng.uniform(0, room_y) if room_y > 0 else room_y / 2)
    for im, cx, cy in items:
        _paste_center(canvas, im, cx + dx, cy + dy)


def _ids(objs: list[ArtObject]) -> list[str]:
    out: list[str] = []
    for o in objs:
        if o.ident not in out:
            out.append(o.ident)
    return out


# ---------------------------------------------------------------------------------------------
# families


def render_nesting(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """3-4 concentric layers, each object scaled to sit inside the one around it."""
    layers = int(rng.integers(3, 5))
    objs = take(layers)
    # The most solid silhouettes make the best containers: outermost first.
    objs = sorted(objs, key=lambda o: -o.fill)
    w, h = canvas.size
    side = min(w, h) * (1 - 2 * MARGIN)
    outer = float(rng.uniform(0.8, 1.0)) * side
    ratio = float(rng.uniform(0.5, 0.62))
    angle = _tilt(rng, 8)
    images = []
    size = outer
    outline = rng.random() < 0.7
    for k, o in enumerate(objs):
        im = _sized(o, _fit_box(o.image, size, size), angle)
        images.append(_halo(im, rng) if outline and k else im)
        size *= ratio
    spill = current_style().overflow  # the outer layer may be cut by the frame
    cx = w / 2 + rng.uniform(-1, 1) * max(0.0, (w - images[0].width) / 2 - MARGIN * w + spill * images[0].width)
    cy = h / 2 + rng.uniform(-1, 1) * max(0.0, (h - images[0].height) / 2 - MARGIN * h + spill * images[0].height)
    for im in images:
        _paste_center(canvas, im, cx, cy)
    return _ids(objs)


def render_progression(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """3-6 copies of one object in a line, size changing by a steady ratio, any direction."""
    (obj,) = take(1)
    n = int(rng.integers(3, 7))
    ratio = float(rng.uniform(1.25, 1.6))
    if rng.random() < 0.5:
        ratio = 1 / ratio
    # Any direction: left-right, right-left, vertical or diagonal, growing or shrinking.
    theta = float(rng.choice([0, 90, 180, 270, 45, 135, 225, 315]) + rng.uniform(-12, 12))
    ux, uy = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    angle = _tilt(rng, 10)
    sizes = [ratio**i for i in range(n)]
    gap = float(rng.uniform(0.15, 0.5))
    # Layout in unit lengths, then scale to the canvas.
    asp = obj.aspect
    ext = [(s * min(1, asp), s * min(1, 1 / asp)) for s in sizes]  # (w, h) per item
    pos = [0.0]
    for i in range(1, n):
        half_prev = abs(ux) * ext[i - 1][0] / 2 + abs(uy) * ext[i - 1][1] / 2
        half_cur = abs(ux) * ext[i][0] / 2 + abs(uy) * ext[i][1] / 2
        pos.append(pos[-1] + half_prev + half_cur + gap * max(sizes[i - 1], sizes[i]))
    xs = [p * ux for p in pos]
    ys = [p * uy for p in pos]
    bw = max(x + e[0] / 2 for x, e in zip(xs, ext)) - min(x - e[0] / 2 for x, e in zip(xs, ext))
    bh = max(y + e[1] / 2 for y, e in zip(ys, ext)) - min(y - e[1] / 2 for y, e in zip(ys, ext))
    w, h = canvas.size
    scale = min(w * (1 - 3 * MARGIN) / bw, h * (1 - 3 * MARGIN) / bh, 0.6 * min(w, h) / max(sizes))
    scale *= float(rng.uniform(0.8, 1.0))
    items = [(_sized(obj, s * scale, angle), x * scale, y * scale) for s, x, y in zip(sizes, xs, ys)]
    _place_layout(canvas, rng, items)
    return [obj.ident]


def render_mirror(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """An object and its reflection across a vertical or horizontal axis, drawn or implied."""
    vertical_axis = bool(rng.random() < 0.6)
    cands = take(3)
    # A symmetric object reflected looks like a plain copy: prefer the asymmetric one.
    obj = max(cands, key=lambda o: o.asym_x if vertical_axis else o.asym_y)
    w, h = canvas.size
    along, across = (h, w) if vertical_axis else (w, h)
    axis = across / 2 + float(rng.uniform(-0.06, 0.06)) * across
    gap = float(rng.uniform(0.01, 0.1)) * across
    half = min(axis, across - axis) - gap - MARGIN * across
    angle = _tilt(rng, 20)
    probe = obj.image.rotate(angle, expand=True) if angle else obj.image
    bw, bh = (half, along * (1 - 2 * MARGIN)) if vertical_axis else (along * (1 - 2 * MARGIN), half)
    im = _sized(obj, _fit_box(probe, bw, bh) * float(rng.uniform(0.6, 0.95)), angle)
    mirrored = im.transpose(Image.FLIP_LEFT_RIGHT if vertical_axis else Image.FLIP_TOP_BOTTOM)
    if rng.random() < 0.3:
        # A faded reflection, like on water or glass.
        a = np.asarray(mirrored).copy()
        a[..., 3] = (a[..., 3] * rng.uniform(0.45, 0.85)).astype(np.uint8)
        mirrored = Image.fromarray(a, "RGBA")
    extent_across = im.width if vertical_axis else im.height
    extent_along = im.height if vertical_axis else im.width
    room = along - extent_along - 2 * MARGIN * along
    c_along = along / 2 + (rng.uniform(-0.5, 0.5) * room if room > 0 else 0.0)
    c1 = axis - gap - extent_across / 2
    c2 = axis + gap + extent_across / 2
    if rng.random() < 0.5:  # which side holds the original is not the relation
        im, mirrored = mirrored, im
    if vertical_axis:
        _paste_center(canvas, im, c1, c_along)
        _paste_center(canvas, mirrored, c2, c_along)
    else:
        _paste_center(canvas, im, c_along, c1)
        _paste_center(canvas, mirrored, c_along, c2)
    if rng.random() < 0.5:
        draw = ImageDraw.Draw(canvas)
        shade = (
            tuple(int(v) for v in rng.integers(0, 80, 3))
            if rng.random() < 0.7
            else (tuple(int(v) for v in rng.integers(190, 256, 3)))
        )
        width = int(rng.integers(1, 4))
        dashed = rng.random() < 0.4
        length = along
        step = max(4, int(length / rng.integers(12, 30)))
        starts = range(0, int(length), 2 * step) if dashed else [0]
        for s in starts:
            e = s + step if dashed else length
            if vertical_axis:
                draw.line([(axis, s), (axis, e)], fill=(*shade, 255), width=width)
            else:
                draw.line([(s, axis), (e, axis)], fill=(*shade, 255), width=width)
    return [obj.ident]


def render_odd_one_out(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """A regular grid of one object with exactly one cell holding a different object."""
    a, b = take(2)
    w, h = canvas.size
    choices = [(r, c) for r in range(2, 5) for c in range(2, 6) if 6 <= r * c <= 16]
    # Prefer grids whose cells are near square on this canvas.
    weights = np.array([1.0 / (1.0 + abs(math.log((w / c) / (h / r)))) ** 3 for r, c in choices])
    rows, cols = choices[int(rng.choice(len(choices), p=weights / weights.sum()))]
    cell = min(w * (1 - 2 * MARGIN) / cols, h * (1 - 2 * MARGIN) / rows)
    fill = float(rng.uniform(0.6, 0.85))
    angle = _tilt(rng, 10)
    im_a = _sized(a, _fit_box(a.image, cell * fill, cell * fill), angle)
    im_b = _sized(b, _fit_box(b.image, cell * fill, cell * fill), angle)
    odd = int(rng.integers(rows * cols))
    x0 = (w - cols * cell) / 2
    y0 = (h - rows * cell) / 2
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        _paste_center(canvas, im_b if k == odd else im_a, x0 + (c + 0.5) * cell, y0 + (r + 0.5) * cell)
    return _ids([a, b])


def _column_profile(im: Image.Image, top: bool) -> np.ndarray:
    """Per column, the first opaque row from the top (or the last from the bottom); -1 if none."""
    a = np.asarray(im)[..., 3] > 60
    any_ = a.any(axis=0)
    if top:
        idx = a.argmax(axis=0)
    else:
        idx = a.shape[0] - 1 - a[::-1].argmax(axis=0)
    return np.where(any_, idx, -1)


def render_stack(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """3-6 objects piled vertically, each dropped until it rests on the pile below."""
    n = int(rng.integers(3, 7))
    if rng.random() < 0.5:
        objs = take(1) * n  # a pile of copies
    else:
        pool = take(min(n, MAX_OBJECTS))
        objs = [pool[i % len(pool)] for i in range(n)]
        order = rng.permutation(n)
        objs = [objs[i] for i in order]
    w, h = canvas.size
    rel = rng.uniform(0.7, 1.3, size=n)
    heights = [min(1.0, 1 / o.aspect) * r for o, r in zip(objs, rel)]
    widths = [min(1.0, o.aspect) * r for o, r in zip(objs, rel)]
    scale = min(h * (1 - 2 * MARGIN) / sum(heights), w * 0.7 / max(widths))
    scale *= float(rng.uniform(0.85, 1.0))
    images = [_sized(o, r * scale, _tilt(rng, 5)) for o, r in zip(objs, rel)]
    # Drop each object onto a height map of the pile (local frame, floor at y=0, up negative).
    span = int(sum(im.width for im in images)) * 2 + 8
    origin = span // 2
    surface = np.zeros(span, np.float64)  # top of the pile per column, in local y
    placed: list[tuple[Image.Image, float, float]] = []
    cx = 0.0
    for i, im in enumerate(images):
        if i:
            cx += float(rng.uniform(-0.15, 0.15)) * min(im.width, placed[-1][0].width)
        left = int(round(origin + cx - im.width / 2))
        bottom = _column_profile(im, top=False)
        cols = np.arange(im.width) + left
        valid = bottom >= 0
        if not valid.any():  # a faint object with no solid pixel: rest its box on the pile
            bottom, valid = np.full(im.width, im.height - 1), np.ones(im.width, bool)
        # Top edge y such that the lowest opaque pixel of each column sits on the surface.
        y_top = float(np.min(surface[cols[valid]] - bottom[valid] - 1))
        placed.append((im, cx, y_top + im.height / 2))
        topp = _column_profile(im, top=True)
        ok = topp >= 0
        surface[cols[ok]] = np.minimum(surface[cols[ok]], y_top + topp[ok])
    if rng.random() < 0.3:
        # A ground line under the pile.
        draw = ImageDraw.Draw(canvas)
        gy = h - MARGIN * h
        shade = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.line([(MARGIN * w, gy), (w - MARGIN * w, gy)], fill=(*shade, 255), width=2)
        base_w = max(im.width for im, _, _ in placed)
        dx = (
            float(rng.uniform(w * MARGIN + base_w / 2, w - w * MARGIN - base_w / 2))
            if (w - 2 * w * MARGIN > base_w)
            else w / 2
        )
        for im, x, y in placed:
            _paste_center(canvas, im, x + dx, y + gy - 1)
    else:
        _place_layout(canvas, rng, placed)
    return _ids(objs)


def render_orbit(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """4-10 copies of one object evenly spaced on a ring around a central object."""
    sat, center = take(2)
    n = int(rng.integers(4, 11))
    w, h = canvas.size
    half = min(w, h) / 2 * (1 - 2 * MARGIN)
    sat_size = min(0.75 * 2 * math.pi * 0.7 * half / n, 0.3 * half) * float(rng.uniform(0.75, 1.0))
    radius = half - sat_size / 2
    radius *= float(rng.uniform(0.85, 1.0))
    center_size = 2 * (radius - sat_size / 2) * float(rng.uniform(0.55, 0.8))
    stretch = float(rng.uniform(0.9, 1.1))
    rx = radius * min(stretch, (w / 2 - MARGIN * w - sat_size / 2) / radius)
    ry = radius / stretch
    phase = float(rng.uniform(0, 2 * math.pi))
    radial = rng.random() < 0.3
    base = _sized(sat, sat_size)
    cx = w / 2 + rng.uniform(-1, 1) * max(0.0, w / 2 - rx - sat_size / 2 - MARGIN * w)
    cy = h / 2 + rng.uniform(-1, 1) * max(0.0, h / 2 - ry - sat_size / 2 - MARGIN * h)
    c_im = _sized(center, _fit_box(center.image, center_size, center_size), _tilt(rng, 10))
    _paste_center(canvas, c_im, cx, cy)
    for k in range(n):
        t = phase + 2 * math.pi * k / n
        im = base.rotate(-math.degrees(t) - 90, resample=Image.BILINEAR, expand=True) if radial else base
        _paste_center(canvas, im, cx + rx * math.cos(t), cy + ry * math.sin(t))
    return _ids([sat, center])


def render_size_contrast(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """One very large object beside one very small one."""
    big, small = take(2)
    if rng.random() < 0.5:
        big, small = small, big
    w, h = canvas.size
    ratio = float(rng.uniform(0.1, 0.2))
    side_by_side_x = w >= h * 0.8 or rng.random() < 0.3
    if side_by_side_x:
        box_w, box_h = w * (1 - 2 * MARGIN) / (1 + ratio + 0.05), h * (1 - 2 * MARGIN)
    else:
        box_w, box_h = w * (1 - 2 * MARGIN), h * (1 - 2 * MARGIN) / (1 + ratio + 0.05)
    big_len = _fit_box(big.image, box_w, box_h) * float(rng.uniform(0.8, 1.0))
    im_big = _sized(big, big_len, _tilt(rng, 8))
    im_small = _sized(small, max(8.0, big_len * ratio), _tilt(rng, 15))
    gap = float(rng.uniform(0.02, 0.1)) * big_len
    flip = rng.random() < 0.5
    if side_by_side_x:
        dx = (im_big.width + im_small.width) / 2 + gap
        # Stand both on one baseline, or let the small one float at a random height.
        if rng.random() < 0.6:
            dy = (im_big.height - im_small.height) / 2
        else:
            dy = float(rng.uniform(-0.5, 0.5)) * (im_big.height - im_small.height)
        items = [(im_big, 0.0, 0.0), (im_small, -dx if flip else dx, dy)]
    else:
        dy = (im_big.height + im_small.height) / 2 + gap
        dx = float(rng.uniform(-0.4, 0.4)) * max(0, im_big.width - im_small.width)
        items = [(im_big, 0.0, 0.0), (im_small, dx, -dy if flip else dy)]
    _place_layout(canvas, rng, items, overflow=True)
    return _ids([big, small])


def render_split(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """One object cut into 2-6 pieces by straight cuts, the pieces pulled apart."""
    (obj,) = take(1)
    w, h = canvas.size
    grids = [(1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 2), (2, 3), (3, 2)]
    nu, nv = grids[int(rng.integers(len(grids)))]
    if rng.random() < 0.5:
        nu, nv = nv, nu
    gap_rel = float(rng.uniform(0.1, 0.22))
    side = min(w, h) * (1 - 2 * MARGIN)
    length = side / (1 + gap_rel * (max(nu, nv) - 1) * 1.2)
    im = _sized(obj, _fit_box(obj.image, length, length) * float(rng.uniform(0.85, 1.0)), _tilt(rng, 10))
    arr = np.asarray(im)
    alpha = arr[..., 3].astype(np.float64)
    ys, xs = np.mgrid[0 : im.height, 0 : im.width].astype(np.float64)
    theta = math.radians(float(rng.choice([0.0, 90.0, float(rng.uniform(0, 180))])))
    u = np.array([math.cos(theta), math.sin(theta)])
    v = np.array([-u[1], u[0]])
    pu, pv = xs * u[0] + ys * u[1], xs * v[0] + ys * v[1]

    def bins(proj: np.ndarray, k: int) -> np.ndarray:
        if k == 1:
            return np.zeros(proj.shape, np.int64)
        # Cuts at jittered mass quantiles, so no piece is empty.
        vals = proj[alpha > 60]
        if vals.size < k:
            vals = proj[alpha > 0] if (alpha > 0).sum() >= k else proj.ravel()
        qs = (np.arange(1, k) + rng.uniform(-0.25, 0.25, k - 1)) / k
        cuts = np.quantile(vals, np.sort(qs))
        return np.searchsorted(cuts, proj)

    bu, bv = bins(pu, nu), bins(pv, nv)
    gap = gap_rel * length
    items = []
    for i in range(nu):
        for j in range(nv):
            mask = (bu == i) & (bv == j) & (alpha > 0)
            if not mask.any():
                continue
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            piece = arr[y0:y1, x0:x1].copy()
            piece[..., 3] = np.where(mask[y0:y1, x0:x1], piece[..., 3], 0)
            p = Image.fromarray(piece, "RGBA")
            drift = _tilt(rng, 6)
            if drift:
                p = p.rotate(drift, resample=Image.BILINEAR, expand=True)
            off = (i - (nu - 1) / 2) * gap * u + (j - (nv - 1) / 2) * gap * v
            off = off * float(rng.uniform(0.85, 1.15))
            items.append((p, (x0 + x1) / 2 + off[0], (y0 + y1) / 2 + off[1]))
    _place_layout(canvas, rng, items)
    return [obj.ident]


def render_occlusion(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """One object partly hidden behind another; a good part of it stays visible."""
    back, cover = take(2)
    w, h = canvas.size
    side = min(w, h)
    size_back = side * float(rng.uniform(0.4, 0.58))
    im_back = _sized(back, size_back, _tilt(rng, 10))
    im_cover = _sized(cover, size_back * float(rng.uniform(0.8, 1.25)), _tilt(rng, 10))
    if rng.random() < 0.4:
        im_cover = _halo(im_cover, rng)
    phi = float(rng.uniform(0, 2 * math.pi))
    ux, uy = math.cos(phi), math.sin(phi)
    a_back = np.asarray(im_back)[..., 3] > 60
    a_cov = np.asarray(im_cover)[..., 3] > 60
    n_back = max(1, int(a_back.sum()))
    target = float(rng.uniform(0.3, 0.6))  # share of the back object hidden
    best = None
    for frac in np.linspace(0.1, 0.9, 9):
        d = frac * (max(im_back.size) + max(im_cover.size)) / 2
        # Overlap of the two masks with the cover's centre shifted by d along (ux, uy).
        ox = round(d * ux + (im_back.width - im_cover.width) / 2)
        oy = round(d * uy + (im_back.height - im_cover.height) / 2)
        x0, y0 = max(0, ox), max(0, oy)
        x1, y1 = min(im_back.width, ox + im_cover.width), min(im_back.height, oy + im_cover.height)
        hidden = 0.0
        if x1 > x0 and y1 > y0:
            hidden = (a_back[y0:y1, x0:x1] & a_cov[y0 - oy : y1 - oy, x0 - ox : x1 - ox]).sum() / n_back
        score = abs(hidden - target)
        if best is None or score < best[0]:
            best = (score, d)
    d = best[1] if best else 0.0
    items = [(im_back, 0.0, 0.0), (im_cover, d * ux, d * uy)]
    _place_layout(canvas, rng, items, overflow=True)
    return _ids([back, cover])


def render_made_of(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """The silhouette of one large object, built from many small copies of another."""
    small, shape = take(2)
    w, h = canvas.size
    spill = current_style().overflow
    side_w, side_h = w * (1 - 2 * MARGIN), h * (1 - 2 * MARGIN)
    longest = _fit_box(shape.image, side_w, side_h) * float(rng.uniform(0.8, 1.0)) * (1 + spill)
    mask_im = _sized(shape, longest, _tilt(rng, 8)).getchannel("A")
    mask = np.asarray(mask_im) > 100
    mh, mw = mask.shape
    area = float(mask.sum())
    # Cell size for a target count of copies; denser cells where the silhouette is thin.
    target = int(rng.integers(25, 90))
    cell = max(6.0, math.sqrt(max(area, 1.0) / target))
    copy_len = cell * float(rng.uniform(0.85, 1.15))
    angle_step = rng.random() < 0.3  # copies at random angles, as a mosaic of loose pieces
    base = _sized(small, copy_len)
    ox = rng.uniform(0, cell)
    oy = rng.uniform(0, cell)
    hex_rows = rng.random() < 0.5  # staggered rows, like a packed mosaic
    spots: list[tuple[float, float]] = []
    row = 0
    y = oy
    while y < mh:
        x = ox + (cell / 2 if hex_rows and row % 2 else 0.0)
        while x < mw:
            jx, jy = x + rng.uniform(-0.12, 0.12) * cell, y + rng.uniform(-0.12, 0.12) * cell
            xi, yi = int(np.clip(jx, 0, mw - 1)), int(np.clip(jy, 0, mh - 1))
            if mask[yi, xi]:
                spots.append((jx, jy))
            x += cell
        y += cell * (0.87 if hex_rows else 1.0)
        row += 1
    if len(spots) < 12:  # a thin silhouette: fall back to a finer grid over the mask pixels
        ys, xs = np.nonzero(mask)
        pick = rng.choice(len(ys), size=min(len(ys), 16), replace=False)
        spots = [(float(xs[i]), float(ys[i])) for i in pick]
        base = _sized(small, max(6.0, min(mw, mh) / 6))
    items = []
    for sx, sy in spots:
        im = base.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR, expand=True) if angle_step else base
        items.append((im, sx - mw / 2, sy - mh / 2))
    _place_layout(canvas, rng, items, overflow=True)
    return _ids([small, shape])


def render_face(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """Objects where the eyes, nose and mouth of a face would be: the arrangement reads as a face."""
    eye, nose, mouth = take(3)
    w, h = canvas.size
    size = min(w, h) * (1 - 2 * MARGIN) * float(rng.uniform(0.75, 1.0))
    fw, fh = size * float(rng.uniform(0.8, 0.95)), size
    tilt = math.radians(_tilt(rng, 15))
    eye_len = fw * float(rng.uniform(0.2, 0.3))
    eye_dx = fw * float(rng.uniform(0.2, 0.27))
    eye_y = -fh * float(rng.uniform(0.15, 0.25))
    nose_len = fw * float(rng.uniform(0.14, 0.22))
    mouth_y = fh * float(rng.uniform(0.25, 0.33))
    eye_im = _sized(eye, _fit_box(eye.image, eye_len, eye_len))
    # Eyes are one object twice; often the second is its mirror image, as real eyes are.
    eye_r = eye_im.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else eye_im
    parts: list[tuple[Image.Image, float, float]] = [(eye_im, -eye_dx, eye_y), (eye_r, eye_dx, eye_y)]
    parts.append((_sized(nose, _fit_box(nose.image, nose_len, nose_len * 1.3)), 0.0, fh * 0.05))
    if rng.random() < 0.5:
        # One wide object as the mouth.
        m = _sized(mouth, _fit_box(mouth.image, fw * 0.5, fh * 0.16))
        parts.append((m, 0.0, mouth_y))
    else:
        # A smile of small copies along an arc.
        k = int(rng.integers(4, 8))
        m = _sized(mouth, fw * float(rng.uniform(0.08, 0.12)))
        span = fw * 0.55
        curve = fh * float(rng.uniform(0.04, 0.1))
        for i in range(k):
            t = i / (k - 1) - 0.5
            parts.append((m, t * span, mouth_y - 4 * curve * t * t))  # ends raised: a smile
    items = []
    c, s_ = math.cos(tilt), math.sin(tilt)
    for im, px, py in parts:
        items.append((im, px * c - py * s_, px * s_ + py * c))
    if rng.random() < 0.5:
        # A head outline around the features: an ellipse drawn in one colour.
        draw = ImageDraw.Draw(canvas)
        shade = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx = w / 2 + rng.uniform(-1, 1) * max(0.0, (w - fw) / 2 - MARGIN * w)
        cy = h / 2 + rng.uniform(-1, 1) * max(0.0, (h - fh * 1.1) / 2 - MARGIN * h)
        rx, ry = fw * 0.62, fh * 0.55
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=(*shade, 255),
                     width=max(2, round(size / 60)))
        for im, px, py in items:
            _paste_center(canvas, im, cx + px, cy + py)
    else:
        _place_layout(canvas, rng, items)
    return _ids([eye, nose, mouth])


def _outline_points(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points evenly spaced by arc length along a unit-size heart, star or triangle."""
    t = np.linspace(0, 2 * math.pi, 2000, endpoint=False)
    if kind == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        poly = np.stack([x, y], 1)
    else:
        k = 5 if kind == "star" else 3
        inner = float(rng.uniform(0.38, 0.5)) if kind == "star" else None
        corners = []
        for i in range(k):
            a = -math.pi / 2 + 2 * math.pi * i / k
            corners.append((math.cos(a), math.sin(a)))
            if inner is not None:
                b = a + math.pi / k
                corners.append((inner * math.cos(b), inner * math.sin(b)))
        c = np.array(corners + corners[:1])
        seg = np.linspace(0, 1, 400, endpoint=False)[:, None]
        poly = np.concatenate([c[i] + (c[i + 1] - c[i]) * seg for i in range(len(c) - 1)])
    d = np.r_[0, np.cumsum(np.linalg.norm(np.diff(poly, axis=0, append=poly[:1]), axis=1))]
    want = (np.arange(n) / n + rng.uniform(0, 1 / n)) * d[-1]
    idx = np.searchsorted(d, want).clip(0, len(poly) - 1)
    pts = poly[idx]
    pts = pts - (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


def render_outline(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """10 or more copies of one object along the outline of a heart, star or triangle."""
    (obj,) = take(1)
    kind = ("heart", "star", "triangle")[int(rng.integers(3))]
    n = int(rng.integers(10, 25)) if kind != "star" else int(rng.integers(15, 26))
    w, h = canvas.size
    half = min(w, h) / 2 * (1 - 2 * MARGIN)
    # Copies sized so neighbours along the outline do not merge into a line.
    perimeter = {"heart": 6.0, "star": 7.5, "triangle": 5.2}[kind]
    copy_len = min(0.22 * 2 * half, 0.8 * perimeter * half / n) * float(rng.uniform(0.75, 1.0))
    radius = (half - copy_len / 2) * float(rng.uniform(0.85, 1.0))
    pts = _outline_points(kind, n, rng)
    rot = math.radians(_tilt(rng, 15))
    c, s_ = math.cos(rot), math.sin(rot)
    stretch = float(rng.uniform(0.9, 1.1))
    base = _sized(obj, copy_len, _tilt(rng, 10))
    items = [(base, (x * c - y * s_) * radius * stretch, (x * s_ + y * c) * radius / stretch) for x, y in pts]
    _place_layout(canvas, rng, items)
    return [obj.ident]


def render_none(canvas: Image.Image, take: ObjectSource, rng: np.random.Generator) -> list[str]:
    """No relation: the bare background, one lone object, or a few scattered objects."""
    kind = int(rng.integers(3))
    if kind == 0:
        return []
    w, h = canvas.size
    side = min(w, h)
    objs = take(1) if kind == 1 else take(int(rng.integers(2, 5)))
    for o in objs:
        im = _sized(o, side * float(rng.uniform(0.18, 0.4)), _tilt(rng, 20))
        x = rng.uniform(0, max(1.0, w - im.width))
        y = rng.uniform(0, max(1.0, h - im.height))
        _paste(canvas, im, x, y)
    return _ids(objs)


RENDERERS: dict[str, Callable[[Image.Image, ObjectSource, np.random.Generator], list[str]]] = {
    "nesting": render_nesting,
    "progression": render_progression,
    "mirror": render_mirror,
    "odd_one_out": render_odd_one_out,
    "stack": render_stack,
    "orbit": render_orbit,
    "size_contrast": render_size_contrast,
    "split": render_split,
    "occlusion": render_occlusion,
    "made_of": render_made_of,
    "face": render_face,
    "outline": render_outline,
    NONE_FAMILY: render_none,
}
