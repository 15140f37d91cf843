"""Answer scoring for generative families: closed-set ranking by teacher-forced likelihood, and
exact match of greedy generation.

A generative model has no answer head; its "logits" over the client's answer set ``a_1 .. a_A`` come
from the likelihood of each answer's token sequence (ending in EOS) given image and question:

    s_a = Σ_k log p(t_{a,k} | image, question, t_{a,<k})          (teacher forcing)
    z_a = s_a - log(1 - exp(s_a))                                   (log-odds of generating a)

``z`` is what :func:`f3ocus_core.models.logits_of` returns. ``sigmoid(z_a) = p(a)``, so the binary
cross-entropy of :func:`f3ocus_core.models.loss_of` is the likelihood of generating the right answers
and not the wrong ones, ``argmax z = argmax s`` is closed-set ranking, and the layer scorers take the
NTK over the same answer scores they use for a classifier head.

Multi-label tasks cannot use these scores: the answers are distinct sequences ending in EOS, so their
probabilities sum to at most 1 and at most one label could pass the 0.5 threshold. There each label
``l`` is asked as a yes/no question instead: the row after the prompt is ``l?`` (no EOS), and

    z_l = logit(yes) - logit(no)      at the next-token position after ``l?``

so ``sigmoid(z_l)`` is the probability of "yes" against "no", independent across labels, and several
labels can pass 0.5. It costs the same ``n x A`` rows as the ranking. Greedy generation of a
multi-label batch answers each label's question with one greedy token: the label is decided when
that token is "yes".

The batch carries the answer set tokenised: ``answer_ids``/``answer_mask`` of shape ``(n, A, T)``
(the same rows for every example, so that every tensor of the batch has ``n`` rows); a multi-label
batch also carries ``yes_no`` ``(n, 2)``, the token ids of "yes" and "no", whose presence selects the
yes/no scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from f3ocus_core.families.base import Batch, Collate, multi_hot, unwrap

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

#: Below this log-likelihood, ``log(1 - exp(s))`` is computed as ``log1p(-exp(s))``; above, as
#: ``log(-expm1(s))`` (the stable split of Mächler's log1mexp).
_LOG_HALF = -0.6931471805599453

#: The batch key of a multi-label batch's ``(n, 2)`` "yes"/"no" token ids (see the module docstring).
YES_NO = "yes_no"

#: Words an offline tokenizer of a generative family must know for the multi-label yes/no questions.
QUESTION_WORDS: tuple[str, ...] = ("?", "yes", "no")


def log_odds(loglik: torch.Tensor) -> torch.Tensor:
    """``s - log(1 - exp(s))`` for log-likelihoods ``s <= 0``, computed stably."""
    s = loglik.clamp(max=-1e-7)
    log1mexp = torch.where(s > _LOG_HALF, torch.log(-torch.expm1(s)), torch.log1p(-torch.exp(s)))
    return s - log1mexp


def answer_tokens(
    tokenizer: PreTrainedTokenizerBase, labels: list[str], prefix: list[int], eos: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, T)`` token ids (``prefix + answer + [eos]``, right-padded with 0) and their 0/1 mask;
    ``eos=None`` gives the multi-label rows ``prefix + answer?`` (see the module docstring)."""
    if eos is None:
        rows = [prefix + tokenizer(f"{label}?", add_special_tokens=False)["input_ids"] for label in labels]
    else:
        rows = [prefix + tokenizer(label, add_special_tokens=False)["input_ids"] + [eos] for label in labels]
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def yes_no_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids of "yes" and "no" (the first token of each, tokenised like the answers).

    Raises
    ------
    ValueError
        When the tokenizer does not tell them apart (an offline tokenizer built without them).
    """
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"][:1] for word in ("yes", "no")]
    unknown = getattr(tokenizer, "unk_token_id", None)
    if any(not one or one[0] == unknown for one in ids) or ids[0] == ids[1]:
        raise ValueError(
            "model.name: the tokenizer has no distinct 'yes' and 'no' tokens, which multi-label tasks "
            "of generative families need; use a tokenizer that knows them."
        )
    return [ids[0][0], ids[1][0]]


def make_collate(
    processor: ProcessorMixin,
    labels: list[str],
    prompt: Callable[[str], str],
    prefix: list[int],
    eos: int,
    max_text_len: int | None,
    multi_label: bool = False,
) -> Collate:
    """Rows -> prompts through ``processor`` (right-padded), the answer set tokenised, multi-hot
    ``labels``; with ``multi_label``, the labels' yes/no rows and ``yes_no`` instead."""
    ids, mask = answer_tokens(processor.tokenizer, labels, prefix, None if multi_label else eos)
    yes_no = torch.tensor(yes_no_ids(processor.tokenizer)) if multi_label else None
    limits = {} if max_text_len is None else {"truncation": True, "max_length": max_text_len}

    def collate(rows: list[dict]) -> Batch:
        encoded = processor(
            images=[row["image"].convert("RGB") for row in rows],
            text=[prompt(row["question"]) for row in rows],
            padding="longest",
            return_tensors="pt",
            **limits,
        )
        batch = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
        batch.pop("token_type_ids", None)
        n = len(rows)
        batch["answer_ids"] = ids.unsqueeze(0).expand(n, -1, -1).clone()
        batch["answer_mask"] = mask.unsqueeze(0).expand(n, -1, -1).clone()
        if yes_no is not None:
            batch[YES_NO] = yes_no.expand(n, -1).clone()
        batch["labels"] = multi_hot(rows, labels)
        return batch

    return collate


