"""The frame renderer: painting a video a chunk at a time gives the values of the plain whole-video
computation (written out here independently, as the renderer was before it was chunked), drawn from the
generator in the same order, so training and evaluation videos do not change with the chunking."""
from __future__ import annotations

import numpy as np
import pytest

from vxl.demo import render
from vxl.demo.render import Thing, card, draw_background, draw_thing, render_background, render_video, to_uint8


def reference_background(rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """The whole-video background in one pass over all frames, blobs drawn by boolean indexing."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    c0 = (rng.uniform(20, 130) + rng.uniform(-15, 15, 3)).astype(np.float32)
    c1 = (rng.uniform(20, 130) + rng.uniform(-15, 15, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    proj = ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)) / size
    t = np.arange(num_frames, dtype=np.float32)
    period = rng.uniform(20, 120)
    sway = 0.35 * np.sin(2 * np.pi * (t / period + rng.uniform()))
    cell = size // 8
    texture = rng.normal(0, 6, (8, 8, 3)).astype(np.float32).repeat(cell, 0).repeat(cell, 1)
    flicker = rng.normal(0, 2.5, num_frames).astype(np.float32)
    w = np.clip(0.5 + proj[None] + sway[:, None, None].astype(np.float32), 0, 1)
    frames = w[..., None] * (c1 - c0)
    frames += (c0 + texture)[None]
    frames += flicker[:, None, None, None]
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(4, 9)
        start, vel = rng.uniform(0, size, 2), rng.uniform(-1.5, 1.5, 2)
        span = size - 2 * radius
        pos = (start[None] + vel[None] * t[:, None]) % (2 * span)
        pos = (radius + np.where(pos > span, 2 * span - pos, pos)).astype(np.float32)
        mask = (yy[:, 0][None] - pos[:, :1]) ** 2
        mask = mask[:, :, None] + ((xx[0][None] - pos[:, 1:]) ** 2)[:, None, :] <= radius ** 2
        frames[mask] = rng.uniform(40, 140)
    return frames


@pytest.mark.parametrize("num_frames,size", [(1, 64), (15, 32), (16, 64), (17, 64), (47, 24), (100, 64)])
def test_background_matches_the_whole_video_computation(num_frames, size):
    seed = [num_frames, size, 3]
    ref_rng, rng = np.random.default_rng(seed), np.random.default_rng(seed)
    ref = reference_background(ref_rng, num_frames, size)
    bg = draw_background(rng, num_frames, size)
    assert rng.integers(2**62) == ref_rng.integers(2**62)          # the same draws, in the same order
    assert np.array_equal(render.background(np.random.default_rng(seed), num_frames, size), ref)
    # any run of frames paints the values of the whole video
    for start, stop in [(0, num_frames), (num_frames // 3, num_frames), (num_frames - 1, num_frames)]:
        assert np.array_equal(render_background(bg, start, stop), ref[start:stop])


@pytest.mark.parametrize("num_frames", [5, 16, 33, 70])
def test_render_video_matches_painting_every_frame(num_frames, monkeypatch):
    monkeypatch.setattr(render, "CHUNK_FRAMES", 7)          # cards crossing chunk edges, a short last chunk
    rng = np.random.default_rng([num_frames, 9])
    size = 32
    things = [Thing("red", shape="plus"), Thing("blue", digit="7"), Thing("green", shape="circle")]
    spans = [(0, 1), (1 + num_frames // 3, min(9, num_frames - 2 - num_frames // 3)), (num_frames - 1, 1)]
    looks = [int(s) for s in rng.integers(2**31, size=3)]
    bg = draw_background(np.random.default_rng([num_frames, 10]), num_frames, size)
    ref = reference_background(np.random.default_rng([num_frames, 10]), num_frames, size)
    for (first, length), thing, look in zip(spans, things, looks):
        for idx in range(first, first + length):
            draw_thing(np.random.default_rng(look), ref[idx], thing)
    cards = [(first, length, card(look, thing, size)) for (first, length), thing, look in zip(spans, things, looks)]
    video = render_video(bg, cards)
    assert video.dtype == np.uint8 and video.shape == (num_frames, size, size, 3)
    assert np.array_equal(video, to_uint8(ref))


def test_card_covers_the_whole_frame():
    """A card does not depend on what was under it (render_video pastes it over any background)."""
    thing = Thing("yellow", digit="3")
    a, b = np.zeros((64, 64, 3)), np.full((64, 64, 3), 200.0)
    draw_thing(np.random.default_rng(5), a, thing)
    draw_thing(np.random.default_rng(5), b, thing)
    assert np.array_equal(a, b) and np.array_equal(card(5, thing, 64), a)
