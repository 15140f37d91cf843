"""Tokenizers built offline from the words of a text set, with the ``tokenizers`` library.

The tiny built-in bases need a vocabulary but no hub download: a word-level vocabulary of the
lower-cased words of the questions and answers they see (BERT normalisation and pre-tokenisation),
wrapped as a ``transformers`` fast tokenizer so that it saves with ``save_pretrained`` and loads with
``from_pretrained`` like any hub tokenizer.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece


def words_of(texts: list[str]) -> list[str]:
    """The sorted distinct lower-cased words of ``texts`` under BERT pre-tokenisation."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return sorted(
        {word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    )


def word_tokenizer(texts: list[str], specials: tuple[str, ...], unk: str, single: str, pair: str | None) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` over ``specials`` then the words of ``texts``.

    ``single``/``pair`` are ``TemplateProcessing`` templates (e.g. ``"[CLS] $A [SEP]"``); the specials
    are added tokens, so a special written inside a text (``<image>``) stays one token.
    """
    vocab = {token: i for i, token in enumerate([*specials, *words_of(texts)])}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in specials])
    used = [token for token in specials if token in single or (pair is not None and token in pair)]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(token, vocab[token]) for token in used]
    )
    return tokenizer
