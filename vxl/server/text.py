"""Incremental detokenization for streamed answers, with OpenAI `stop` strings: the text so far, the part
safe to send (a possible stop string's start and an unfinished UTF-8 character are held back), and where
a stop string ends the answer (the stop string itself is not part of the text)."""
from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.token_ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.holdback = max((len(s) for s in self.stop), default=1) - 1

    def _decode(self) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def add(self, token_ids: list[int], final: bool = False, final_text: str | None = None) -> str:
        """Take a step's tokens; return the new text that can be sent. `final_text`: the engine's text of a
        finished answer, which wins over the incremental decode."""
        if self.stopped:
            return ""
        self.token_ids += token_ids
        text = final_text if final_text is not None else self._decode()
        ends = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if ends:
            text, self.stopped, final = text[:min(ends)], True, True
        self.text = text
        safe = len(text) if final else len(text) - self.holdback
        if not final and text.endswith("\ufffd"):
            safe = min(safe, len(text) - 1)
        piece = text[self.sent:safe] if safe > self.sent else ""
        self.sent += len(piece)
        return piece

    def final_text(self, output) -> str:
        return self.text if self.stopped else output.text
