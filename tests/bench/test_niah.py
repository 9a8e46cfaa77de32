"""The video needle-in-a-haystack harness: needle rendering, insertion, questions and scoring, and the
whole run on a tiny grid with the built-in model (random weights: only the harness is checked), with text
and image needles."""
import json
import os
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from bench import niah  # noqa: E402
from bench.niah_data import (  # noqa: E402
    LETTERS,
    extract_letter,
    insert_needle,
    load_haystack,
    make_image_question,
    make_question,
    needle_index,
    paste_image,
    render_needle,
)
from helpers import moving_square_frames, write_mp4  # noqa: E402


def test_render_needle_writes_dark_text_on_white():
    frame = render_needle("ROCKET", 112, 112)
    assert frame.shape == (112, 112, 3) and frame.dtype == np.uint8
    dark = (frame < 80).all(axis=2)
    assert 0.01 < dark.mean() < 0.5                       # visible text, not a filled frame
    cols = np.where(dark.any(axis=0))[0]
    assert cols.min() > 0 and cols.max() < 111            # fits the frame


@pytest.mark.parametrize("num_frames,depth,idx", [(10, 0.0, 0), (10, 1.0, 9), (11, 0.5, 5), (1, 0.7, 0)])
def test_insert_needle_positions(num_frames, depth, idx):
    hay = np.random.default_rng(0).integers(0, 255, (num_frames, 8, 8, 3), dtype=np.uint8)
    needle = np.zeros((8, 8, 3), dtype=np.uint8)
    frames, at = insert_needle(hay, needle, depth)
    assert at == idx == needle_index(num_frames, depth)
    assert (frames[at] == 0).all() and not (hay[at] == 0).all()       # the haystack itself is untouched
    others = [i for i in range(num_frames) if i != at]
    assert (frames[others] == hay[others]).all()


def test_make_question_has_four_options_and_the_right_letter():
    rng = np.random.default_rng(3)
    for word in ("TIGER", "ZEBRA", "APPLE"):
        question, options, answer = make_question(word, rng)
        assert len(set(options)) == 4 and options[LETTERS.index(answer)] == word
        for letter, opt in zip(LETTERS, options):
            assert f"{letter}) {opt.title()}" in question


@pytest.mark.parametrize("text,letter", [("B", "B"), (" C) Tiger", "C"), ("D. Apple", "D"), ("The answer is A.", "A"),
                                         ("Apple", None), ("", None), ("E", None), ("ABBA", None)])
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter


def test_haystack_from_a_video_file(tmp_path):
    path = write_mp4(tmp_path / "hay.mp4", moving_square_frames(30), lossless=False)
    frames = load_haystack(path, 8, 0, 0, seed=0)
    assert frames.shape == (8, 120, 160, 3) and frames.dtype == np.uint8
    assert load_haystack(None, 5, 20, 30, seed=0).shape == (5, 20, 30, 3)


