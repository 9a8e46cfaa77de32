"""The shipped demo checkpoint: official layout, small, loads with vxl.LLM, and answers far above chance
on fresh needle videos (retrieval, 64 frames, ratio 16, greedy)."""
from __future__ import annotations

import json
import os

import pytest

import vxl
from vxl import LLM
from vxl.demo import describe_demo, run_demo
from vxl.demo.tasks import make_sample
from demo_model.evaluate import ask

TEST_TAG = 4_400_001        # seeds no training, evaluation table or demo draws
DEMO_DIR = os.path.join(os.path.dirname(vxl.__file__), "data", "demo")     # where the package ships it


@pytest.fixture(scope="module")
def llm():
    return LLM("demo", device="cpu", dtype="float32", attention_backend="torch")


def test_official_layout_and_size():
    path = DEMO_DIR
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json", "clip/config.json",
                 "clip/preprocessor_config.json"):
        assert os.path.exists(os.path.join(path, name)), name
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "llava_qwen" and cfg["mm_vision_tower"] == "clip"
    assert cfg["beacon_ratio"] == [2, 4, 8, 12, 16] and cfg["beacon_window"] == 48
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    sizes = [os.path.getsize(os.path.join(path, name)) for name in shards]
    assert len(shards) == 3 and max(sizes) < 2 * 2**20 and sum(sizes) < 8 * 2**20


def test_beats_chance_by_a_wide_margin(llm):
    assert llm.model.tokens_per_frame == 4
    samples = [make_sample("retrieval", 64, [TEST_TAG, i]) for i in range(12)]
    records = ask(llm, samples, ratio=16)
    accuracy = sum(r["correct"] for r in records) / len(records)
    assert len(records) == 24 and accuracy >= 0.75, (accuracy, records)      # chance: 0.25


def test_orders_and_counts_above_chance(llm):
    """Ordering: the other colour is always an option, so knowing which colours appeared gives only 50%."""
    ordering = ask(llm, [make_sample("ordering", 64, [TEST_TAG, 100 + i]) for i in range(8)], ratio=16)
    # counting is the weakest skill (about 40%): 64 questions, so that passing by guessing is unlikely (~5%)
    counting = ask(llm, [make_sample("counting", 32, [TEST_TAG, 200 + i]) for i in range(64)], ratio=16)
    acc = {name: sum(r["correct"] for r in recs) / len(recs) for name, recs in
           (("ordering", ordering), ("counting", counting))}
    assert len(ordering) == 16 and len(counting) == 64
    assert acc["ordering"] >= 0.75 and acc["counting"] >= 22 / 64, acc            # chance: 0.25


def test_run_demo_reports_question_and_answers(llm):
    result = run_demo(llm, seed=1, num_frames=128)
    assert {"question", "options", "right_answer", "model_answer", "is_correct"} <= set(result)
    assert len(result["options"]) == 4 and result["metrics"]["num_frames"] == 128
    assert result["metrics"]["num_vst_tokens"] == 128 * 4 // 16
    assert "right answer:" in describe_demo(result)
