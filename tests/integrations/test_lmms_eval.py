"""The lmms-eval model `vxl` (vxl/integrations/lmms_eval.py) through lmms-eval's own registry, on lmms-eval
Instances about generated videos (no dataset download), on the shipped demo model: generate_until gives
`LLM.generate`'s answers and loglikelihood the scores of the teacher-forced continuation, each video encoded
once for all its instances.

Needs lmms-eval, which CI's main environment does not hold (its full dependency set cannot load beside the
CPU torch): `.ci/run` runs this file in a venv of its own (see there). Skipped where lmms-eval is missing.
"""
from __future__ import annotations

import pytest

lmms_models = pytest.importorskip("lmms_eval.models", reason="lmms-eval is not installed (.ci/run installs it)")
from lmms_eval.api.instance import Instance  # noqa: E402

from helpers import write_mp4  # noqa: E402
from vxl import SamplingParams  # noqa: E402
from vxl.demo.tasks import make_sample  # noqa: E402
from vxl.engine.inputs import prompt_ids_from_text  # noqa: E402
from vxl.integrations.lmms_eval import VXL, cut_at_stops  # noqa: E402

TASK, SPLIT = "vxl_synthetic", "test"
NUM_FRAMES, RATIO, MAX_NEW_TOKENS = 16, 4, 8      # 64 visual tokens: two windows of the demo model
GEN_KWARGS = {"until": ["\n\n"], "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "do_sample": False,
              "num_beams": 1}


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """One doc per question: three videos, two questions each, and a question without a video."""
    root, docs = tmp_path_factory.mktemp("lmms_videos"), []
    for v, task in enumerate(["ordering", "counting", "retrieval"]):
        qas = [qa for seed in range(2) for qa in make_sample(task, 32, [7, v, seed]).qas][:2]
        path = write_mp4(str(root / f"{task}.mp4"), make_sample(task, 32, [7, v, 0]).frames)
        docs += [{"video": path, "question": qa.prompt, "options": [qa.right] + [o for o in qa.options if o != qa.right]}
                 for qa in qas]
    return docs + [{"video": None, "question": "Say something.", "options": ["yes", "no"]}]


@pytest.fixture(scope="module")
def model(docs):
    """Built as `lmms-eval --model vxl --model_args ... --batch_size 2` builds it."""
    cls = lmms_models.get_model("vxl")
    lm = cls.create_from_arg_string(f"pretrained=demo,num_frames={NUM_FRAMES},compression_ratio={RATIO}",
                                    {"batch_size": 2, "max_batch_size": None, "device": None})
    lm.task_dict = {TASK: {SPLIT: docs}}
    return lm


def doc_to_visual(doc: dict) -> list:
    return [doc["video"]] if doc["video"] else []


