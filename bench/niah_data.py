"""Needle-in-a-haystack material: a haystack of uint8 frames (a video file's sampled frames or a generated
video), a needle frame with a word rendered into it (PIL), the 4-option question about it, and the
scoring rule (the first option letter A-D of the answer)."""
from __future__ import annotations

import re

import numpy as np

from bench.common import generate_frames

WORDS = ("APPLE", "TIGER", "CANDLE", "ROCKET", "GUITAR", "PENCIL", "ISLAND", "WINDOW", "BUTTER", "CASTLE",
         "DRAGON", "FOREST", "HAMMER", "JACKET", "LEMON", "MIRROR", "ORANGE", "PLANET", "RABBIT", "SILVER",
         "TOMATO", "VIOLIN", "WALNUT", "ZEBRA", "ANCHOR", "BRIDGE", "CAMERA", "DONKEY", "FALCON", "GARDEN")
LETTERS = "ABCD"
CHANCE = 1 / len(LETTERS)
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def load_haystack(video: str | None, num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [N, H, W, 3]: `num_frames` uniformly sampled frames of `video` (fewer if it is shorter), or a
    generated video of height x width."""
    if video is None:
        return generate_frames(num_frames, height, width, seed)
    from vxl.engine.video import open_video
    with open_video(video, num_frames) as source:
        chunks = [np.asarray(c) for c in source.iter_chunks(64)]
    return np.concatenate(chunks)


def render_needle(word: str, height: int, width: int) -> np.ndarray:
    """A frame [H, W, 3] uint8: black `word` in large letters, centred on white."""
    from PIL import Image, ImageDraw, ImageFont
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    size = max(8, height // 3)
    while True:
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        if right - left <= 0.9 * width or size <= 8:
            break
        size -= 2
    x = (width - (right - left)) // 2 - left
    y = (height - (bottom - top)) // 2 - top
    draw.text((x, y), word, fill="black", font=font)
    return np.asarray(img, dtype=np.uint8).copy()


def make_question(word: str, rng: np.random.Generator) -> tuple[str, list[str], str]:
    """(question text, the 4 options, the correct letter): `word` plus 3 other words, shuffled."""
    others = [w for w in WORDS if w != word]
    options = [word] + [str(w) for w in rng.choice(others, size=len(LETTERS) - 1, replace=False)]
    rng.shuffle(options)
    answer = LETTERS[options.index(word)]
    lines = [f"{letter}) {opt.title()}" for letter, opt in zip(LETTERS, options)]
    question = "What word was written in the video?\n" + "\n".join(lines) + "\n" + INSTRUCTION
    return question, options, answer


def needle_index(num_frames: int, depth: float) -> int:
    """Frame replaced by the needle: depth 0 = first frame, 1 = last."""
    return round(depth * (num_frames - 1))


def insert_needle(haystack: np.ndarray, needle: np.ndarray, depth: float) -> tuple[np.ndarray, int]:
    """A copy of the haystack with the frame at `depth` replaced by the needle, and that frame's index."""
    frames = haystack.copy()
    idx = needle_index(len(frames), depth)
    frames[idx] = needle
    return frames, idx


def extract_letter(text: str) -> str | None:
    """The answer's option letter: a leading A-D ("B", "B)", "B. Tiger"), else the first standalone A-D."""
    stripped = text.strip()
    if stripped and stripped[0] in LETTERS and (len(stripped) == 1 or not stripped[1].isalpha()):
        return stripped[0]
    m = re.search(r"\b([ABCD])\b", stripped)
    return m.group(1) if m else None
