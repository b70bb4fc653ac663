"""``prepare --vocab BASE --extend-vocab`` and ``--init-from BASE`` with an extended vocabulary (issue 15)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import CHARS, write_raw

from poetry_gpt.config import DataConfig, config_from_preset
from poetry_gpt.data.manifest import load_manifest, vocab_base
from poetry_gpt.data.prepare import prepare
from poetry_gpt.data.vocab import SPECIAL_TOKENS, CharVocab
from poetry_gpt.errors import DataDirError, OptionError, RunDirError
from poetry_gpt.model.init_from import load_init

NEW_CHARS = "词阙醉蝶恋"  # song-ci-like characters the base lacks (the genre word 宋词 adds 宋)


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def tiny(**train):
    values = dict(precision="fp32", steps_per_epoch=3, epochs=1, samples_per_epoch=0, checkpoint_every=0)
    return config_from_preset("tiny").replace(train={**values, **train})


def tiny_gpt2(folder: Path, vocab_size: int, seed: int = 0, **config):
    """A random ``TFGPT2LMHeadModel`` of the tiny preset's shape written by ``save_pretrained`` into ``folder``.

    Args:
        folder: where to write it.
        vocab_size: its number of token rows.
        seed: weight seed.
        config: more ``GPT2Config`` settings.
    """
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    m = tiny().model
    tf.keras.utils.set_random_seed(seed)
    lm = TFGPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=m.n_ctx, n_embd=m.n_embd,
                                      n_layer=m.n_layer, n_head=m.n_head, **config))
    lm(tf.zeros([1, 2], tf.int32))
    lm.save_pretrained(str(folder))
    return lm


def weights_by_name(lm) -> dict[str, np.ndarray]:
    return {v.name.split("/", 1)[1]: v.numpy() for v in lm.weights}


# ------------------------------------------------------------------------------------ the vocabulary
def test_extended_keeps_every_id_and_appends_new_characters_by_frequency():
    base = CharVocab.from_counts(Counter("春春花月"))
    ext = base.extended(Counter({"春": 9, "醉": 1, "词": 3, "阙": 3, "蝶": 1}), min_count=2)
    assert ext.tokens == base.tokens + ["词", "阙"]  # 3, 3 (ties by code point: 词 U+8BCD < 阙 U+9619); 醉, 蝶 < 2
    assert ext.starts_with(base) and not base.starts_with(ext)
    assert ext.encode("春词醉") == [base.id_of("春"), base.size, 1]
    assert base.extended(Counter("春花")).tokens == base.tokens  # nothing new: the same vocabulary


def test_extended_vocab_round_trips_through_transformers_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    ext = CharVocab.from_counts(Counter(CHARS)).extended(Counter(NEW_CHARS + "，。【】"))
    ext.save(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    text = "春" + NEW_CHARS + "【】"
    assert tok(text)["input_ids"] == ext.encode(text) and max(ext.encode(text)) >= len(CHARS) + 3
    assert tok.decode(ext.encode(text)) == text == ext.decode(ext.encode(text))
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2)


# ------------------------------------------------------------------------------------ prepare
@pytest.fixture(scope="module")
def base_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    prepare([write_raw(root / "raw.txt", 60)], root / "data", DataConfig(valid_fraction=0.1), n_ctx=64)
    return root / "data"


@pytest.fixture(scope="module")
def ci_raw(tmp_path_factory) -> Path:
    return write_raw(tmp_path_factory.mktemp("ci") / "ci.txt", 60, seed=5, chars=CHARS[:8] + NEW_CHARS, genre="宋词")


def test_prepare_extend_vocab_keeps_base_ids_and_records_the_base(tmp_path, base_data, ci_raw):
    base = CharVocab.load(base_data)
    result = prepare([ci_raw], tmp_path / "ext", DataConfig(valid_fraction=0.1), vocab_dir=base_data,
                     n_ctx=64, extend_vocab=True)
    manifest = load_manifest(tmp_path / "ext")
    ext = manifest.load_vocab()
    assert ext.starts_with(base) and sorted(ext.tokens[base.size:]) == sorted(NEW_CHARS + "宋")
    assert manifest.data["vocab_base"] == {"size": base.size, "hash": base.hash}
    assert manifest.base_vocab_size == vocab_base(tmp_path / "ext") == vocab_base(manifest) == base.size
    assert result.report["unk_occurrences"] == 0 and result.report["not_in_vocab"]["characters"] == 0
    # new characters by frequency in the corpus, ties by code point
    counts = Counter(ci_raw.read_text(encoding="utf-8"))
    assert ext.tokens[base.size:] == sorted(NEW_CHARS + "宋", key=lambda c: (-counts[c], ord(c)))


def test_prepare_without_extend_vocab_reports_unk_and_records_no_base(tmp_path, base_data, ci_raw):
    result = prepare([ci_raw], tmp_path / "same", DataConfig(valid_fraction=0.1), vocab_dir=base_data, n_ctx=64)
    manifest = load_manifest(tmp_path / "same")
    assert "vocab_base" not in manifest.data and manifest.base_vocab_size is None
    assert manifest.vocab_hash == CharVocab.load(base_data).hash
    assert result.report["unk_occurrences"] > 0
    assert set(result.report["not_in_vocab"]["most_common"]) == set(NEW_CHARS + "宋")


def test_extend_vocab_needs_vocab_one_line_error(tmp_path, ci_raw):
    with pytest.raises(OptionError) as exc:
        prepare([ci_raw], tmp_path / "x", extend_vocab=True)
    assert one_line(exc).startswith("--extend-vocab: needs --vocab BASE")
    assert not (tmp_path / "x").exists()


def cli_error(result) -> str:
    """The one ``Error:`` line of a failed CLI run (no traceback)."""
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_cli_extend_vocab_without_vocab_is_one_line_and_report_names_new_characters(tmp_path, base_data, ci_raw):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    bad = CliRunner().invoke(main, ["prepare", str(ci_raw), "--out", str(tmp_path / "x"), "--extend-vocab"])
    assert cli_error(bad).startswith("Error: --extend-vocab: needs --vocab BASE")
    good = CliRunner().invoke(main, ["prepare", str(ci_raw), "--out", str(tmp_path / "ok"), "--vocab", str(base_data),
                                     "--extend-vocab", "--context", "64"])
    assert good.exit_code == 0, good.output
    size = CharVocab.load(base_data).size
    assert f"Extended the vocabulary of {base_data} ({size} tokens) with {len(NEW_CHARS) + 1} new character(s)." \
        in good.output


# ------------------------------------------------------------------------------------ --init-from
def test_load_init_grows_the_embedding_with_the_base_mean(tmp_path, base_data):
    import tensorflow as tf

    base = CharVocab.load(base_data)
    folder = tmp_path / "base"
    source = tiny_gpt2(folder, base.size, seed=3)
    base.save(folder)
    ext = base.extended(Counter(NEW_CHARS))
    lm = load_init(folder, ext, tiny())
    wte, old = lm.transformer.wte.embeddings.numpy(), source.transformer.wte.embeddings.numpy()
    assert wte.shape == (ext.size, old.shape[1]) and lm.config.vocab_size == ext.size
    np.testing.assert_array_equal(wte[:base.size], old)  # the base's rows, bit for bit
    np.testing.assert_array_equal(wte[base.size:], np.repeat(old.astype(np.float64).mean(0, keepdims=True),
                                                             len(NEW_CHARS), 0).astype(np.float32))
    mine, theirs = weights_by_name(lm), weights_by_name(source)
    assert mine.keys() == theirs.keys()
    for name in mine:
        if "wte" not in name:
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    # on text of base characters the grown model is the base model: the same logits for the base's ids
    ids = tf.constant([[2] + base.encode("春花秋月山水")])
    np.testing.assert_allclose(lm(ids).logits.numpy()[..., :base.size], source(ids).logits.numpy(), rtol=0,
                               atol=1e-5)
    assert (lm.config.bos_token_id, lm.config.pad_token_id) == (ext.sep_id, ext.pad_id)
    again = load_init(folder, ext, tiny())  # deterministic: nothing random in the new rows
    np.testing.assert_array_equal(again.transformer.wte.embeddings.numpy(), wte)


def test_load_init_refuses_a_vocab_that_does_not_start_with_the_base(tmp_path, base_data):
    base = CharVocab.load(base_data)
    folder = tmp_path / "base"
    tiny_gpt2(folder, base.size)
    base.save(folder)
    swapped = CharVocab(base.tokens[:3] + [base.tokens[4], base.tokens[3]] + base.tokens[5:] + list(NEW_CHARS))
    with pytest.raises(RunDirError) as exc:
        load_init(folder, swapped, tiny())
    text = one_line(exc)
    assert text.startswith(f"--init-from {folder}: its vocabulary differs from the DATA_DIR's")
    assert f"--vocab {folder}" in text and "--extend-vocab" in text
    with pytest.raises(RunDirError) as exc:  # a base larger than the run's vocabulary
        load_init(folder, CharVocab(base.tokens[:-1]), tiny())
    assert "vocabulary differs" in one_line(exc)


def test_load_init_refuses_a_folder_whose_vocab_txt_and_model_disagree(tmp_path, base_data):
    base = CharVocab.load(base_data)
    folder = tmp_path / "base"
    tiny_gpt2(folder, base.size + 2)
    base.save(folder)
    with pytest.raises(RunDirError) as exc:
        load_init(folder, base.extended(Counter(NEW_CHARS)), tiny())
    assert one_line(exc) == (f"--init-from {folder}: the model has {base.size + 2} token rows but its vocab.txt has "
                             f"{base.size} lines; the folder is inconsistent")


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_base_run_then_extended_fine_tune_trains_exports_and_generates(tmp_path, ci_raw):
    """base tiny run → prepare song-ci-like data --vocab base export --extend-vocab → train --init-from the base
    export (plain full fine-tuning) → the export keeps the base's ids, its embedding grew, generate works,
    and plain transformers loads it with the tokenizer."""
    from helpers import train_tiny
    from transformers import PreTrainedTokenizerFast, TFGPT2LMHeadModel

    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.train.loop import train

    base_run = train_tiny(write_raw(tmp_path / "tang.txt", 100), tmp_path / "tang", steps=5)
    base_export = base_run / "export"
    base = CharVocab.load(base_export)
    prepare([ci_raw], tmp_path / "ci", DataConfig(valid_fraction=0.1), vocab_dir=base_export, n_ctx=64,
            extend_vocab=True)
    ext = load_manifest(tmp_path / "ci").load_vocab()
    start = load_init(base_export, ext, tiny())  # what the run starts from
    base_wte = TFGPT2LMHeadModel.from_pretrained(str(base_export)).transformer.wte.embeddings.numpy()
    np.testing.assert_array_equal(start.transformer.wte.embeddings.numpy()[:base.size], base_wte)
    np.testing.assert_allclose(start.transformer.wte.embeddings.numpy()[base.size:],
                               np.broadcast_to(base_wte.mean(0), (ext.size - base.size, base_wte.shape[1])),
                               rtol=0, atol=1e-7)

    result = train(tmp_path / "ci", tmp_path / "run", tiny(), init_from=base_export, echo=lambda s: None, verbose=0)
    assert result.global_step == 3
    export = tmp_path / "run" / "export"
    got = CharVocab.load(export)
    assert got.tokens == ext.tokens and got.starts_with(base)
    lm = TFGPT2LMHeadModel.from_pretrained(str(export))
    assert lm.transformer.wte.embeddings.shape[0] == ext.size > base.size
    tok = PreTrainedTokenizerFast.from_pretrained(str(export))
    assert tok("春" + NEW_CHARS)["input_ids"] == ext.encode("春" + NEW_CHARS)
    samples = PoemGenerator(tmp_path / "run").generate(num_samples=2, seed=1, max_new_tokens=20)
    assert len(samples) == 2 and all(isinstance(s.text, str) for s in samples)
    meta = json.loads((export / "poetry_gpt.json").read_text())
    assert meta["vocab_hash"] == ext.hash and SPECIAL_TOKENS == tuple(got.tokens[:3])
