"""The character vocabulary: one token per character, built with ``tokenizers``.

Ids 0..2 are the special tokens ``[PAD]`` (padding, never a character),
``[UNK]`` (a character outside the vocabulary) and ``[SEP]`` (the poem
boundary: it stands before every poem in training, so generation starts a poem
after it). Then come the characters, most frequent first (ties by code point),
so a vocabulary is a pure function of the corpus and ``--min-count``.

The saved ``tokenizer.json`` is a ``tokenizers`` WordLevel model that splits
text into single characters and decodes with ``Fuse`` (no spaces inserted);
``transformers.PreTrainedTokenizerFast`` loads it. Encoding many lines at once
(``encode_lines``) uses a code-point lookup table with the same result as the
tokenizer, tens of times faster; ``tests/test_vocab.py`` checks they agree.

A base vocabulary (``prepare --vocab DIR``, ``train --init-from DIR``) is read by ``load_base_vocab``:
either ours, or the BERT-style ``vocab.txt`` of the public Chinese GPT-2 checkpoints, which it maps to
our layout (see ``BaseVocab``). ``CharVocab.extended`` appends a corpus's new characters to a base.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import DataDirError
from ..fsutil import atomic_write_text

PAD, UNK, SEP = "[PAD]", "[UNK]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, SEP)
PAD_ID, UNK_ID, SEP_ID = 0, 1, 2
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"


def codepoints(lines: Iterable[str]) -> np.ndarray:
    """The code points (uint32) of the lines concatenated, for the numpy helpers below."""
    return np.frombuffer("".join(lines).encode("utf-32-le"), dtype=np.uint32)


def counts_of_codepoints(cps: np.ndarray) -> Counter:
    """Occurrences of each character among code points (newlines not counted)."""
    return counts_from_bincount(np.bincount(cps) if len(cps) else np.zeros(0, np.int64))


def counts_from_bincount(counts: np.ndarray) -> Counter:
    """The ``Counter`` of characters from occurrences indexed by code point (newlines not counted)."""
    counts = counts.copy()
    counts[10:11] = 0
    present = np.flatnonzero(counts)
    return Counter(dict(zip(map(chr, present.tolist()), counts[present].tolist())))


def line_lengths(lines: Sequence[str]) -> np.ndarray:
    """The length of each line (int64)."""
    return np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))


class CharVocab:
    """A character vocabulary.

    Args:
        tokens: the token of each id; the first three must be ``SPECIAL_TOKENS``
            and every other token a single character.
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[:3]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}")
        for t in tokens[3:]:
            if len(t) != 1 or t == "\n":
                raise ValueError(f"vocabulary token {t!r} is not a single character")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has repeated tokens")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self._table: np.ndarray | None = None

    # construction -----------------------------------------------------------------
    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1) -> "CharVocab":
        """Build from character counts; characters seen fewer than ``min_count`` times map to [UNK].

        Args:
            counts: occurrences of each character in the corpus.
            min_count: the least number of occurrences that earns a character its own id.
        """
        chars = [c for c, n in counts.items() if n >= min_count and c != "\n"]
        chars.sort(key=lambda c: (-counts[c], ord(c)))
        return cls(list(SPECIAL_TOKENS) + chars)

    def extended(self, counts: Counter, min_count: int = 1) -> "CharVocab":
        """This vocabulary with the characters of ``counts`` it lacks appended (``prepare --extend-vocab``).

        Every id of ``self`` is kept; the new characters follow, most frequent first (ties by code
        point), as ``from_counts`` orders a new vocabulary; those seen fewer than ``min_count`` times
        stay [UNK].

        Args:
            counts: occurrences of each character in the corpus.
            min_count: the least number of occurrences that earns a new character an id.
        """
        new = [c for c, n in counts.items() if n >= min_count and c != "\n" and c not in self.index]
        new.sort(key=lambda c: (-counts[c], ord(c)))
        return CharVocab(self.tokens + new)

    def starts_with(self, base: "CharVocab") -> bool:
        """Whether ``base``'s tokens are this vocabulary's first ones, with the same ids."""
        return self.tokens[:base.size] == base.tokens

    @staticmethod
    def count_chars(lines: Iterable[str]) -> Counter:
        """Count characters of many lines quickly (numpy over UTF-32 code points).

        Args:
            lines: the text lines to count (newlines are not counted).
        """
        return counts_of_codepoints(codepoints(lines))

    # properties -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def sep_id(self) -> int:
        return SEP_ID

    def id_of(self, char: str) -> int:
        """The id of one character ([UNK]'s id when it is not in the vocabulary)."""
        return self.index.get(char, UNK_ID)

    def __contains__(self, char: str) -> bool:
        return char in self.index and char not in SPECIAL_TOKENS

    @property
    def hash(self) -> str:
        """sha256 of the token list: two vocabularies agree exactly when their hashes do."""
        return hashlib.sha256("\n".join(self.tokens).encode("utf-8")).hexdigest()

    def missing_chars(self, text: str) -> list[str]:
        """Characters of ``text`` that the vocabulary lacks, in order of first appearance."""
        seen: dict[str, None] = {}
        for c in text:
            if c not in self.index and c not in seen:
                seen[c] = None
        return list(seen)

    # encoding ---------------------------------------------------------------------
    def _lookup_table(self) -> np.ndarray:
        if self._table is None:
            top = max(ord(t) for t in self.tokens[3:]) if len(self.tokens) > 3 else 0
            table = np.full(max(top + 1, 11), UNK_ID, dtype=np.int32)
            for i, t in enumerate(self.tokens[3:], start=3):
                table[ord(t)] = i
            self._table = table
        return self._table

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` (no special tokens added)."""
        flat, _ = self.encode_lines([text])
        return flat.tolist()

    def encode_lines(self, lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode many lines at once.

        Args:
            lines: text lines (a newline inside one is not in the vocabulary: [UNK]).

        Returns:
            ``(ids, lengths)``: all ids concatenated (int32) and the length of each line.
        """
        if not lines:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return self.encode_codepoints(codepoints(lines)), line_lengths(lines)

    def encode_codepoints(self, cps: np.ndarray) -> np.ndarray:
        """Ids (int32) of code points such as ``codepoints(lines)``: one id per code point."""
        table = self._lookup_table()
        if len(cps) and int(cps.max()) >= len(table):
            return np.where(cps < len(table), table[np.minimum(cps, len(table) - 1)], UNK_ID).astype(np.int32)
        return table[cps]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; special tokens are kept as ``[PAD]`` etc. unless ``skip_special``."""
        toks = self.tokens
        if skip_special:
            return "".join(toks[i] for i in ids if i >= 3)
        return "".join(toks[i] for i in ids)

    # files ------------------------------------------------------------------------
    def to_tokenizer(self):
        """The ``tokenizers.Tokenizer`` for this vocabulary (char split, Fuse decoder)."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel(vocab=dict(self.index), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        return tok

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json``, ``vocab.txt`` and the transformers tokenizer files.

        Args:
            directory: an existing folder; files are written to temporary names and renamed.
        """
        directory = Path(directory)
        tok = self.to_tokenizer()
        atomic_write_text(directory / TOKENIZER_FILE, tok.to_str())
        atomic_write_text(directory / VOCAB_FILE, "\n".join(self.tokens) + "\n")
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": PAD,
            "unk_token": UNK,
            "bos_token": SEP,
            "eos_token": SEP,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1000000,
        }
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2))
        specials = {"pad_token": PAD, "unk_token": UNK, "bos_token": SEP, "eos_token": SEP}
        atomic_write_text(directory / "special_tokens_map.json", json.dumps(specials, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CharVocab":
        """Read the vocabulary saved in ``directory`` (its ``vocab.txt``).

        Args:
            directory: a DATA_DIR, RUN_DIR, export folder or any folder with ``vocab.txt``.
        """
        path, tokens = read_vocab_file(directory)
        if tokens[:3] != list(SPECIAL_TOKENS) and is_bert_style(tokens):
            raise DataDirError(f"{path}: a BERT-style vocabulary (a public checkpoint's); use the folder through "
                               f"`poetry-gpt prepare RAW --vocab {directory}` and `train --init-from {directory}`")
        try:
            return cls(tokens)
        except ValueError as exc:
            raise DataDirError(f"{path}: {exc}; rerun `poetry-gpt prepare`") from None


def read_vocab_file(directory: str | os.PathLike) -> tuple[Path, list[str]]:
    """``(path, tokens)`` of the ``vocab.txt`` in ``directory``, one token a line.

    Args:
        directory: the folder holding it.

    Raises:
        DataDirError: there is no ``vocab.txt``.
    """
    path = Path(directory) / VOCAB_FILE
    if not path.is_file():
        raise DataDirError(f"{directory}: no {VOCAB_FILE} here; pass a folder written by "
                           "`poetry-gpt prepare` (or a run's export/)")
    text = path.read_text(encoding="utf-8")
    return path, text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def is_bert_style(tokens: Sequence[str]) -> bool:
    """Whether ``tokens`` hold every one of ``BERT_SPECIAL_TOKENS`` (the public Chinese GPT-2s' vocab.txt)."""
    return set(BERT_SPECIAL_TOKENS) <= set(tokens)


@dataclass(frozen=True)
class BaseVocab:
    """The vocabulary of a ``--vocab`` / ``--init-from`` folder, in our layout.

    A BERT-style ``vocab.txt`` (``[PAD]``, ``[unused…]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``,
    then one token a line: CJK characters, punctuation, ``##`` word pieces, Latin words) is mapped:

    * our ``[PAD]`` (padding) is their ``[PAD]``, our ``[UNK]`` their ``[UNK]``, and our ``[SEP]``
      (the poem boundary, before every poem) their ``[SEP]``; these take our ids 0, 1, 2;
    * every other single-character token follows in their order (first occurrence if repeated);
    * ``[CLS]``, ``[MASK]``, ``[unused…]`` and every multi-character token are dropped (our
      one-character-a-token encoding never produces them).

    ``source_ids[i]`` is the row of the folder's embedding that holds our id ``i``; ``--init-from``
    gathers those rows (``model.init_from``), so the model starts with their learned embeddings.

    Args:
        vocab: the vocabulary in our layout.
        source_ids: the folder's id of each of ``vocab``'s ids, or None when the folder is ours (same ids).
        source_size: the number of tokens in the folder's ``vocab.txt``.
    """

    vocab: CharVocab
    source_ids: tuple[int, ...] | None
    source_size: int

    @property
    def size(self) -> int:
        return self.vocab.size


def load_base_vocab(directory: str | os.PathLike) -> BaseVocab:
    """Read the ``vocab.txt`` of a DATA_DIR, RUN_DIR, export or BERT-style checkpoint folder.

    Args:
        directory: the folder.

    Raises:
        DataDirError: no ``vocab.txt``, or one that is neither ours nor BERT-style (one line naming it).
    """
    path, tokens = read_vocab_file(directory)
    if tokens[:3] == list(SPECIAL_TOKENS):
        return BaseVocab(CharVocab.load(directory), None, len(tokens))
    if not is_bert_style(tokens):
        raise DataDirError(f"{path}: neither a poetry_gpt vocabulary (first lines {', '.join(SPECIAL_TOKENS)}) nor "
                           f"a BERT-style one ({', '.join(BERT_SPECIAL_TOKENS)} among one token a line); pass a "
                           "DATA_DIR, a run's export/ or a public Chinese GPT-2 checkpoint folder")
    first = {}
    for i, t in enumerate(tokens):
        first.setdefault(t, i)
    chars = [t for t, i in first.items() if len(t) == 1 and t != "\n"]
    ids = [first[PAD], first[UNK], first[SEP]] + [first[c] for c in chars]
    return BaseVocab(CharVocab(list(SPECIAL_TOKENS) + chars), tuple(ids), len(tokens))

