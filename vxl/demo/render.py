"""Frame rendering for the synthetic long-video tasks, in numpy: drifting low-saturation backgrounds with
moving grey blobs (the haystack), and inserted cards (a saturated colour with a black shape or
seven-segment digit) on chosen frames (the needles). Everything is a pure function of its arguments
and a numpy Generator.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# saturated colours, far from the dull backgrounds; names start with distinct letters
COLOURS = {"red": (230, 30, 30), "green": (40, 200, 40), "blue": (40, 70, 250), "yellow": (245, 230, 30),
           "cyan": (30, 225, 235), "pink": (255, 110, 190), "orange": (255, 140, 10), "white": (250, 250, 250)}
SHAPES = ("circle", "square", "triangle", "diamond", "plus")
DIGITS = tuple(str(d) for d in range(10))
# seven-segment layout: a top, b top-right, c bottom-right, d bottom, e bottom-left, f top-left, g middle
SEGMENTS = {"0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd", "6": "afgedc",
            "7": "abc", "8": "abcdefg", "9": "abcdfg"}


@dataclass(frozen=True)
class Thing:
    """A needle: a coloured shape, or a coloured digit (`shape` is then None)."""
    colour: str
    shape: str | None = None
    digit: str | None = None


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (yy, xx), float32 [S, S] each, read-only (made once per size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = yy + 0.5, xx + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


@dataclass
class Blob:
    """A grey disc bouncing across the frames: its radius, its centre on every frame (float32 [T, 2]) and
    its grey level."""
    radius: float
    pos: np.ndarray
    value: float


@dataclass
class Background:
    """The random draws of one background (`draw_background`); `render_background` paints any run of its
    frames. Frames are float64: the gradient's weights are (float32 + float64 projection)."""
    base: np.ndarray        # float64 [S, S]: 0.5 + the gradient's projection
    sway: np.ndarray        # float32 [T]
    delta: np.ndarray       # float32 [3]: c1 - c0
    texture: np.ndarray     # float32 [S, S, 3]: c0 + the coarse texture
    flicker: np.ndarray     # float32 [T]
    blobs: list[Blob]

    @property
    def num_frames(self) -> int:
        return len(self.sway)


def draw_background(rng: np.random.Generator, num_frames: int, size: int) -> Background:
    """The draws of a background of num_frames frames: a two-colour gradient that sways over time, a fixed
    coarse texture, per-frame flicker and 1-3 grey blobs bouncing around; all dull so needles stand out."""
    yy, xx = _grid(size)
    c0 = (rng.uniform(20, 130) + rng.uniform(-15, 15, 3)).astype(np.float32)
    c1 = (rng.uniform(20, 130) + rng.uniform(-15, 15, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    proj = ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)) / size       # (S, S)
    t = np.arange(num_frames, dtype=np.float32)
    sway = 0.35 * np.sin(2 * np.pi * (t / rng.uniform(20, 120) + rng.uniform()))          # (T,)
    cell = size // 8
    texture = rng.normal(0, 6, (8, 8, 3)).astype(np.float32).repeat(cell, 0).repeat(cell, 1)
    flicker = rng.normal(0, 2.5, num_frames).astype(np.float32)
    blobs = [_draw_blob(rng, t, size) for _ in range(int(rng.integers(1, 4)))]
    return Background(0.5 + proj, sway.astype(np.float32), c1 - c0, c0 + texture, flicker, blobs)


def _draw_blob(rng: np.random.Generator, t: np.ndarray, size: int) -> Blob:
    radius = rng.uniform(4, 9)
    start, vel = rng.uniform(0, size, 2), rng.uniform(-1.5, 1.5, 2)
    span = size - 2 * radius
    pos = (start[None] + vel[None] * t[:, None]) % (2 * span)
    pos = (radius + np.where(pos > span, 2 * span - pos, pos)).astype(np.float32)  # (T, 2): bounce
    return Blob(radius, pos, rng.uniform(40, 140))


