"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds, logprobs."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch


# the cap on `logprobs` for callers that are not trusted (vLLM's default max_logprobs): a large k returns
# most of the vocabulary per token. An engine setting (`EngineConfig.max_logprobs`, checked when a request
# is prepared), not a SamplingParams rule: offline scoring (bench/niah.py, parity tests) needs full
# distributions, so the offline default is no cap and front ends facing strangers set this one.
MAX_LOGPROBS = 20
# temperatures below this are greedy, as in vLLM: dividing logits by them overflows to inf / NaN
MIN_TEMPERATURE = 1e-5
# what torch.Generator.manual_seed accepts
SEED_RANGE = (-2**63, 2**64)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _int_at_least(name: str, value, low: int, what: str = "") -> int:
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{what}, got {value!r}")
    return int(value)


def check_stop_token_ids(stop_token_ids) -> list[int] | None:
    """None or a list of token ids (ints >= 0, not bools); the vocabulary bound is checked against the
    model when a request is prepared (`vxl.engine.inputs.check_params`)."""
    if stop_token_ids is None:
        return None
    if isinstance(stop_token_ids, (str, bytes)) or not hasattr(stop_token_ids, "__iter__"):
        raise ValueError(f"stop_token_ids must be None or a list of ints, got {stop_token_ids!r}")
    ids = list(stop_token_ids)
    bad = [t for t in ids if not _is_int(t) or t < 0]
    if bad:
        raise ValueError(f"stop_token_ids must be ints >= 0, got {bad[:5]!r}")
    return [int(t) for t in ids]


@dataclass
class SamplingParams:
    """temperature 0 (or below MIN_TEMPERATURE = 1e-5) = greedy. Without a `seed`, request i of a `generate`
    call samples with seed `LLM(seed=...) + i`, so runs are reproducible; a seed is an int in [-2**63, 2**64).
    `logprobs` = k: per generated token, the log-softmax of the model's logits for the top k tokens and the
    chosen one (an engine may cap k: `EngineConfig.max_logprobs`, MAX_LOGPROBS = 20 for untrusted callers).
    `prompt_logprobs` = k: the same per prompt token, from the logits of the token before it (vLLM's
    scoring: the summed logprobs of a continuation given as the prompt's last tokens, and whether each was
    the top token); None for the first token, the video placeholder, the token after it, and the tokens
    already held by a video memory or stream. Each prompt chunk then computes float32 logits for all its
    rows. Every value is checked here; a bad one raises ValueError naming it."""
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self):
        self.max_tokens = _int_at_least("max_tokens", self.max_tokens, 1)
        self.temperature = _finite_real("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self.top_p = _finite_real("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.top_k = _int_at_least("top_k", self.top_k, 0, " (0 = off)")
        if self.seed is not None:
            if not _is_int(self.seed) or not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
                raise ValueError(f"seed must be None or an int in [-2**63, 2**64) (64 bits), got {self.seed!r}")
            self.seed = int(self.seed)
        if self.logprobs is not None:
            self.logprobs = _int_at_least("logprobs", self.logprobs, 0)
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = _int_at_least("prompt_logprobs", self.prompt_logprobs, 0)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        self.stop_token_ids = check_stop_token_ids(self.stop_token_ids)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


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
        drop[0] = False                     # a top_p below float32's smallest number compares equal to 0
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


def prompt_token_logprobs(logits: torch.Tensor, next_ids: list[int], k: int) -> list[dict[int, float]]:
    """logits [n, V] float32 of n prompt rows, next_ids [n] the token each row is followed by -> per row
    the log-softmax of its top k tokens and of its next token, as {token id: logprob}."""
    lp = torch.log_softmax(logits, dim=-1)                                             # (n, V)
    ids = torch.tensor(next_ids, dtype=torch.long, device=lp.device)
    chosen = lp.gather(1, ids[:, None])[:, 0].tolist()                                 # (n,)
    top_ids, top_lp = [[]] * len(next_ids), [[]] * len(next_ids)
    if k > 0:
        top = torch.topk(lp, min(k, lp.shape[-1]), dim=-1)                             # (n, k)
        top_ids, top_lp = top.indices.tolist(), top.values.tolist()
    out = []
    for token, token_lp, row_ids, row_lp in zip(next_ids, chosen, top_ids, top_lp):
        entry = dict(zip(row_ids, row_lp))
        entry[token] = token_lp
        out.append(entry)
    return out
