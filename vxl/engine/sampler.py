"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds, logprobs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vxl import defaults
from vxl.checks import finite_real, int_at_least, is_int


# the default cap on `logprobs` (vLLM's default max_logprobs): a large k returns most of the vocabulary per
# token. An engine setting (`EngineConfig.max_logprobs`, checked when a request is prepared), not a
# SamplingParams rule: scoring that needs full distributions (bench/niah.py, parity tests) sets it to None.
MAX_LOGPROBS = 20
# temperatures below this are greedy, as in vLLM: dividing logits by them overflows to inf / NaN
MIN_TEMPERATURE = 1e-5
# what torch.Generator.manual_seed accepts
SEED_RANGE = (-2**63, 2**64)


def check_stop_token_ids(stop_token_ids) -> list[int] | None:
    """None or a list of token ids (ints >= 0, not bools); the vocabulary bound is checked against the
    model when a request is prepared (`vxl.engine.inputs.check_params`)."""
    if stop_token_ids is None:
        return None
    if isinstance(stop_token_ids, (str, bytes)) or not hasattr(stop_token_ids, "__iter__"):
        raise ValueError(f"stop_token_ids must be None or a list of ints, got {stop_token_ids!r}")
    ids = list(stop_token_ids)
    bad = [t for t in ids if not is_int(t) or t < 0]
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
    max_tokens: int = defaults.MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self):
        self.max_tokens = int_at_least("max_tokens", self.max_tokens, 1)
        self.temperature = finite_real("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self.top_p = finite_real("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.top_k = int_at_least("top_k", self.top_k, 0, note=" (0 = off)")
        if self.seed is not None:
            if not is_int(self.seed) or not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
                raise ValueError(f"seed must be None or an int in [-2**63, 2**64) (64 bits), got {self.seed!r}")
            self.seed = int(self.seed)
        if self.logprobs is not None:
            self.logprobs = int_at_least("logprobs", self.logprobs, 0)
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = int_at_least("prompt_logprobs", self.prompt_logprobs, 0)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        self.stop_token_ids = check_stop_token_ids(self.stop_token_ids)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def filter_logits_batch(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask each row of logits [N, V] outside its top-k (top_k [N] long, 0 = off; ties with the k-th value
    stay) and outside the smallest nucleus of mass >= top_p (top_p [N] float32, 1 = off), as -inf."""
    vocab = logits.shape[-1]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)                # (N, V)
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kth = sorted_logits.gather(1, (k - 1)[:, None])                                    # (N, 1)
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token when the mass before it already reaches top_p (the top token always stays: a top_p below
    # float32's smallest number compares equal to 0)
    drop = ((probs.cumsum(-1) - probs) >= top_p[:, None]) & (top_p < 1.0)[:, None]   # float32 sums reach 1 early
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask [V] logits outside the top-k and outside the smallest nucleus of mass >= top_p."""
    return filter_logits_batch(logits[None], torch.tensor([top_k], device=logits.device),
                               torch.tensor([top_p], dtype=torch.float32, device=logits.device))[0]


@dataclass(frozen=True)
class LogitRow:
    """What one row of a step's logits is for. A sampled row (`params` set) draws its next token with its
    own `generator` (non-greedy params); a scored prompt row (`target` set) reports the logprob of the
    prompt token that follows it. `logprobs` = k: the row's top-k logprobs plus the chosen token's."""
    logprobs: int | None = None
    params: SamplingParams | None = None
    generator: torch.Generator | None = None
    target: int | None = None


def sample_rows(logits: torch.Tensor, rows: list[LogitRow]) -> tuple[list[int], list[dict[int, float] | None]]:
    """One sampling pass over a step's logits [R, V] float32 (one `LogitRow` each): greedy rows take the
    argmax, random rows draw by the exponential race (argmax of probs / q, q ~ Exp(1) from the row's own
    generator, so a seeded row draws the same token alone or in any batch), scored rows keep their target.
    Everything stays on the logits' device until one device-to-host copy of the packed results.
    -> (token per row, per row None or {token id: logprob} of its top-k and its chosen token)."""
    num_rows, vocab = logits.shape
    device = logits.device
    tokens = torch.argmax(logits, dim=-1)                                               # (R,) greedy
    scored = [i for i, r in enumerate(rows) if r.target is not None]
    if scored:
        tokens[_on(scored, device)] = _on([rows[i].target for i in scored], device)
    drawn = [i for i, r in enumerate(rows) if r.params is not None and not r.params.is_greedy]
    if drawn:
        drawn_idx = _on(drawn, device)
        tokens[drawn_idx] = _draw(logits[drawn_idx], [rows[i] for i in drawn])
    reported = [i for i, r in enumerate(rows) if r.logprobs is not None]
    max_k = min(max((rows[i].logprobs for i in reported), default=0), vocab)
    parts = [tokens.to(torch.float64)]
    if reported:
        reported_idx = _on(reported, device)
        lp = torch.log_softmax(logits[reported_idx], dim=-1)                               # (n, V)
        parts.append(lp.gather(1, tokens[reported_idx][:, None])[:, 0].to(torch.float64))  # chosen (n,)
        if max_k:
            top = torch.topk(lp, max_k, dim=-1)                                             # (n, k)
            parts += [top.indices.flatten().to(torch.float64), top.values.flatten().to(torch.float64)]
    host = to_host(torch.cat(parts)).tolist()              # the pass's one device-to-host read
    token_list = [int(t) for t in host[:num_rows]]
    logprobs: list[dict[int, float] | None] = [None] * num_rows
    n = len(reported)
    chosen = host[num_rows:num_rows + n]
    top_ids = host[num_rows + n:num_rows + n + n * max_k]
    top_lp = host[num_rows + n + n * max_k:]
    for j, i in enumerate(reported):
        k = min(rows[i].logprobs, vocab)
        entry = {int(t): v for t, v in zip(top_ids[j * max_k:j * max_k + k], top_lp[j * max_k:j * max_k + k])}
        entry[token_list[i]] = chosen[j]
        logprobs[i] = entry
    return token_list, logprobs


def _draw(logits: torch.Tensor, rows: list[LogitRow]) -> torch.Tensor:
    """Tokens [n] drawn from logits [n, V] with each row's temperature, top-k, top-p and generator."""
    device = logits.device
    temps = _on([r.params.temperature for r in rows], device, torch.float32)
    logits = logits / temps[:, None]
    if any(r.params.top_k > 0 or r.params.top_p < 1.0 for r in rows):
        top_k = _on([r.params.top_k for r in rows], device)
        top_p = _on([r.params.top_p for r in rows], device, torch.float32)
        logits = filter_logits_batch(logits, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)                                                  # (n, V)
    q = torch.stack([torch.empty(probs.shape[1], device=device).exponential_(generator=r.generator)
                     for r in rows])
    return torch.argmax(probs / q.clamp_min_(torch.finfo(q.dtype).tiny), dim=-1)


def _on(values: list, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A small host list as a tensor on `device`, copied without waiting (no synchronising call)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """The copy of a sampling pass's packed results to the host (its one device-to-host read)."""
    return t.cpu()


def sample_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> tuple[int, dict[int, float] | None]:
    """logits [V] float32 -> (token id, top-`logprobs` logprobs plus the chosen token's, or None): one row
    of `sample_rows`."""
    tokens, logprobs = sample_rows(logits[None], [LogitRow(params.logprobs, params, generator)])
    return tokens[0], logprobs[0]