def instance(request_type: str, doc_id: int, arguments: tuple) -> Instance:
    return Instance(request_type=request_type, arguments=arguments, idx=0,
                    metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def direct(doc: dict, **request) -> dict:
    """The request LLM.generate gets for `doc` without the plugin: its video read again."""
    if doc["video"]:
        request.update(video=doc["video"], num_frames=NUM_FRAMES, compression_ratio=RATIO)
    return request


def record_engine_work(monkeypatch, llm) -> tuple[list, list]:
    """(videos encoded, visual windows run) from now on."""
    encodes, windows, encode, run = [], [], llm.encode_video, llm.runner.run
    monkeypatch.setattr(llm, "encode_video", lambda video=None, **kw: encodes.append(video) or encode(video, **kw))
    monkeypatch.setattr(llm.runner, "run", lambda chunks: windows.extend(c for c in chunks if c.kind == "window")
                        or run(chunks))
    return encodes, windows


def test_lmms_eval_registry_finds_vxl():
    assert "vxl" in lmms_models.list_available_models()
    assert lmms_models.get_model_manifest("vxl").simple_class_path == "vxl.integrations.lmms_eval.VXL"
    assert lmms_models.get_model("vxl") is VXL


def test_generate_until_answers_as_generate_encoding_each_video_once(model, docs, monkeypatch):
    order = [0, 2, 4, 6, 1, 3, 5]           # a video's questions apart: grouping must gather them
    instances = [instance("generate_until", i, (docs[i]["question"], dict(GEN_KWARGS), doc_to_visual, i, TASK, SPLIT))
                 for i in order]
    encodes, windows = record_engine_work(monkeypatch, model.llm)
    answers = model.generate_until(instances)
    monkeypatch.undo()
    refs = model.llm.generate([direct(docs[i], prompt=docs[i]["question"]) for i in order],
                              SamplingParams(max_tokens=MAX_NEW_TOKENS), use_tqdm=False)
    assert answers == [cut_at_stops(out.text, GEN_KWARGS["until"]) for out in refs]
    assert all(out.error is None and out.text for out in refs)
    videos = [d["video"] for d in docs[:6:2]]
    assert sorted(encodes) == sorted(videos)                         # one encode per video, none for text
    per_video = -(-refs[0].metrics["num_visual_tokens"] // model.llm.config.beacon_window)
    assert len(windows) == len(videos) * per_video                   # its windows run once, not per question
    assert model.llm.kv_cache_usage()["num_used_pages"] == 0         # every memory released


def choice_instances(docs: list[dict], num_options: int) -> list[tuple[int, str, Instance]]:
    """lmms-eval's multiple-choice requests: one loglikelihood instance per (doc, option), the right option
    first."""
    return [(i, option, instance("loglikelihood", i, (doc["question"], option, doc_to_visual, i, TASK, SPLIT)))
            for i, doc in enumerate(docs) for option in doc["options"][:num_options]]


def test_loglikelihood_scores_the_continuation_encoding_each_video_once(model, docs, monkeypatch):
    chosen = choice_instances(docs, 2)
    encodes, _ = record_engine_work(monkeypatch, model.llm)
    scores = model.loglikelihood([inst for _, _, inst in chosen])
    monkeypatch.undo()
    assert sorted(encodes) == sorted(d["video"] for d in docs[:6:2])
    llm, tokenizer = model.llm, model.llm.tokenizer
    # the reference, in two batched calls: greedy decoding of len(cont) tokens with their logprobs (the decode
    # path), and the scored prompt with the video read again (no memory)
    ctxs = [prompt_ids_from_text(tokenizer, docs[i]["question"], bool(docs[i]["video"])) for i, _, _ in chosen]
    conts = [tokenizer.encode(option, add_special_tokens=False) for _, option, _ in chosen]
    greedy = llm.generate([direct(docs[i], prompt_token_ids=ctx) for (i, _, _), ctx in zip(chosen, ctxs)],
                          [SamplingParams(max_tokens=len(c), ignore_eos=True, logprobs=0) for c in conts], use_tqdm=False)
    scored = llm.generate([direct(docs[i], prompt_token_ids=ctx + c) for (i, _, _), ctx, c in zip(chosen, ctxs, conts)],
                          SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    for (i, option, _), (logprob, is_greedy), ctx, cont, g, ref in zip(chosen, scores, ctxs, conts, greedy, scored):
        assert abs(logprob - sum(ref.prompt_logprobs[len(ctx) + j][t] for j, t in enumerate(cont))) < 1e-4
        assert is_greedy == (g.token_ids == cont), (i, option)
        if is_greedy:
            assert abs(logprob - sum(lp[t] for lp, t in zip(g.logprobs, cont))) < 1e-4
    assert any(is_greedy for _, is_greedy in scores)


def test_a_video_that_cannot_be_read_fails_only_its_instances(model, docs, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    model.task_dict = {TASK: {SPLIT: [{**docs[0], "video": str(broken)}, docs[1]]}}
    try:
        args = [(d, dict(GEN_KWARGS), doc_to_visual, d, TASK, SPLIT) for d in (0, 1)]
        answers = model.generate_until([instance("generate_until", d, (docs[d]["question"], *a[1:])) for d, a in
                                        zip((0, 1), args)])
        scores = model.loglikelihood([instance("loglikelihood", d, (docs[d]["question"], "red", doc_to_visual, d,
                                                                    TASK, SPLIT)) for d in (0, 1)])
    finally:
        model.task_dict = {TASK: {SPLIT: docs}}
    assert answers[0] == "" and answers[1]
    assert scores[0] == (float("-inf"), False) and scores[1][0] < 0


def test_generation_kwargs():
    assert cut_at_stops("A. red\n\nmore", ["\n\n", "."]) == "A"
    assert cut_at_stops("red", []) == "red"
    lm = VXL.__new__(VXL)
    lm.max_new_tokens = 5
    params, until = lm._sampling({"until": "\n", "do_sample": True, "temperature": 0.5, "top_p": 0.9, "foo": 1})
    assert (params.max_tokens, params.temperature, params.top_p, until) == (5, 0.5, 0.9, ["\n"])
    params, _ = lm._sampling({"temperature": 0.7})                 # no do_sample: greedy, as in transformers
    assert params.is_greedy
    with pytest.raises(ValueError, match="beam"):
        lm._sampling({"num_beams": 4})
