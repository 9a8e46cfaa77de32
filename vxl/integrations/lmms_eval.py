"""lmms-eval model `vxl`: `lmms-eval --model vxl --model_args pretrained=DIR,num_frames=N,compression_ratio=R`.
Registered through lmms-eval's entry-point group `lmms_eval.models` (setup.py names `MANIFEST`). Each video is
encoded once (`LLM.encode_video`) and every question about it, generated or scored, is answered from that
VideoMemory. The only vxl module that imports lmms_eval (`pip install 'vxl[eval]'`).
"""
from __future__ import annotations

from dataclasses import dataclass

from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from loguru import logger

from vxl import defaults
from vxl.engine.inputs import prompt_ids_from_text
from vxl.engine.request import RequestOutput
from vxl.engine.sampler import SamplingParams

MANIFEST = ModelManifest(model_id="vxl", simple_class_path="vxl.integrations.lmms_eval.VXL")

# lmms-eval's generation kwargs that vxl honours; any other key is another model's and is ignored
GEN_KWARGS = ("until", "max_new_tokens", "temperature", "top_p", "do_sample", "num_beams")


@dataclass
class Query:
    """One lmms-eval Instance for the engine: its visual input (one of the request fields video, image,
    images, or none), the key its memory is shared under (None: text only), its prompt (a question for the
    chat template, or token ids that already hold it) and its sampling parameters."""
    visual: dict
    key: tuple | None
    prompt: dict
    params: SamplingParams


