"""The demo model's tokenizer: byte-level BPE (GPT-2 pre-tokenization, as Qwen2's) with the Qwen chat
special tokens, its merges learned from the synthetic tasks' chat-template text, so words are single
tokens as they are for a real LLM. Deterministic: the same corpus and trainer give the same files."""
from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerFast

from vxl.demo.tasks import QA, TASKS, draw_questions, multiple_choice
from vxl.engine.inputs import chat_prompt
from vxl.model.tiny import SPECIAL_TOKENS

VOCAB_SIZE = 512


OPEN_INSTRUCTION = "Answer with one word."


def multiple_choice_or_open(rng: np.random.Generator, task: str, question: str, right: str, pool: list[str],
                            must: tuple[str, ...] = ()) -> QA:
    """Half the questions asked open-ended ("... Answer with one word.", answer: the word), half as 4-option
    multiple choice: the corpus the shipped tokenizer's merges were learned from."""
    if rng.uniform() < 0.5:
        return QA(task, f"{question} {OPEN_INSTRUCTION}", right, [], right)
    return multiple_choice(rng, task, question, right, pool, must)


def corpus(num: int = 300):
    """Chat-template text of generated questions (both answer forms) with their answers."""
    for i in range(num):
        for task in TASKS:
            _, qas = draw_questions(np.random.default_rng([3_300_001, i]), task, 16, ask=multiple_choice_or_open)
            for qa in qas:
                before, after = chat_prompt(qa.prompt, True)
                yield before + after + qa.answer


def build_demo_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS)
