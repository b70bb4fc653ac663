"""The character vocabulary: lossless round trips, agreement with ``tokenizers`` and transformers, hashing."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from poetry_gpt.errors import DataDirError
from poetry_gpt.data.vocab import (PAD, PAD_ID, SEP, SEP_ID, SPECIAL_TOKENS, UNK, UNK_ID, CharVocab, codepoints, counts_of_codepoints)


@pytest.fixture(scope="module")
def tang_lines(shared_corpus) -> list[str]:
    text = (shared_corpus / "tang-4k.raw.txt").read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if line.strip()]
    assert len(lines) == 4000
    return lines


@pytest.fixture(scope="module")
def tang_vocab(tang_lines) -> CharVocab:
    return CharVocab.from_counts(CharVocab.count_chars(tang_lines))


def _split(ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    return [chunk.tolist() for chunk in np.split(ids, np.cumsum(lengths)[:-1])]


# --- building ------------------------------------------------------------------------------

def test_special_tokens_first_then_chars_by_frequency():
    vocab = CharVocab.from_counts(Counter({"b": 3, "a": 3, "c": 5, "d": 1}))
    assert vocab.tokens == [PAD, UNK, SEP, "c", "a", "b", "d"]  # ties broken by code point
    assert (vocab.pad_id, vocab.unk_id, vocab.sep_id) == (PAD_ID, UNK_ID, SEP_ID) == (0, 1, 2)
    assert vocab.size == len(vocab) == 7
    assert "a" in vocab and PAD not in vocab and "z" not in vocab
    assert vocab.id_of("z") == UNK_ID


def test_count_chars_matches_counter(tang_lines):
    assert CharVocab.count_chars(tang_lines[:200]) == Counter("".join(tang_lines[:200]))
    assert CharVocab.count_chars([]) == Counter()
    assert counts_of_codepoints(codepoints(["a\nb", "a"])) == Counter("aba")  # newlines are not counted


@pytest.mark.parametrize("tokens, message", [
    (["a", "b", "c"], "must start with"),
    ([*SPECIAL_TOKENS, "ab"], "not a single character"),
    ([*SPECIAL_TOKENS, "\n"], "not a single character"),
    ([*SPECIAL_TOKENS, "a", "a"], "repeated"),
])
def test_invalid_token_lists(tokens, message):
    with pytest.raises(ValueError, match=message):
        CharVocab(tokens)


# --- round trip on the whole of tang-4k -----------------------------------------------------

def test_round_trip_every_line(tang_lines, tang_vocab):
    ids, lengths = tang_vocab.encode_lines(tang_lines)
    assert ids.dtype == np.int32 and lengths.tolist() == [len(line) for line in tang_lines]
    assert UNK_ID not in ids and PAD_ID not in ids and SEP_ID not in ids
    for line, line_ids in zip(tang_lines, _split(ids, lengths)):
        decoded = tang_vocab.decode(line_ids)
        assert decoded == line  # lossless, no spaces inserted
    # the one-line API agrees with the batch API
    for line in tang_lines[:300]:
        assert tang_vocab.decode(tang_vocab.encode(line)) == line


def test_encode_lines_equals_tokenizers_on_every_line(tang_lines, tang_vocab):
    tok = tang_vocab.to_tokenizer()
    ids, lengths = tang_vocab.encode_lines(tang_lines)
    ours = _split(ids, lengths)
    theirs = [enc.ids for enc in tok.encode_batch(tang_lines)]
    assert ours == theirs
    assert all(tok.decode(i) == line for i, line in zip(theirs, tang_lines))
    assert tok.encode(tang_lines[1]).ids == tang_vocab.encode(tang_lines[1])


def test_min_count_maps_rare_chars_to_unk(tang_lines):
    counts = CharVocab.count_chars(tang_lines)
    vocab = CharVocab.from_counts(counts, min_count=3)
    rare = {c for c, n in counts.items() if n < 3}
    assert rare and not any(c in vocab for c in rare)
    assert vocab.size == 3 + sum(1 for n in counts.values() if n >= 3)
    ids, lengths = vocab.encode_lines(tang_lines)
    assert int(np.count_nonzero(ids == UNK_ID)) == sum(counts[c] for c in rare)
    # the tokenizers tokenizer maps the same characters to [UNK]
    tok = vocab.to_tokenizer()
    assert _split(ids, lengths) == [enc.ids for enc in tok.encode_batch(tang_lines)]
    line = next(line for line in tang_lines if any(c in rare for c in line))
    decoded = vocab.decode(vocab.encode(line))
    assert UNK in decoded and decoded.replace(UNK, "") == "".join(c for c in line if c not in rare)


def test_unusual_characters_round_trip():
    lines = ["title with  spaces 宋词：【𠀋𠀍 ASCII, tab\tand\u3000ideographic space】", "a:b\u00e9\u200d"]
    vocab = CharVocab.from_counts(CharVocab.count_chars(lines))
    tok = vocab.to_tokenizer()
    for line in lines:
        assert vocab.decode(vocab.encode(line)) == line
        assert tok.encode(line).ids == vocab.encode(line)
        assert tok.decode(tok.encode(line).ids) == line
    # characters outside the vocabulary (including code points above its largest) are [UNK]
    assert vocab.encode("a龘\U0002FFFF") == [vocab.id_of("a"), UNK_ID, UNK_ID]
    assert vocab.missing_chars("a龘b龘z") == ["龘", "z"]


def test_decode_special_tokens():
    vocab = CharVocab.from_counts(Counter("床前明月光"))
    ids = [SEP_ID] + vocab.encode("明月") + [PAD_ID, PAD_ID]
    assert vocab.decode(ids) == "[SEP]明月[PAD][PAD]"
    assert vocab.decode(ids, skip_special=True) == "明月"


# --- files and transformers -----------------------------------------------------------------

def test_saved_tokenizer_loads_in_transformers(tmp_path, tang_lines, tang_vocab):
    from transformers import PreTrainedTokenizerFast

    tang_vocab.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert tok.pad_token == PAD and tok.pad_token_id == 0 and tok.pad_token != "】"
    assert tok.convert_tokens_to_ids("】") not in (0, None)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (UNK_ID, SEP_ID, SEP_ID)
    assert len(tok) == tang_vocab.size
    ids, lengths = tang_vocab.encode_lines(tang_lines)
    expected = _split(ids, lengths)
    encoded = tok(tang_lines, add_special_tokens=True)["input_ids"]
    assert encoded == expected  # no special tokens added, same ids
    decoded = tok.batch_decode(encoded)
    assert decoded == tang_lines  # no spaces inserted
    assert tok.decode([SEP_ID] + expected[0] + [PAD_ID], skip_special_tokens=True) == tang_lines[0]
    batch = tok(tang_lines[:3], padding=True, return_tensors="np")
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


def test_save_load_round_trip_and_hash(tmp_path, tang_lines, tang_vocab):
    tang_vocab.save(tmp_path)
    loaded = CharVocab.load(tmp_path)
    assert loaded.tokens == tang_vocab.tokens and loaded.hash == tang_vocab.hash
    assert not list(tmp_path.glob("*.tmp"))
    # stable: a pure function of the corpus and min_count
    again = CharVocab.from_counts(CharVocab.count_chars(list(reversed(tang_lines))))
    assert again.hash == tang_vocab.hash
    assert len(tang_vocab.hash) == 64
    # different: other min_count, other corpus, same characters in another order
    assert CharVocab.from_counts(CharVocab.count_chars(tang_lines), min_count=2).hash != tang_vocab.hash
    assert CharVocab.from_counts(CharVocab.count_chars(tang_lines[:100])).hash != tang_vocab.hash
    swapped = list(tang_vocab.tokens)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    assert CharVocab(swapped).hash != tang_vocab.hash


def test_load_errors(tmp_path):
    with pytest.raises(DataDirError, match="no vocab.txt here"):
        CharVocab.load(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DataDirError, match=r"vocab.txt: .*must start with.*rerun `poetry-gpt prepare`"):
        CharVocab.load(tmp_path)
