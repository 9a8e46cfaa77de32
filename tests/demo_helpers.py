"""What tests of the synthetic demo videos share: which frames show a colour, and a well-formed question."""
from __future__ import annotations

import numpy as np

from vxl.demo.render import COLOURS
from vxl.demo.tasks import LETTERS


def frames_showing(frames: np.ndarray, colour: str) -> set[int]:
    """Frames with at least 40 pixels within 20 levels of `colour` (backgrounds never get that bright)."""
    near = np.abs(frames.astype(np.int16) - np.array(COLOURS[colour])).max(-1) <= 20
    return set(np.nonzero(near.sum((1, 2)) >= 40)[0].tolist())


def check_choice(qa, right: str) -> None:
    assert qa.right == right and len(qa.options) == 4 and len(set(qa.options)) == 4
    assert qa.options[LETTERS.index(qa.letter)] == right and qa.answer == f"{right} ({qa.letter})"
    for letter, option in zip(LETTERS, qa.options):
        assert f"\n{option} ({letter})\n" in qa.prompt