def render_background(bg: Background, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """float64 [stop - start, S, S, 3]: frames start..stop-1 of `bg` (into `out` when given). Every value
    is the same whichever run of frames is painted."""
    size = bg.base.shape[0]
    if out is None:
        out = np.empty((stop - start, size, size, 3))
    w = bg.base[None] + bg.sway[start:stop, None, None]                                   # (n, S, S)
    np.clip(w, 0, 1, out=w)
    for c in range(3):      # channel by channel: numpy is slow broadcasting over an inner axis of 3
        np.multiply(w, bg.delta[c], out=out[..., c])
    out += bg.texture[None]
    out += bg.flicker[start:stop, None, None, None]
    yy, xx = _grid(size)
    for blob in bg.blobs:
        dy2 = (yy[:, 0][None] - blob.pos[start:stop, :1]) ** 2                            # (n, S)
        dx2 = (xx[0][None] - blob.pos[start:stop, 1:]) ** 2
        mask = dy2[:, :, None] + dx2[:, None, :] <= blob.radius ** 2                      # (n, S, S)
        for c in range(3):
            np.copyto(out[..., c], blob.value, where=mask)
    return out


def background(rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """float64 [T, S, S, 3]: every frame of a background drawn by `draw_background`."""
    bg = draw_background(rng, num_frames, size)
    return render_background(bg, 0, num_frames)


def shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """bool [S, S]: `shape` of half-extent r centred at (cy, cx)."""
    yy, xx = _grid(size)
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "triangle":      # apex up, base at the bottom
        return (dy <= 0.8 * r) & (np.abs(dx) <= 0.6 * (dy + r))
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "plus":
        arm = 0.3 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def digit_mask(digit: str, size: int, cy: float, cx: float, height: float) -> np.ndarray:
    """bool [S, S]: a seven-segment `digit` of the given height centred at (cy, cx)."""
    yy, xx = _grid(size)
    w, h = 0.6 * height, height
    th = 0.2 * w
    top, left = cy - h / 2, cx - w / 2
    boxes = {"a": (top, top + th, left, left + w), "d": (top + h - th, top + h, left, left + w),
             "g": (cy - th / 2, cy + th / 2, left, left + w),
             "f": (top, cy, left, left + th), "b": (top, cy, left + w - th, left + w),
             "e": (cy, top + h, left, left + th), "c": (cy, top + h, left + w - th, left + w)}
    mask = np.zeros((size, size), dtype=bool)
    for seg in SEGMENTS[digit]:
        y0, y1, x0, x1 = boxes[seg]
        mask |= (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    return mask


def draw_thing(rng: np.random.Generator, frame: np.ndarray, thing: Thing) -> None:
    """Draw `thing` in place on one float frame [S, S, 3] as an inserted card (the needle frames of a
    needle-in-a-haystack video): the whole frame in the thing's colour, its shape or digit in black at a
    random size and position."""
    size = frame.shape[0]
    if thing.shape is not None:
        r = rng.uniform(0.22, 0.32) * size
        cy, cx = rng.uniform(r, size - r, 2)
        mask = shape_mask(thing.shape, size, cy, cx, r)
    else:
        h = rng.uniform(0.55, 0.75) * size
        cy, cx = rng.uniform(h / 2, size - h / 2), rng.uniform(0.3 * h, size - 0.3 * h)
        mask = digit_mask(thing.digit, size, cy, cx, h)
    colour = np.clip(np.array(COLOURS[thing.colour], dtype=np.float32) + rng.uniform(-12, 12, 3), 0, 255)
    frame[:] = colour * rng.uniform(0.9, 1.0, (size, 1, 1)).astype(np.float32)     # a faint vertical shade
    frame[mask] = rng.uniform(10, 40)


def to_uint8(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Round and saturate float frames (in place) to uint8 (into `out` when given)."""
    frames += 0.5
    np.clip(frames, 0, 255, out=frames)
    if out is None:
        return frames.astype(np.uint8)
    out[...] = frames
    return out


CHUNK_FRAMES = 16      # frames painted at a time: float64 work buffers of 1.5 MB at 64 px, held in cache


def render_video(bg: Background, cards: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    """uint8 [T, S, S, 3]: the background `bg` with each card frame (float [S, S, 3], from `card`) over
    frames first..first+length-1 of its (first, length, frame) entry, later cards over earlier ones.
    Painted CHUNK_FRAMES at a time; the same values as painting every frame at once, then to_uint8."""
    num_frames, size = bg.num_frames, bg.base.shape[0]
    video = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    buf = np.empty((CHUNK_FRAMES, size, size, 3))
    for start in range(0, num_frames, CHUNK_FRAMES):
        stop = min(start + CHUNK_FRAMES, num_frames)
        chunk = render_background(bg, start, stop, buf[:stop - start])
        for first, length, frame in cards:
            lo, hi = max(first, start), min(first + length, stop)
            if lo < hi:
                chunk[lo - start:hi - start] = frame
        to_uint8(chunk, video[start:stop])
    return video


def card(seed: int, thing: Thing, size: int) -> np.ndarray:
    """float64 [S, S, 3]: `thing`'s card drawn by draw_thing with np.random.default_rng(seed) (a card covers
    its whole frame, so it is the same on any background)."""
    frame = np.empty((size, size, 3))
    draw_thing(np.random.default_rng(seed), frame, thing)
    return frame
