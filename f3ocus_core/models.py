"""Vision-language models: tiny configs for tests, the task head, and the forward and loss F3OCUS uses.

A *batch* everywhere in ``f3ocus_core`` is a dict of tensors as a Hugging Face processor returns it
(``input_ids``, ``attention_mask``, ``pixel_values``, ...) plus ``labels``: a float tensor
``(n, num_labels)`` of targets (one-hot for VQA, multi-hot for multi-label tasks). The answer head is
a multi-label head trained with binary cross-entropy, as ViLT's VQA head is, so one head serves both
kinds of task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import ViltConfig, ViltForQuestionAnswering


def tiny_vilt_config(num_labels: int = 13, vocab_size: int = 200, **overrides: object) -> ViltConfig:
    """A ViLT small enough for CPU tests: hidden 64, 4 layers, 64 x 64 images in 8 x 8 patches.

    Eager attention, so that forward-mode and double-backward autodiff work through it.
    """
    settings: dict[str, object] = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=8,
        max_position_embeddings=40,
        vocab_size=vocab_size,
        num_labels=num_labels,
        max_image_length=-1,
        id2label={i: f"answer-{i}" for i in range(num_labels)},
        label2id={f"answer-{i}": i for i in range(num_labels)},
    )
    settings.update(overrides)
    config = ViltConfig(**settings)
    config._attn_implementation = "eager"
    return config


def tiny_vilt(num_labels: int = 13, seed: int = 0, **overrides: object) -> ViltForQuestionAnswering:
    """A randomly initialised tiny ViLT for question answering (see :func:`tiny_vilt_config`)."""
    torch.manual_seed(seed)
    return ViltForQuestionAnswering(tiny_vilt_config(num_labels=num_labels, **overrides)).eval()


def random_batch(
    config: ViltConfig, n: int = 8, seq_len: int = 12, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A batch of random inputs and one-hot labels shaped for ``config``: for tests and benchmarks."""
    gen = torch.Generator().manual_seed(seed)
    size = config.image_size
    labels = torch.zeros(n, config.num_labels)
    labels[torch.arange(n), torch.randint(0, config.num_labels, (n,), generator=gen)] = 1.0
    return {
        "input_ids": torch.randint(0, config.vocab_size, (n, seq_len), generator=gen),
        "attention_mask": torch.ones(n, seq_len, dtype=torch.long),
        "pixel_values": torch.randn(n, 3, size, size, generator=gen),
        "pixel_mask": torch.ones(n, size, size, dtype=torch.long),
        "labels": labels,
    }


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of ``batch`` the model reads (everything but ``labels``)."""
    return {key: value for key, value in batch.items() if key != "labels"}


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Answer-head logits ``(n, num_labels)`` of ``model`` on ``batch``."""
    return model(**model_inputs(batch)).logits


def loss_of(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy of ``logits`` against ``batch["labels"]``, summed over labels and
    averaged over examples (ViLT's VQA loss)."""
    labels = batch["labels"].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / logits.shape[0]
