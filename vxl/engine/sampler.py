"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds, logprobs."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    """temperature 0 = greedy. Without a `seed`, request i of a `generate` call samples with seed
    `LLM(seed=...) + i`, so runs are reproducible. `logprobs` = k: per generated token, the log-softmax of
    the model's logits for the top k tokens and the chosen one."""
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ValueError(f"logprobs must be None or an int >= 0, got {self.logprobs!r}")
        if self.stop_token_ids is not None:
            self.stop_token_ids = [int(t) for t in self.stop_token_ids]

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask [V] logits outside the top-k and outside the smallest nucleus of mass >= top_p."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> tuple[int, dict[int, float] | None]:
    """logits [V] float32 -> (token id, top-`logprobs` logprobs plus the chosen token's, or None)."""
    if params.is_greedy:
        token = int(torch.argmax(logits))
    else:
        probs = torch.softmax(filter_logits(logits / params.temperature, params.top_k, params.top_p), dim=-1)
        token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
    logprobs = None
    if params.logprobs is not None:
        lp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(lp, min(params.logprobs, lp.shape[-1]))
        logprobs = {int(i): float(v) for i, v in zip(top.indices, top.values)}
        logprobs[token] = float(lp[token])
    return token, logprobs