def sequence_loglik(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Per row, the sum of ``log p(ids[t])`` under ``logits[t - 1]`` over positions where ``scored[t]``."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (picked * scored[:, 1:].to(picked.dtype)).sum(dim=1)


def next_token_logits(logits: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Per row, ``logits`` ``(rows, T, V)`` at the last position where ``scored`` ``(rows, T)``: the
    prediction of the token after the row's answer."""
    positions = torch.arange(scored.shape[1], device=scored.device)
    last = (positions * scored.long()).amax(dim=1)
    return logits[torch.arange(logits.shape[0], device=logits.device), last].float()


def answer_scores(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``(n, A)`` scores from the token ``logits`` of the ``n*A`` answer rows (``ids``, ``scored``):
    the log-odds of generating each answer, or on a multi-label batch ``logit(yes) - logit(no)``."""
    shape = batch["answer_ids"].shape[:2]
    if YES_NO in batch:
        after = next_token_logits(logits, scored)
        yes_no = repeat_rows(batch[YES_NO], shape[1])
        picked = after.gather(1, yes_no)
        return (picked[:, 0] - picked[:, 1]).view(shape)
    return log_odds(sequence_loglik(logits, ids, scored).view(shape))


def says_yes(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor, batch: Batch) -> torch.Tensor:
    """0/1 ``(n, A)`` of a multi-label batch: whether the greedy token after each label's question is "yes"."""
    after = next_token_logits(logits, scored)
    yes = repeat_rows(batch[YES_NO][:, 0], batch["answer_ids"].shape[1])
    return (after.argmax(dim=1) == yes).float().view(batch["answer_ids"].shape[:2]).cpu()


def join_prompt_answers(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For decoder-only models: every (example, answer) pair as one sequence ``prompt + answer``.

    Returns ``(n*A, P+T)`` token ids, attention mask, and the mask of answer tokens (the scored ones).
    Prompts are right-padded, so each answer starts right after its prompt's last real token and the
    positions of the real tokens are ``0, 1, ...`` in every row.
    """
    prompt, prompt_mask = batch["input_ids"], batch["attention_mask"]
    answers, answer_mask = batch["answer_ids"], batch["answer_mask"]
    n, width = prompt.shape
    count, tokens = answers.shape[1], answers.shape[2]
    lengths = prompt_mask.sum(dim=1)
    positions = torch.arange(width + tokens, device=prompt.device)
    in_prompt = positions.unsqueeze(0) < lengths.unsqueeze(1)
    prompt_ids = prompt.gather(1, positions.clamp(max=width - 1).unsqueeze(0).expand(n, -1))
    offset = positions.unsqueeze(0) - lengths.unsqueeze(1)
    where = offset.clamp(0, tokens - 1).unsqueeze(1).expand(n, count, -1)
    in_answer = (offset >= 0).unsqueeze(1) & (offset < tokens).unsqueeze(1) & answer_mask.gather(2, where).bool()
    answer_ids = torch.where(in_answer, answers.gather(2, where), 0)
    ids = torch.where(in_prompt.unsqueeze(1), prompt_ids.unsqueeze(1), answer_ids)
    mask = in_prompt.unsqueeze(1) | in_answer
    return ids.flatten(0, 1), mask.flatten(0, 1).long(), in_answer.flatten(0, 1)


def decoder_only_token_logits(
    language_model: torch.nn.Module,
    embed: torch.nn.Module,
    features: torch.Tensor,
    image_token: int,
    batch: Batch,
    prefix_lm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token logits ``(n*A, P+T, V)`` of every (example, answer) sequence of a decoder-only language
    model fed image features, with the sequences' ids and the mask of their answer tokens (what
    :func:`answer_scores` and :func:`says_yes` read).

    ``features`` ``(n, tokens, hidden)`` are computed once per example and put in place of the
    ``image_token`` placeholders of every (example, answer) sequence, so the vision side sees ``n``
    rows and only ``language_model`` (called with ``inputs_embeds``; returns ``.logits``) sees
    ``n x A``. ``prefix_lm`` passes ``token_type_ids`` (0 prompt, 1 answer), for models whose prompt
    attends both ways (PaliGemma).
    """
    ids, mask, scored = join_prompt_answers(batch)
    count = batch["answer_ids"].shape[1]
    is_image = ids == image_token
    embeds = embed(ids.masked_fill(is_image, 0))
    features = repeat_rows(features, count).to(embeds.dtype)
    embeds = embeds.masked_scatter(is_image.unsqueeze(-1).expand_as(embeds), features)
    types = {"token_type_ids": scored.long()} if prefix_lm else {}
    out = language_model(inputs_embeds=embeds, attention_mask=mask, **types)
    return out.logits, ids, scored


def greedy_per_example(model: torch.nn.Module, batch: Batch, eos: int, prefix_lm: bool = False) -> torch.Tensor:
    """Greedy generation of each example alone (its unpadded prompt and image, ``model`` called with
    ``input_ids`` and ``pixel_values``, and with ``token_type_ids`` marking the generated tokens when
    ``prefix_lm``); 0/1 ``(n, A)`` exact matches with the answer set."""
    steps = batch["answer_ids"].shape[2]
    generated = []
    for i in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][i].sum())
        pixels = batch["pixel_values"][i : i + 1]

        def step(ids: torch.Tensor, pixels: torch.Tensor = pixels, length: int = length) -> torch.Tensor:
            types = {}
            if prefix_lm:
                types["token_type_ids"] = (torch.arange(ids.shape[1], device=ids.device) >= length).long()[None]
            return model(input_ids=ids, pixel_values=pixels, **types).logits[:, -1]

        generated += greedy(step, batch["input_ids"][i : i + 1, :length], steps, eos)
    return matches(generated, batch, eos, skip=0)


def repeat_rows(value: torch.Tensor, count: int) -> torch.Tensor:
    """Each example's rows ``count`` times in a row (example-major, like :func:`join_prompt_answers`)."""
    return value.repeat_interleave(count, dim=0)


def matches(generated: list[list[int]], batch: Batch, eos: int, skip: int) -> torch.Tensor:
    """0/1 ``(n, A)``: which answer (its tokens after ``skip`` prefix tokens, up to EOS) each generated
    sequence (up to its first EOS) equals."""
    answers, answer_mask = batch["answer_ids"], batch["answer_mask"]
    decided = torch.zeros(answers.shape[:2])
    for i, tokens in enumerate(generated):
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        for a in range(answers.shape[1]):
            want = answers[i, a][answer_mask[i, a].bool()].tolist()[skip:-1]
            if tokens == want:
                decided[i, a] = 1.0
    return decided


def greedy(step: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int, eos: int) -> list[list[int]]:
    """Greedy decoding: ``step(ids)`` gives next-token logits ``(rows, V)``; stops at EOS or ``steps``."""
    ids = start
    done = torch.zeros(start.shape[0], dtype=torch.bool, device=start.device)
    for _ in range(steps):
        token = step(ids).argmax(dim=-1)
        ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
        done |= token == eos
        if bool(done.all()):
            break
    return [row.tolist() for row in ids[:, start.shape[1] :]]


#: A family's teacher-forced pass: ``(token logits, ids, scored mask)`` of the answer (or yes/no) rows.
#: Its first argument is the family's own model class (hence ``Any``).
TokenLogits = Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def answer_logits(token_logits: TokenLogits) -> Callable[[torch.nn.Module, Batch], torch.Tensor]:
    """A family's ``logits`` from its teacher-forced pass: ``(n, A)`` answer scores, the log-odds of
    generating each answer, or of "yes" against "no" per label on a multi-label batch."""

    def logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return answer_scores(*token_logits(unwrap(model), batch), batch)

    return logits


def greedy_answers(
    token_logits: TokenLogits, greedy_fn: Callable[[Any, Batch], torch.Tensor]
) -> Callable[[torch.nn.Module, Batch], torch.Tensor]:
    """A family's ``generate``: 0/1 ``(n, A)`` exact matches of ``greedy_fn``'s greedy answers with the
    answer set; on a multi-label batch, whether each label's question is answered "yes" (one greedy
    token, read off the teacher-forced pass)."""

    @torch.no_grad()
    def generate(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        base = unwrap(model)
        if YES_NO in batch:
            return says_yes(*token_logits(base, batch), batch)
        return greedy_fn(base, batch)

    return generate


def prompted_collate(prompt: Callable[[str], str]) -> Callable[..., Collate]:
    """A decoder family's ``make_collate``: ``prompt(question)`` through the processor (never
    truncated, which would cut its image tokens), each answer ending in EOS (multi-label: the
    labels' yes/no rows)."""

    def make(
        processor: ProcessorMixin, labels: list[str], max_text_len: int = 40, multi_label: bool = False
    ) -> Collate:
        return make_collate(processor, labels, prompt, [], processor.tokenizer.eos_token_id, None, multi_label)

    return make
