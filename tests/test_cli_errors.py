"""`vxl` on bad input, as a user runs it (in a fresh directory): every subcommand given a bad model, file or
value exits non-zero, prints no traceback, and its last stderr line names the problem; `--debug`, before or
after the subcommand, shows the traceback instead.

The cases call `vxl.cli.main` in this process (as `python -m vxl.cli` does, with what the interpreter would
do with its result: the exit status, or an escaping exception's traceback on stderr); an error and a
--debug traceback also run the real entry point in a subprocess, checking the process's exit status and
stderr end to end."""
from __future__ import annotations

import subprocess
import sys
import traceback

import pytest
import torch

from helpers import moving_square_frames, write_mp4
from vxl.cli import main


def vxl(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`python -m vxl.cli ARGS` in `cwd`, a subprocess."""
    return subprocess.run([sys.executable, "-m", "vxl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


@pytest.fixture
def vxl_in_process(monkeypatch, capsys):
    """`vxl ARGS` in `cwd` through `vxl.cli.main`, in this process: what `python -m vxl.cli` would exit
    with and print (an exception that escapes main prints its traceback on stderr and exits 1, as the
    interpreter does)."""
    def run(args: list[str], cwd) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        trace = ""
        try:
            code = main(list(args))
        except SystemExit as e:       # argparse's usage errors
            code = 0 if e.code is None else e.code
        except Exception:
            code, trace = 1, traceback.format_exc()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["vxl", *args], code, out, err + trace)
    return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_mp4(d / "clip.mp4", moving_square_frames(num_frames=8, height=48, width=64), lossless=False)
    (d / "bad.jsonl").write_text('{"prompt": "Q", "video": "clip.mp4"}\n{"prompt": "Q",\n')
    (d / "list.jsonl").write_text("[1, 2]\n")
    (d / "empty.jsonl").write_text("\n")
    (d / "notckpt").mkdir()
    (d / "notckpt" / "notes.txt").write_text("not a checkpoint")
    (d / "badcfg").mkdir()
    (d / "badcfg" / "config.json").write_text("{oops")
    return d


GEN = ["generate", "clip.mp4", "--prompt", "Q", "--no-progress"]
CASES = {
    "requests missing": (["generate", "--model", "tiny", "--requests", "missing.jsonl"], "missing.jsonl"),
    "requests malformed": (["generate", "--model", "tiny", "--requests", "bad.jsonl"], "bad.jsonl line 2"),
    "requests not objects": (["generate", "--model", "tiny", "--requests", "list.jsonl"], "not a JSON object"),
    "requests empty": (["generate", "--model", "tiny", "--requests", "empty.jsonl"], "no requests"),
    "requests a directory": (["generate", "--model", "tiny", "--requests", "notckpt"], "notckpt"),
    "model not a checkpoint": (GEN + ["--model", "notckpt"], "notckpt"),
    "model config malformed": (GEN + ["--model", "badcfg"], "config.json"),
    "model missing": (GEN + ["--model", "no/such/dir"], "no/such/dir"),
    "max tokens 0": (GEN + ["--model", "tiny", "--max-tokens", "0"], "--max-tokens"),
    "num frames not an int": (GEN + ["--model", "tiny", "--num-frames", "many"], "--num-frames"),
    "device unknown": (GEN + ["--model", "tiny", "--device", "banana"], "--device"),
    "temperature negative": (GEN + ["--model", "tiny", "--temperature", "-1"], "temperature"),
    "no inputs": (["generate", "--model", "tiny"], "needs input files"),
    "no prompt": (["generate", "clip.mp4", "--model", "tiny"], "--prompt"),
    "plan memory": (["plan", "--gpu-memory", "banana"], "--gpu-memory"),
    "plan memory 0": (["plan", "--gpu-memory", "0GiB"], "--gpu-memory"),
    "plan ratio": (["plan", "--compression-ratio", "0"], "--compression-ratio"),
    "plan model": (["plan", "--model", "notckpt"], "notckpt"),
    "demo frames": (["demo", "--model", "tiny", "--num-frames", "0"], "--num-frames"),
    "demo ratio": (["demo", "--model", "tiny", "--compression-ratio", "-2"], "--compression-ratio"),
    "demo model": (["demo", "--model", "notckpt"], "notckpt"),
    "models extra": (["models", "--bogus"], "--bogus"),
    "no command": ([], "command"),
}


def assert_one_line_error(done: subprocess.CompletedProcess, names: str) -> None:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("vxl") and "error: " in last and names in last, done.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(workdir, vxl_in_process, case):
    args, names = CASES[case]
    assert_one_line_error(vxl_in_process(args, workdir), names)


def test_bad_input_is_one_line_from_the_command(workdir):
    """The real entry point, a process: an error raised while running the command (the model is loaded)."""
    args, names = CASES["model missing"]
    assert_one_line_error(vxl(args, workdir), names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(workdir, vxl_in_process):
    assert_one_line_error(vxl_in_process(GEN + ["--model", "tiny", "--device", "cuda"], workdir),
                          "CUDA is not available")


def test_missing_video_is_reported_per_request(workdir, vxl_in_process):
    done = vxl_in_process(["generate", "clip.mp4", "missing.mp4", "--prompt", "Q", "--model", "tiny",
                           "--max-tokens", "2", "--no-progress"], workdir)
    assert_one_line_error(done, "missing.mp4")
    assert "1 of 2 requests failed" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("clip.mp4: ") and "missing.mp4: error: video file not found" in lines[-1]


@pytest.mark.parametrize("args", [["--debug", "plan", "--model", "notckpt"],
                                  ["plan", "--model", "notckpt", "--debug"],
                                  ["generate", "--requests", "missing.jsonl", "--debug", "--model", "tiny"]])
def test_debug_shows_the_traceback(workdir, vxl_in_process, args):
    done = vxl_in_process(args, workdir)
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ValueError: ")


def test_debug_shows_the_traceback_from_the_command(workdir):
    done = vxl(["plan", "--model", "notckpt", "--debug"], workdir)
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ValueError: ")


def test_good_commands_still_succeed(workdir, vxl_in_process):
    assert vxl_in_process(["models"], workdir).returncode == 0
    assert vxl_in_process(["--debug", "plan", "--gpu-memory", "24GB"], workdir).returncode == 0
