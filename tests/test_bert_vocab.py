"""Public Chinese GPT-2 checkpoints with a BERT-style vocab.txt: ``prepare --vocab DIR`` and ``--init-from DIR``.

The tests write a tiny model in exactly the layout of such a folder: ``vocab.txt`` (``[PAD]``, ``[unused…]``,
``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, then one token a line: characters, ``##`` pieces, words),
``config.json`` (model_type gpt2, ``tokenizer_class`` BertTokenizer) and the weights as ``tf_model.h5``
(TensorFlow's ``save_pretrained``) or as a PyTorch-format ``model.safetensors`` (PyTorch names and shapes,
written with ``safetensors.numpy``: torch is not installed, so ``pytorch_model.bin`` cannot be written or read;
only its one-line error is tested).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import CHARS, write_raw
from test_extend_vocab import NEW_CHARS, one_line, tiny, tiny_gpt2, weights_by_name

from poetry_gpt.config import DataConfig
from poetry_gpt.data.manifest import load_manifest
from poetry_gpt.data.prepare import prepare
from poetry_gpt.data.vocab import CharVocab, load_base_vocab
from poetry_gpt.errors import DataDirError, RunDirError
from poetry_gpt.model.init_from import load_init

# a BERT-style vocabulary: specials not at 0..2, multi-character tokens, a repeated character
BERT_TOKENS = (["[PAD]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "，", "。", "##春", "the"]
               + list(CHARS) + ["【", "】", "##的", "：", " ", "春", "唐", "诗"])


def write_bert_folder(folder: Path, weights: str, seed: int = 0):
    """A tiny public-checkpoint-style folder; returns the source ``TFGPT2LMHeadModel``.

    Args:
        folder: where to write it.
        weights: "h5" (tf_model.h5) or "safetensors" (PyTorch-format model.safetensors).
        seed: weight seed.
    """
    folder.mkdir(parents=True)
    lm = tiny_gpt2(folder / "tf", len(BERT_TOKENS), seed=seed)
    config = json.loads((folder / "tf" / "config.json").read_text())
    config.update(tokenizer_class="BertTokenizer", architectures=["GPT2LMHeadModel"])
    (folder / "config.json").write_text(json.dumps(config))
    if weights == "h5":
        (folder / "tf" / "tf_model.h5").rename(folder / "tf_model.h5")
    else:
        write_pt_safetensors(lm, folder / "model.safetensors")
    for f in (folder / "tf").iterdir():
        f.unlink()
    (folder / "tf").rmdir()
    (folder / "vocab.txt").write_text("\n".join(BERT_TOKENS) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return lm


def write_pt_safetensors(lm, path: Path) -> None:
    """``lm``'s weights as PyTorch's GPT2LMHeadModel names them (``transformer.h.0.attn.c_attn.weight``, biases
    of shape [n], and the tied ``lm_head.weight``), saved with ``safetensors.numpy`` and format "pt"."""
    from safetensors.numpy import save_file
    from transformers.modeling_tf_pytorch_utils import convert_tf_weight_name_to_pt_weight_name

    tensors = {}
    for v in lm.weights:
        name, _ = convert_tf_weight_name_to_pt_weight_name(v.name, start_prefix_to_remove=lm.name + "/",
                                                           tf_weight_shape=v.shape)
        tensors[name] = np.ascontiguousarray(v.numpy().reshape(-1) if name.endswith(".bias") else v.numpy())
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module", params=["h5", "safetensors"])
def bert(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert") / request.param
    return folder, write_bert_folder(folder, request.param, seed=4)


# ------------------------------------------------------------------------------------ the mapping
def test_bert_vocab_maps_specials_and_keeps_single_characters_in_order(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(BERT_TOKENS) + "\n", encoding="utf-8")
    base = load_base_vocab(tmp_path)
    chars = ["，", "。", *CHARS, "【", "】", "：", " ", "唐", "诗"]  # 春's second line is a repeat: dropped
    assert base.vocab.tokens == ["[PAD]", "[UNK]", "[SEP]", *chars]
    assert base.source_ids == (0, 3, 5, *[BERT_TOKENS.index(c) for c in chars])
    assert base.source_size == len(BERT_TOKENS)
    with pytest.raises(DataDirError) as exc:  # generate / export loaders read only our layout
        CharVocab.load(tmp_path)
    assert "a BERT-style vocabulary" in one_line(exc) and f"--vocab {tmp_path}" in one_line(exc)


@pytest.mark.parametrize("lines", [["[PAD]", "[UNK]", "[SEP]", "春天"], ["[PAD]", "[UNK]", "春"], ["a", "b"]],
                         ids=["ours-but-bad", "bert-without-cls", "words"])
def test_a_vocab_txt_neither_ours_nor_bert_is_one_line_error(tmp_path, lines):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = write_raw(tmp_path / "raw.txt", 20)
    with pytest.raises(DataDirError) as exc:
        prepare([raw], tmp_path / "out", vocab_dir=folder)
    assert one_line(exc).startswith(f"{folder / 'vocab.txt'}: ")
    if lines[0] != "[PAD]" or lines[2] != "[SEP]":
        assert "neither a poetry_gpt vocabulary" in one_line(exc) and "BERT-style" in one_line(exc)
    tiny_gpt2(folder, 40)
    with pytest.raises(RunDirError) as exc:
        load_init(folder, CharVocab(["[PAD]", "[UNK]", "[SEP]", "春"]), tiny())
    assert one_line(exc).startswith(f"--init-from {folder / 'vocab.txt'}: ")
    assert not (tmp_path / "out").exists()


def test_pytorch_bin_without_torch_is_one_line_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed: pytorch_model.bin loads")
    folder = tmp_path / "pt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": len(BERT_TOKENS)}))
    (folder / "pytorch_model.bin").write_bytes(b"PK not really")
    (folder / "vocab.txt").write_text("\n".join(BERT_TOKENS) + "\n", encoding="utf-8")
    with pytest.raises(RunDirError) as exc:
        load_init(folder, load_base_vocab(folder).vocab, tiny())
    assert one_line(exc) == (f"--init-from {folder}: only pytorch_model.bin, which needs PyTorch (not installed); "
                             "install torch, or convert the weights to model.safetensors where it is")


# ------------------------------------------------------------------------------------ prepare and --init-from
def test_prepare_vocab_bert_folder_writes_the_mapped_vocabulary(tmp_path, bert):
    folder, _ = bert
    raw = write_raw(tmp_path / "ci.txt", 30, chars=CHARS[:6] + NEW_CHARS, genre="宋词")
    base = load_base_vocab(folder).vocab
    prepare([raw], tmp_path / "same", DataConfig(valid_fraction=0.1), vocab_dir=folder, n_ctx=64)
    assert load_manifest(tmp_path / "same").load_vocab().tokens == base.tokens
    prepare([raw], tmp_path / "ext", DataConfig(valid_fraction=0.1), vocab_dir=folder, n_ctx=64, extend_vocab=True)
    manifest = load_manifest(tmp_path / "ext")
    ext = manifest.load_vocab()
    assert ext.starts_with(base) and set(ext.tokens[base.size:]) == set(NEW_CHARS + "宋")
    assert manifest.base_vocab_size == base.size and manifest.data["vocab_base"]["hash"] == base.hash


def test_init_from_bert_folder_gathers_their_rows_and_grows(bert):
    import tensorflow as tf

    folder, source = bert
    base = load_base_vocab(folder)
    ext = base.vocab.extended(Counter(NEW_CHARS))
    lm = load_init(folder, ext, tiny())
    old = source.transformer.wte.embeddings.numpy()
    wte = lm.transformer.wte.embeddings.numpy()
    np.testing.assert_array_equal(wte[:base.size], old[list(base.source_ids)])
    np.testing.assert_array_equal(wte[base.size:], np.repeat(
        old[list(base.source_ids)].astype(np.float64).mean(0, keepdims=True), len(NEW_CHARS), 0).astype(np.float32))
    mine, theirs = weights_by_name(lm), weights_by_name(source)
    for name in mine:
        if "wte" not in name:
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    text = "春花【秋月】"
    ours = lm(tf.constant([[ext.sep_id] + ext.encode(text)])).logits.numpy()
    theirs_ids = [BERT_TOKENS.index("[SEP]")] + [BERT_TOKENS.index(c) for c in text]
    reference = source(tf.constant([theirs_ids])).logits.numpy()
    np.testing.assert_allclose(ours[..., :base.size], reference[..., list(base.source_ids)], rtol=0, atol=1e-5)
    c = lm.config
    assert (c.vocab_size, c.bos_token_id, c.eos_token_id, c.pad_token_id, c.tokenizer_class) == (ext.size, 2, 2, 0,
                                                                                                 None)


def test_init_from_bert_folder_refuses_data_prepared_with_another_vocabulary(tmp_path, bert):
    folder, _ = bert
    with pytest.raises(RunDirError) as exc:
        load_init(folder, CharVocab.from_counts(Counter(CHARS)), tiny())
    assert "its vocabulary differs from the DATA_DIR's" in one_line(exc) and f"--vocab {folder}" in one_line(exc)


@pytest.mark.slow
def test_bert_folder_loads_trains_exports_and_generates(tmp_path_factory):
    """prepare --vocab BERTDIR --extend-vocab → train --init-from BERTDIR (CLI) → the export is ours: plain
    transformers' AutoTokenizer / TFGPT2LMHeadModel load it, and generate samples from it."""
    from click.testing import CliRunner
    from transformers import AutoTokenizer, TFGPT2LMHeadModel

    from poetry_gpt.cli import main
    from poetry_gpt.generate.generator import PoemGenerator

    tmp = tmp_path_factory.mktemp("e2e")
    folder = tmp / "bert"
    write_bert_folder(folder, "safetensors", seed=2)
    raw = write_raw(tmp / "ci.txt", 40, chars=CHARS[:6] + NEW_CHARS, genre="宋词")
    run = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp / "ext"), "--vocab", str(folder),
                                    "--extend-vocab", "--context", "64"])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(main, ["train", "--data", str(tmp / "ext"), "--run", str(tmp / "run"), "--config",
                                    "tiny", "--init-from", str(folder), "--steps-per-epoch", "3", "--epochs", "1",
                                    "--precision", "fp32", "--samples-per-epoch", "0", "--quiet"])
    assert run.exit_code == 0, run.output
    export = tmp / "run" / "export"
    ext = load_manifest(tmp / "ext").load_vocab()
    assert CharVocab.load(export).tokens == ext.tokens
    tok = AutoTokenizer.from_pretrained(str(export))
    assert type(tok).__name__ == "PreTrainedTokenizerFast" and tok("春" + NEW_CHARS)["input_ids"] == ext.encode(
        "春" + NEW_CHARS)
    assert TFGPT2LMHeadModel.from_pretrained(str(export)).config.vocab_size == ext.size
    samples = PoemGenerator(tmp / "run").generate(num_samples=2, seed=1, max_new_tokens=20)
    assert len(samples) == 2


def test_mapped_bert_vocab_round_trips_through_transformers_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(BERT_TOKENS) + "\n", encoding="utf-8")
    vocab = load_base_vocab(tmp_path / "bert").vocab
    vocab.save(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    for text in ["春 花【月】", "春x花"]:  # their space token is a character; x is not in it: [UNK]
        assert tok(text)["input_ids"] == vocab.encode(text)
        assert tok.decode(vocab.encode(text)) == vocab.decode(vocab.encode(text))
    assert vocab.encode("春x") == [vocab.id_of("春"), 1]
