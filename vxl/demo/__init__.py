"""`vxl demo`: one episode of the shipped `demo` model (a fresh synthetic needle video, its 4-option
question, the right answer and the model's answer), through the public API only."""
from __future__ import annotations

import re

from vxl.demo.tasks import LETTERS, TASKS, make_sample

DEMO_TAG = 5_500_001        # demo seeds are [DEMO_TAG, seed]: never drawn by training or evaluation
FRAME_SIZE = 64             # pixels per side of the synthetic frames (the demo model's CLIP input size)


def extract_letter(text: str) -> str | None:
    """The option letter of an answer: the first "(X)", else a leading A-D."""
    m = re.search(r"\(([ABCD])\)", text)
    if m:
        return m.group(1)
    text = text.strip()
    return text[0] if text and text[0] in LETTERS and not text[1:2].isalpha() else None


def run_demo(llm, seed: int = 0, num_frames: int = 512, compression_ratio: int | None = None,
             task: str = "retrieval", question: int | None = None, max_tokens: int = 8) -> dict:
    """Generate a synthetic video (`task` in TASKS; retrieval: one thing shown on one frame of
    `num_frames`), ask one of its 4-option questions through `llm.generate` (greedy) and return
    dict(question, options, right_answer, model_answer, is_correct, task, num_frames, events, metrics).
    `question` picks among the video's questions (default: the seed does)."""
    from vxl import SamplingParams
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    sample = make_sample(task, num_frames, [DEMO_TAG, seed], FRAME_SIZE)
    qa = sample.qas[(seed if question is None else question) % len(sample.qas)]
    request = {"prompt": qa.prompt, "video": sample.frames}
    if compression_ratio is not None:
        request["compression_ratio"] = compression_ratio
    out = llm.generate([request], SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)[0]
    if out.error is not None:
        raise RuntimeError(f"demo request failed: {out.error}")
    answer = out.text.strip()
    events = [{"first_frame": start, "num_frames": length, "colour": t.colour, "shape": t.shape, "digit": t.digit}
              for start, length, t in sample.events]
    return {"question": qa.prompt, "options": qa.options, "right_answer": qa.answer, "model_answer": answer,
            "is_correct": extract_letter(answer) == qa.letter, "task": task, "num_frames": num_frames,
            "events": events, "metrics": out.metrics}


def describe_demo(result: dict) -> str:
    """Human-readable lines for a run_demo result (what `vxl demo` prints)."""
    shown = ", ".join(f"{e['colour']} {e['shape'] or 'digit ' + str(e['digit'])} at frame {e['first_frame']}"
                      for e in result["events"])
    m = result["metrics"]
    return "\n".join([
        f"video: {result['num_frames']} synthetic frames; shown: {shown}",
        f"question: {result['question']}",
        f"right answer: {result['right_answer']}",
        f"model answer: {result['model_answer']}  ({'correct' if result['is_correct'] else 'wrong'})",
        f"[VSTs kept {m.get('num_vst_tokens')} for {m.get('num_visual_tokens')} visual tokens, "
        f"ratio {m.get('compression_ratio')}, kept KV {m.get('kept_kv_bytes', 0) / 2**10:.0f} KiB]"])