def read_result(out_dir, stem):
    with open(os.path.join(out_dir, f"{stem}_heatmap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out_dir, f"{stem}.json")) as f:
        return json.load(f)


def test_niah_tiny_grid_generate_scoring(tmp_path, capsys):
    rc = niah.main(["--frames", "8", "12", "--depths", "0", "1", "--trials", "1", "--max-tokens", "3",
                    "--out", str(tmp_path), "--name", "n"])
    assert rc == 0
    result = read_result(tmp_path, "n")
    assert result["chance"] == 0.25 and result["num_trials"] == 4 and result["num_errors"] == 0
    assert [(c["frames"], c["depth"]) for c in result["cells"]] == [(8, 0.0), (8, 1.0), (12, 0.0), (12, 1.0)]
    for t in result["trials"]:
        assert t["needle_frame"] == (0 if t["depth"] == 0 else t["frames"] - 1)
        assert t["correct"] == (t["predicted"] == t["answer"])
    assert 0.0 <= result["accuracy"] <= 1.0 and "vxl@" in result["header"]
    assert any("random weights" in n for n in result["notes"])
    assert "random weights" in capsys.readouterr().out


def test_niah_likelihood_scoring_always_picks_a_letter(tmp_path):
    rc = niah.main(["--frames", "8", "--depths", "0.5", "--trials", "3", "--scoring", "likelihood",
                    "--compression-ratio", "4", "--out", str(tmp_path), "--name", "l"])
    assert rc == 0
    result = read_result(tmp_path, "l")
    assert all(t["predicted"] in LETTERS for t in result["trials"])
    assert result["args"]["compression_ratio"] == 4


def write_needle_png(path, h=30, w=20):
    from PIL import Image
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = 255                                           # a red card with a blue bar
    img[h // 3:2 * h // 3, :, 2] = 255
    Image.fromarray(img).save(path)
    return str(path)


@pytest.mark.parametrize("scale,box", [(1.0, (0, 40, 16, 43)), (0.5, (10, 30, 23, 36))])
def test_paste_image_fits_centred_and_keeps_the_haystack_around(scale, box):
    frame = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    img = np.zeros((30, 20, 3), dtype=np.uint8)
    img[..., 0] = 255
    out = paste_image(frame, img, scale)
    top, bottom, left, right = box                      # 30x20 fit into scale x 40x60, centred
    red = np.abs(out[top:bottom, left:right].astype(int) - (255, 0, 0))
    assert red.max() <= 2                               # bicubic of a flat colour: rounding only
    mask = np.ones((40, 60), dtype=bool)
    mask[top:bottom, left:right] = False
    assert (out[mask] == frame[mask]).all() and not (frame[top:bottom, left:right] == (255, 0, 0)).all()


def test_image_question_shuffles_options_and_tracks_the_answer():
    rng = np.random.default_rng(0)
    options = ["Cat", "Dog", "Horse", "Bird"]
    answers = set()
    for _ in range(12):
        question, shuffled, answer = make_image_question("Which animal is shown?", options, "Dog", rng)
        assert sorted(shuffled) == sorted(options) and shuffled[LETTERS.index(answer)] == "Dog"
        assert question.startswith("Which animal is shown?\nA) ") and f"{answer}) Dog" in question
        answers.add(answer)
    assert len(answers) > 1


def test_needle_video_pastes_the_image_at_the_depth():
    hay = np.random.default_rng(2).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    img = np.full((16, 16, 3), 7, dtype=np.uint8)
    frames, idx = niah.needle_video({"depth": 0.5}, hay, img, 0.5)
    assert idx == 4 and (frames[4, 8:24, 8:24] == 7).all() and (frames[4, :8] == hay[4, :8]).all()
    assert (np.delete(frames, 4, axis=0) == np.delete(hay, 4, axis=0)).all()


def test_niah_image_needle_tiny_grid(tmp_path):
    needle = write_needle_png(tmp_path / "needle.png")
    rc = niah.main(["--frames", "8", "12", "--depths", "0", "1", "--trials", "2", "--max-tokens", "2",
                    "--needle-image", needle, "--needle-question", "What is on the card?",
                    "--needle-options", "A red card", "A cat", "A tree", "A boat", "--needle-answer", "A",
                    "--out", str(tmp_path), "--name", "img"])
    assert rc == 0
    result = read_result(tmp_path, "img")
    assert result["needle_kind"] == "image" and result["num_trials"] == 8 and result["num_errors"] == 0
    for t in result["trials"]:
        assert t["needle_image"] == needle and "word" not in t
        assert t["options"][LETTERS.index(t["answer"])] == "A red card"
        assert t["question"].startswith("What is on the card?\n")
        assert t["needle_frame"] == (0 if t["depth"] == 0 else t["frames"] - 1)
    assert result["args"]["needle_answer"] == "A red card"


@pytest.mark.parametrize("extra", [["--needle-image", "/no/such.png", "--needle-question", "Q", "--needle-options",
                                    "a", "b", "c", "d", "--needle-answer", "a"],
                                   ["--needle-question", "Q"],
                                   ["--needle-image", "NEEDLE"],
                                   ["--needle-image", "NEEDLE", "--needle-question", "Q", "--needle-options",
                                    "a", "b", "c", "a", "--needle-answer", "a"],
                                   ["--needle-image", "NEEDLE", "--needle-question", "Q", "--needle-options",
                                    "a", "b", "c", "d", "--needle-answer", "e"],
                                   ["--needle-image", "NOT_AN_IMAGE", "--needle-question", "Q", "--needle-options",
                                    "a", "b", "c", "d", "--needle-answer", "a"]])
def test_niah_rejects_bad_image_needles(tmp_path, extra):
    needle = write_needle_png(tmp_path / "n.png")
    (tmp_path / "text.png").write_text("not an image")
    argv = [needle if a == "NEEDLE" else str(tmp_path / "text.png") if a == "NOT_AN_IMAGE" else a for a in extra]
    with pytest.raises(SystemExit) as exc:
        niah.main(["--frames", "4", "--out", str(tmp_path)] + argv)
    assert exc.value.code != 0 and "needle" in str(exc.value.code)


@pytest.mark.parametrize("argv", [["--nope"], ["--depths", "1.5"], ["--trials", "0"], ["--video", "/no/such.mp4"]])
def test_niah_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as exc:
        niah.main(argv)
    assert exc.value.code != 0
