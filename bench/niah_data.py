"""Needle-in-a-haystack material: a haystack of uint8 frames (a video file's sampled frames or a generated
video), a needle frame (a word rendered into it, or a given image pasted into it; PIL), the 4-option
question about it, and the scoring rule (the first option letter A-D of the answer)."""
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


def load_needle_image(path: str) -> np.ndarray:
    """The needle image file as uint8 RGB [H, W, 3]; ValueError naming the problem."""
    from vxl.engine.image import load_image
    return load_image(path).numpy()


def paste_image(frame: np.ndarray, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A copy of `frame` [H, W, 3] with `image` resized (aspect ratio kept, PIL bicubic) to the largest size
    fitting in scale x (H, W), pasted at the centre; the rest of the frame keeps the haystack's pixels."""
    from PIL import Image
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    height, width = frame.shape[:2]
    fit = min(scale * height / image.shape[0], scale * width / image.shape[1])
    nh, nw = max(1, min(height, round(image.shape[0] * fit))), max(1, min(width, round(image.shape[1] * fit)))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC), dtype=np.uint8)
    out = frame.copy()
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def make_image_question(question: str, options: list[str], correct: str,
                        rng: np.random.Generator) -> tuple[str, list[str], str]:
    """(question text, the 4 options shuffled, the correct letter) for an image needle: the user's question
    and options; the shuffle moves the right answer between letters from trial to trial."""
    options = list(options)
    rng.shuffle(options)
    answer = LETTERS[options.index(correct)]
    lines = [f"{letter}) {opt}" for letter, opt in zip(LETTERS, options)]
    return question + "\n" + "\n".join(lines) + "\n" + INSTRUCTION, options, answer


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
