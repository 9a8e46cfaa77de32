"""The shipped demo model: where its checkpoint lives inside the package, and the `vxl demo` episode (a
fresh needle-in-a-haystack video, its question, the right answer and the model's answer)."""
from __future__ import annotations

import os

from vxl.train.data import make_sample

DEMO_TAG = 5_500_001        # demo seeds are [DEMO_TAG, seed]: never drawn by training or evaluation


def demo_checkpoint_path() -> str:
    """The directory of the trained demo checkpoint shipped with the package (official Video-XL layout)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "demo")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"the demo checkpoint is missing from {path}: reinstall vxl, or train one with "
                                f"`python -m vxl.train --export {path}`")
    return path


def run_demo(llm, seed: int = 0, num_frames: int = 512, compression_ratio: int | None = None,
             task: str = "retrieval", question: int | None = None, max_tokens: int = 8) -> dict:
    """Generate a synthetic video (`task` from vxl.train.data.TASKS; retrieval: one thing shown on one
    frame of `num_frames`), ask one of its 4-option questions through `llm.generate` (greedy) and return
    dict(question, options, right_answer, model_answer, is_correct, task, num_frames, events, metrics).
    `question` picks among the video's questions (default: the seed does)."""
    from vxl import SamplingParams
    size = llm.loaded.image_processor.crop_size if llm.loaded.image_processor is not None else 64
    sample = make_sample(task, num_frames, [DEMO_TAG, seed], size)
    qa = sample.qas[(seed if question is None else question) % len(sample.qas)]
    request = {"prompt": qa.prompt, "video": sample.frames}
    if compression_ratio is not None:
        request["compression_ratio"] = compression_ratio
    out = llm.generate([request], SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)[0]
    if out.error is not None:
        raise RuntimeError(f"demo request failed: {out.error}")
    from vxl.train.evaluate import extract_letter
    answer = out.text.strip()
    events = [{"first_frame": start, "num_frames": length, "colour": t.colour, "shape": t.shape, "digit": t.digit}
              for start, length, t in sample.events]
    return {"question": qa.prompt, "options": qa.options, "right_answer": qa.answer,
            "model_answer": answer, "is_correct": extract_letter(answer) == qa.letter, "task": task, "num_frames": num_frames,
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
