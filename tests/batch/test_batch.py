"""`vxl batch` in-process on the shipped demo model: rows equal `LLM.generate` on the same requests, each
video is encoded once for all its questions, a job killed with SIGKILL resumes to every row exactly once
with the same answers, and bad lines (bad JSON, missing or broken video, bad ratio, unknown field, bad
sampling value, duplicate id) become error rows while the job goes on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from batch_data import MAX_TOKENS, assert_same_answers, job_requests, make_videos, read_rows, reference, write_jsonl

from vxl import LLM
from vxl.batch import JobDefaults, OutputFile, make_units, read_items, run_job
from vxl.cli import main

DEFAULTS = JobDefaults(sampling={"max_tokens": MAX_TOKENS})


@pytest.fixture(scope="module")
def llm():
    return LLM("demo", device="cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("batch_videos"), 4)


def count_encodes(monkeypatch, llm) -> list:
    """Patch this engine core's encode to record the video of each job."""
    calls, encode = [], llm.core.encode
    monkeypatch.setattr(llm.core, "encode", lambda request, **kw: calls.append(request["video"]) or encode(request, **kw))
    return calls


def run(llm, input_path, out_path, **kw) -> list[dict]:
    with OutputFile(str(out_path)) as out:
        run_job(llm, make_units(read_items(str(input_path), DEFAULTS), kw.pop("group", True)), out.write,
                use_tqdm=False, **kw)
    return read_rows(out_path)


@pytest.mark.parametrize("max_videos", [1, 3])
def test_rows_equal_generate_and_each_video_is_encoded_once(llm, videos, tmp_path, monkeypatch, max_videos):
    reqs = job_requests(videos)
    ref = reference(llm, reqs)
    calls = count_encodes(monkeypatch, llm)
    rows = run(llm, write_jsonl(tmp_path / "in.jsonl", reqs), tmp_path / "out.jsonl", max_videos=max_videos)
    assert_same_answers(rows, ref)
    assert sorted(calls) == sorted(videos)          # 3 questions each: one encode per video
    assert llm.kv_cache_usage()["num_used_pages"] == 0    # every memory released


def test_without_grouping_the_answers_are_the_same(llm, videos, tmp_path, monkeypatch):
    reqs = job_requests(videos[:2], num_questions=2)
    calls = count_encodes(monkeypatch, llm)
    rows = run(llm, write_jsonl(tmp_path / "in.jsonl", reqs), tmp_path / "out.jsonl", group=False)
    assert_same_answers(rows, reference(llm, reqs))
    assert calls == []


def test_bad_lines_become_error_rows_and_the_job_goes_on(llm, videos, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    good = {"prompt": "Which colour appeared first?", "video": videos[0], "num_frames": 16, "compression_ratio": 4}
    lines = [good, "{bad json", {"prompt": "q", "video": str(tmp_path / "missing.mp4")},
             {**good, "compression_ratio": 0}, {**good, "colour": "red"}, {**good, "temperature": -1},
             [1, 2], {**good, "request_id": "line1"},
             {"prompt": "a", "video": str(broken)}, {"prompt": "b", "video": str(broken)}]
    rows = {r["request_id"]: r for r in run(llm, write_jsonl(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl")}
    assert len(rows) == len(lines)
    # line 8 names itself "line1": it keeps that id, and line 1 (no id of its own) is named around it
    for rid in ("line1", "line1~"):
        assert rows[rid]["error"] is None and rows[rid]["finish_reason"] in ("stop", "length")
    expected = {"line2": "not valid JSON", "line3": "video file not found", "line4": "compression_ratio must be",
                "line5": "unknown field(s) ['colour']", "line6": "temperature must be >= 0",
                "line7": "not a JSON object", "line9": "cannot encode the video", "line10": "cannot encode the video"}
    for rid, message in expected.items():
        assert rows[rid]["finish_reason"] == "error" and message in rows[rid]["error"], rows[rid]
    assert llm.kv_cache_usage()["num_used_pages"] == 0


def test_a_torn_last_line_is_cut_and_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"request_id": "a", "text": "x"}\n{"request_id": "b", "te')
    with OutputFile(str(path)) as out:
        assert out.done == {"a"}
        with pytest.raises(ValueError, match="another job is writing"):
            OutputFile(str(path))
        assert out.write({"request_id": "b"}) and not out.write({"request_id": "a"})
    assert [r["request_id"] for r in read_rows(path)] == ["a", "b"]


def test_resume_after_sigkill_gives_every_row_once_with_the_same_answers(llm, videos, tmp_path):
    reqs = job_requests(videos, num_questions=2)
    input_path, out_path = write_jsonl(tmp_path / "in.jsonl", reqs), tmp_path / "out.jsonl"
    args = ["batch", input_path, "--out", str(out_path), "--model", "demo", "--device", "cpu",
            "--max-tokens", str(MAX_TOKENS), "--chunk-videos", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "vxl.cli", *args], stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not (out_path.exists() and out_path.read_text().count("\n") >= 1):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    before = read_rows(out_path)
    assert 1 <= len(before) < len(reqs)              # killed part way
    with open(out_path, "a") as f:                   # as if the kill had hit mid-write
        f.write('{"request_id": "v3-q1", "text": "torn')
    assert main(args) == 0
    rows = read_rows(out_path)
    assert rows[:len(before)] == before              # the rows already there are kept, not redone
    assert_same_answers(rows, reference(llm, reqs))
    assert main(args) == 0 and read_rows(out_path) == rows     # a finished job reruns to nothing


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err
    input_path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    assert main(["batch", input_path, "--out", str(tmp_path / "o.jsonl"), "--num-replicas", "2"]) == 1
    assert "need --ray" in capsys.readouterr().err


def test_unparseable_lines_become_rows_and_never_take_a_users_id(tmp_path):
    from vxl.batch.jobs import JobDefaults
    lines = ["[" * 100_000, '{"prompt": "a", "request_id": "line1"}', "not json", '{"prompt": "b"}',
             '{"prompt": "c", "request_id": "line3"}', '{"prompt": "d", "request_id": "line1"}']
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = read_items(str(path), JobDefaults())
    by_id = {item.request_id: item for item in items}
    assert len(by_id) == len(lines)                                       # every line one row, ids unique
    assert by_id["line1"].error is None and by_id["line1"].request["prompt"] == "a"
    assert by_id["line3"].error is None and by_id["line3"].request["prompt"] == "c"
    assert "nested too deeply" in by_id["line1~"].error and "not valid JSON" in by_id["line3~"].error
    assert by_id["line4"].error is None and by_id["line4"].request["request_id"] == "line4"
    assert "duplicate request_id 'line1' (first on line 2)" in by_id["line6"].error
