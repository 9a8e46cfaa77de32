"""`vxl batch --ray` on a local Ray cluster started here (2 CPUs, 2 actors, the demo model): the same
answers as in-process (a partly written output is completed, each id once), and an actor killed mid-job
(`ray.kill`) is restarted by Ray Data and the job still gives every row exactly once. The cluster is shut
down after."""
from __future__ import annotations

import json
import os
import time

import pytest
from batch_data import (MAX_TOKENS, assert_same_answers, job_requests, make_videos, read_rows, reference,
                        write_jsonl)

from vxl import LLM
from vxl.batch import JobDefaults
from vxl.batch.jobs import output_row
from vxl.cli import main

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
from vxl.integrations.ray import VXLPredictor, build_pipeline  # noqa: E402

ENGINE = {"model": "demo", "device": "cpu"}
DEFAULTS = JobDefaults(sampling={"max_tokens": MAX_TOKENS})
MAX_SECONDS = 240        # generous for 2 CPUs: actor start + model load + a dozen short answers


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_videos")
    reqs = job_requests(make_videos(root, 3), num_questions=2)
    reqs.append({"request_id": "bad", "prompt": "q", "video": str(root / "missing.mp4")})
    ref = reference(LLM("demo", device="cpu"), [r for r in reqs if r["request_id"] != "bad"])
    return write_jsonl(root / "in.jsonl", reqs), ref


def check_rows(rows: list[dict], ref: dict) -> None:
    bad = [r for r in rows if r["request_id"] == "bad"]
    assert len(bad) == 1 and "video file not found" in bad[0]["error"]
    assert_same_answers([r for r in rows if r["request_id"] != "bad"], ref)


def test_vxl_batch_ray_gives_the_in_process_answers_and_resumes(cluster, job, tmp_path):
    input_path, ref = job
    out_path = tmp_path / "out.jsonl"
    first = json.loads(json.dumps(output_row(ref["v0-q0"])))
    write_jsonl(out_path, [first])              # a job stopped after one row: --ray completes it
    t0 = time.monotonic()
    assert main(["batch", input_path, "--out", str(out_path), "--ray", "--num-replicas", "2", "--no-progress",
                 "--max-tokens", str(MAX_TOKENS), "--model", "demo", "--device", "cpu"]) == 0
    assert time.monotonic() - t0 < MAX_SECONDS
    rows = read_rows(out_path)
    assert rows[0] == first
    check_rows(rows, ref)


def killing_predictor(marker: str) -> type:
    """A VXLPredictor whose actor kills itself (ray.kill) on its first batch holding request "v1-q0"; the
    marker file makes that happen once across restarts. Defined here so Ray pickles it by value."""
    class KillOnce(VXLPredictor):
        def __call__(self, batch):
            if "v1-q0" in str(batch["unit"][0]) and not os.path.exists(marker):
                open(marker, "w").close()
                ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
                time.sleep(60)          # never reached: the kill ends this process
            return super().__call__(batch)
    return KillOnce


def test_a_killed_actor_is_restarted_and_every_row_appears_once(cluster, job, tmp_path):
    input_path, ref = job
    marker = str(tmp_path / "killed")
    t0 = time.monotonic()
    ds = build_pipeline(input_path, ENGINE, num_replicas=2, defaults=DEFAULTS, predictor=killing_predictor(marker))
    rows = [json.loads(r["row"]) for r in ds.take_all()]
    assert time.monotonic() - t0 < MAX_SECONDS
    assert os.path.exists(marker)            # the kill happened
    check_rows(rows, ref)