class VXL(lmms):
    """lmms-eval's simple model interface over one in-process `vxl.LLM`.

    pretrained: a checkpoint directory or a built-in model name (`LLM(model=...)`); num_frames: frames
    sampled per video (None: vxl's default, 128); compression_ratio: None for the checkpoint's default;
    batch_size: videos encoded and answered together (their questions share every forward step);
    max_new_tokens: the answer budget when a task's generation kwargs give none. device, dtype,
    attention_backend and any other keyword (page_size, kv_cache_bytes, ...) go to `LLM`, which rejects
    unknown ones; max_batch_size, which lmms-eval's CLI passes to every model, is unused (the engine packs
    requests by its own token budget). One process: lmms-eval's data parallelism is not used (rank 0 of 1).
    """

    def __init__(self, pretrained: str = "demo", num_frames: int | None = None,
                 compression_ratio: int | None = None, batch_size: int | str = 1, max_new_tokens: int = defaults.EVAL_MAX_NEW_TOKENS,
                 max_batch_size: int | None = None, device: str | None = None, **engine_kwargs):
        super().__init__()
        from vxl import LLM
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size must be an int >= 1 (videos answered together), got {batch_size!r}")
        self.llm = LLM(str(pretrained), device=device, **engine_kwargs)
        if self.llm.tokenizer is None:
            raise ValueError(f"{pretrained} has no tokenizer files: lmms-eval's prompts are text")
        self.num_frames, self.compression_ratio = num_frames, compression_ratio
        self.batch_size, self.max_new_tokens = int(batch_size), max_new_tokens

    # -- lmms-eval's interface ------------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        """Instances with args (context, gen_kwargs, doc_to_visual, doc_id, task, split) -> answers in
        order; each answer is cut before the first of gen_kwargs["until"]."""
        queries, stops = [], []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visual, key = self._visual(doc_to_visual, doc_id, task, split)
            params, until = self._sampling(gen_kwargs)
            queries.append(Query(visual, key, {"prompt": context}, params))
            stops.append(until)
        answers = []
        for out, until in zip(self._run(queries), stops):
            if out.error is not None:
                logger.warning(f"vxl: request {out.request_id} failed: {out.error}")
            answers.append(cut_at_stops(out.text, until))
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Instances with args (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split),
        or (context, continuation) without a visual -> (log P(continuation | context), whether every
        continuation token is the greedy one). The continuation follows the chat template's assistant turn;
        its tokens are scored with SamplingParams.prompt_logprobs."""
        queries, num_context = [], []
        for req in requests:
            context, continuation, visual, key = self._scored_args(req.args)
            ctx_ids = prompt_ids_from_text(self.llm.tokenizer, context, bool(visual))
            cont_ids = self.llm.tokenizer.encode(continuation, add_special_tokens=False)
            queries.append(Query(visual, key, {"prompt_token_ids": ctx_ids + cont_ids},
                                 SamplingParams(max_tokens=1, prompt_logprobs=1)))
            num_context.append(len(ctx_ids))
        results = []
        for query, out, n in zip(queries, self._run(queries), num_context):
            if out.error is not None:
                logger.warning(f"vxl: request {out.request_id} failed: {out.error}")
                results.append((float("-inf"), False))
                continue
            ids, entries = query.prompt["prompt_token_ids"][n:], out.prompt_logprobs[n:]
            results.append((sum(e[t] for t, e in zip(ids, entries)),
                            all(max(e, key=e.get) == t for t, e in zip(ids, entries))))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vxl answers single-round questions (generate_until, loglikelihood)")

    # -- inputs ---------------------------------------------------------------------------------------
    def _visual(self, doc_to_visual, doc_id, task: str, split: str) -> tuple[dict, tuple | None]:
        """The doc's visual input as request fields and its sharing key: one path is a video (shared by
        path), images are one doc's (shared by the doc), nothing is a text-only question."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if callable(doc_to_visual) else doc_to_visual
        visuals = [v for v in (visuals or []) if v is not None]
        if not visuals:
            return {}, None
        if all(isinstance(v, str) for v in visuals):
            if len(visuals) != 1:
                raise ValueError(f"{task} doc {doc_id} gives {len(visuals)} video paths; vxl takes one video")
            return {"video": visuals[0]}, ("video", visuals[0])
        field = {"image": visuals[0]} if len(visuals) == 1 else {"images": visuals}
        return field, ("doc", task, split, doc_id)

    def _scored_args(self, args: tuple) -> tuple[str, str, dict, tuple | None]:
        if len(args) == 2:                  # lmms-eval's unconditional scoring of a choice: text only
            return args[0], args[1], {}, None
        context, continuation, doc_to_visual, doc_id, task, split = args
        if callable(continuation):
            continuation = continuation(self.task_dict[task][split][doc_id])
        visual, key = self._visual(doc_to_visual, doc_id, task, split)
        return context, str(continuation), visual, key

    def _sampling(self, gen_kwargs: dict) -> tuple[SamplingParams, list[str]]:
        """SamplingParams and stop strings from a task's generation kwargs (greedy unless do_sample with
        a temperature > 0, as in transformers)."""
        kw = {k: v for k, v in (gen_kwargs or {}).items() if k in GEN_KWARGS}
        if (kw.get("num_beams") or 1) > 1:
            raise ValueError(f"vxl does not run beam search (num_beams={kw['num_beams']})")
        until = kw.get("until") or []
        temperature = float(kw.get("temperature") or 0.0) if kw.get("do_sample") else 0.0
        params = SamplingParams(max_tokens=int(kw.get("max_new_tokens") or self.max_new_tokens),
                                temperature=temperature, top_p=float(kw.get("top_p") or 1.0))
        return params, [until] if isinstance(until, str) else list(until)

    # -- running ------------------------------------------------------------------------------------------
    def _run(self, queries: list[Query]) -> list[RequestOutput]:
        """Every query's output, in order. Queries are grouped by sharing key; `batch_size` groups at a time
        are encoded (one VideoMemory per group) and all their queries answered in one `generate` call."""
        groups: dict = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.key if q.key is not None else ("text", i), []).append(i)
        keys, outputs = list(groups), [None] * len(queries)
        for start in range(0, len(keys), self.batch_size):
            members = [i for key in keys[start:start + self.batch_size] for i in groups[key]]
            memories, failed = {}, {}
            try:
                for key in dict.fromkeys(queries[i].key for i in members if queries[i].key is not None):
                    visual = queries[groups[key][0]].visual
                    try:
                        memories[key] = self.llm.encode_video(**visual, compression_ratio=self.compression_ratio,
                                                              num_frames=self.num_frames if "video" in visual else None)
                    except Exception as exc:    # this input's problem only: its questions fail, the run goes on
                        failed[key] = f"cannot encode {next(iter(visual))}: {exc}"
                ready = [i for i in members if queries[i].key not in failed]
                reqs = [self._request(queries[i], memories.get(queries[i].key), str(i)) for i in ready]
                for i, out in zip(ready, self.llm.generate(reqs, [queries[i].params for i in ready], use_tqdm=False)):
                    outputs[i] = out
            finally:
                for mem in memories.values():
                    mem.release()
            for i in members:
                if queries[i].key in failed:
                    outputs[i] = RequestOutput(str(i), finish_reason="error", error=failed[queries[i].key])
        return outputs

    @staticmethod
    def _request(query: Query, memory, request_id: str) -> dict:
        """The engine request of a query: its prompt, answered from its visual input's memory."""
        request = {**query.prompt, "request_id": request_id}
        if memory is not None:
            request["video_memory"] = memory
        return request


def cut_at_stops(text: str, stops: list[str]) -> str:
    """`text` up to the first occurrence of any of `stops` (vxl stops at EOS; lmms-eval's stop strings are
    applied to the decoded answer)."""
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]
