"""TFRecords: serialisation, writing and reading back, the packed training stream, validation batches."""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from poetry_gpt.config import DataConfig
from poetry_gpt.data.corpus import read_corpus
from poetry_gpt.errors import DataDirError
from poetry_gpt.data.prepare import prepare, split_indices
from poetry_gpt.data.datasets import IGNORE_INDEX, batches_per_pass, eval_dataset, read_poem_ids, train_dataset
from poetry_gpt.data.manifest import MANIFEST, load_manifest
from poetry_gpt.data.tfexample import _varints, serialize_buffer, serialize_examples
from poetry_gpt.data.vocab import PAD_ID, SEP_ID, CharVocab

tf = pytest.importorskip("tensorflow")

B, T = 4, 16  # batch rows and context of the tiny pipeline tests


def _example(ids) -> bytes:
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i) for i in ids]))
    return tf.train.Example(features=tf.train.Features(feature={"ids": feature})).SerializeToString()


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A DATA_DIR of 60 short poems (some longer than the context T) in several shards."""
    rng = random.Random(7)
    chars = "床前明月光疑是地上霜举头望低思故乡春眠不觉晓处闻啼鸟夜来风雨声花落知多少"
    lines, bodies = [], set()
    while len(lines) < 60:
        body = "".join(rng.choice(chars) for _ in range(rng.randint(3, 40)))
        if body not in bodies:
            bodies.add(body)
            lines.append(f"题{len(lines)} 唐诗：【{body}】")
    root = tmp_path_factory.mktemp("tiny")
    raw = root / "tiny.raw.txt"
    raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = prepare([raw], root / "data", DataConfig(valid_fraction=0.2, shard_poems=7, seed=3))
    return raw, result.data_dir


def _expected_split_ids(raw, data_dir, config: DataConfig):
    poems = read_corpus([raw], keep_duplicates=config.keep_duplicates).poems
    vocab = CharVocab.load(data_dir)
    encoded = [vocab.encode(p.text) for p in poems]
    train, valid = split_indices(len(poems), config.valid_fraction, config.seed)
    return [encoded[i] for i in train], [encoded[i] for i in valid]


def _pass_tokens(manifest, **kw) -> np.ndarray:
    per_pass = batches_per_pass(manifest, B, T)
    rows = [b["input_ids"].numpy() for b in train_dataset(manifest, B, T, **kw).take(per_pass)]
    return np.concatenate(rows).reshape(-1)


# --- serialisation --------------------------------------------------------------------------

@pytest.mark.parametrize("top", [100, 128, 16383, 16384, 70_000, 2 ** 40])
def test_varints_match_protobuf(top):
    values = np.random.default_rng(top).integers(0, top, 2000)
    values[:3] = [0, top - 1, min(127, top - 1)]
    payload, counts = _varints(values)
    assert payload.tobytes() == b"".join(_varint_bytes(int(v)) for v in values)
    assert counts.tolist() == [len(_varint_bytes(int(v))) for v in values]


@pytest.mark.parametrize("top", [50, 7000, 16384, 300_000])
def test_serialize_examples_byte_identical_to_tf_example(top):
    rng = np.random.default_rng(top)
    lengths = np.array([0, 1, 2, 60, 0, 5000, 3, 127, 128, 1], dtype=np.int64)
    ids = rng.integers(0, top, int(lengths.sum()))
    records = serialize_examples(ids, lengths)
    assert len(records) == len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i, record in enumerate(records):
        assert record == _example(ids[offsets[i]:offsets[i + 1]]), i
    buf, ends = serialize_buffer(ids, lengths)
    assert buf == b"".join(records) and ends.tolist() == np.cumsum([len(r) for r in records]).tolist()
    assert serialize_examples(np.zeros(0, np.int32), np.zeros(0, np.int64)) == []


def test_serialize_examples_rejects_bad_input():
    with pytest.raises(ValueError, match="do not split"):
        serialize_examples(np.arange(5), np.array([2, 2]))
    with pytest.raises(ValueError, match="negative"):
        serialize_examples(np.array([1, -1]), np.array([2]))


def test_serialize_examples_parse_back():
    lengths = np.array([3, 0, 2])
    ids = np.array([5, 300, 9, 7, 16384])
    parsed = tf.io.parse_example(serialize_examples(ids, lengths), {"ids": tf.io.RaggedFeature(tf.int64)})
    assert parsed["ids"].to_list() == [[5, 300, 9], [], [7, 16384]]


# --- writing and reading back ----------------------------------------------------------------

def test_written_records_equal_the_encoded_poems(tiny):
    raw, data_dir = tiny
    manifest = load_manifest(data_dir)
    train, valid = _expected_split_ids(raw, data_dir, DataConfig(valid_fraction=0.2, shard_poems=7, seed=3))
    assert read_poem_ids(manifest, "train") == train
    assert read_poem_ids(manifest, "valid") == valid
    assert len(manifest.shards("train")) == 7 and len(manifest.shards("valid")) == 2  # 48 and 12 poems
    assert manifest.poems("train") == 48 and manifest.tokens("train") == sum(map(len, train))
    assert manifest.vocab_hash == CharVocab.load(data_dir).hash and manifest.genre == "唐诗"


def test_tang_4k_records_equal_the_encoded_poems(shared_corpus, tmp_path):
    raw = shared_corpus / "tang-4k.raw.txt"
    config = DataConfig()
    data_dir = prepare([raw], tmp_path / "d", config).data_dir
    manifest = load_manifest(data_dir)
    train, valid = _expected_split_ids(raw, data_dir, config)
    assert read_poem_ids(manifest, "train") == train
    assert read_poem_ids(manifest, "valid") == valid
    assert len(train) + len(valid) == 4000


# --- the packed training stream -------------------------------------------------------------

def test_train_batches_are_packed_stream_of_the_training_split(tiny):
    raw, data_dir = tiny
    manifest = load_manifest(data_dir)
    train, _ = _expected_split_ids(raw, data_dir, DataConfig(valid_fraction=0.2, shard_poems=7, seed=3))
    per_pass = batches_per_pass(manifest, B, T)
    stream_len = sum(len(p) + 1 for p in train)
    assert per_pass == stream_len // T // B >= 3
    batches = list(train_dataset(manifest, B, T).take(per_pass))
    for batch in batches:
        assert batch["input_ids"].shape == (B, T) and batch["input_ids"].dtype == tf.int32
        assert (batch["labels"].numpy() == batch["input_ids"].numpy()).all()
    flat = np.concatenate([b["input_ids"].numpy() for b in batches]).reshape(-1)
    assert PAD_ID not in flat  # no padding at all
    # loses less than one batch of the stream
    assert 0 <= stream_len - len(flat) < B * T
    # the multiset of tokens is within the split's ([SEP] + poem for every poem)
    available = Counter(t for p in train for t in [SEP_ID, *p])
    assert not Counter(flat.tolist()) - available
    # and it is exactly [SEP] + poem, poem after poem, each poem at most once
    assert flat[0] == SEP_ID
    segments = np.split(flat, np.flatnonzero(flat == SEP_ID))[1:]
    whole, last = [s[1:].tolist() for s in segments[:-1]], segments[-1][1:].tolist()
    remaining = Counter(map(tuple, train))
    remaining.subtract(Counter(map(tuple, whole)))
    assert all(n >= 0 for n in remaining.values())
    assert any(n > 0 and list(p[:len(last)]) == last for p, n in remaining.items())


def test_exact_resume_from_any_step(tiny):
    _, data_dir = tiny
    manifest = load_manifest(data_dir)
    per_pass = batches_per_pass(manifest, B, T)
    n = 2 * per_pass + 3
    stream = [b["input_ids"].numpy() for b in train_dataset(manifest, B, T, seed=5).take(n)]
    for k in (1, per_pass - 1, per_pass, per_pass + 2, 2 * per_pass + 1):
        resumed = [b["input_ids"].numpy() for b in train_dataset(manifest, B, T, seed=5, start_step=k).take(n - k)]
        assert len(resumed) == n - k
        assert all((a == b).all() for a, b in zip(resumed, stream[k:])), k
    # the same call twice gives the same order
    again = [b["input_ids"].numpy() for b in train_dataset(manifest, B, T, seed=5).take(n)]
    assert all((a == b).all() for a, b in zip(again, stream))


def test_each_pass_and_seed_has_its_own_order(tiny):
    _, data_dir = tiny
    manifest = load_manifest(data_dir)
    per_pass = batches_per_pass(manifest, B, T)
    both = [b["input_ids"].numpy() for b in train_dataset(manifest, B, T, seed=5).take(2 * per_pass)]
    first, second = np.concatenate(both[:per_pass]), np.concatenate(both[per_pass:])
    assert not np.array_equal(first, second)
    other_seed = _pass_tokens(manifest, seed=6)
    assert not np.array_equal(other_seed, first.reshape(-1))


def test_order_ignores_the_global_seed_and_window_shuffle_keeps_the_stream(tiny):
    _, data_dir = tiny
    manifest = load_manifest(data_dir)
    reference = _pass_tokens(manifest, seed=5)
    try:
        tf.random.set_seed(123)
        assert np.array_equal(_pass_tokens(manifest, seed=5), reference)
    finally:
        tf.random.set_seed(None)
    # a buffer smaller than the split shuffles window by window: still the same packed stream of poems
    small = _pass_tokens(manifest, seed=5, shuffle_buffer=5)
    assert len(small) == len(reference) and not np.array_equal(small, reference)
    segments = np.split(small, np.flatnonzero(small == SEP_ID))[1:-1]
    poems = Counter(map(tuple, read_poem_ids(manifest, "train")))
    assert not Counter(tuple(s[1:].tolist()) for s in segments) - poems


def test_fewer_poems_than_one_batch_is_a_clear_error(tiny):
    _, data_dir = tiny
    manifest = load_manifest(data_dir)
    with pytest.raises(DataDirError, match=r"fewer than one batch of 1000×16.*smaller --batch-size"):
        train_dataset(manifest, 1000, 16)


# --- validation batches ---------------------------------------------------------------------

@pytest.mark.parametrize("stride", [None, 1, 5, T - 1])
def test_eval_windows_predict_each_token_once_with_long_context(tiny, stride):
    """Every token of every poem is predicted exactly once, in order, from the tokens just before it.

    The context is a contiguous stretch of the same poem ending right before the token: all of
    the poem before it when that fits, else between ``T − stride`` and ``T − 1`` tokens
    (exactly ``T − 1`` with stride 1). Cutting a long poem into independent rows fails this:
    the first token of each further row would not be predicted and its context would restart.
    """
    _, data_dir = tiny
    manifest = load_manifest(data_dir)
    s = T // 2 if stride is None else stride
    for split in ("valid", "train"):
        poems = read_poem_ids(manifest, split)
        kw = {} if stride is None else {"stride": stride}
        batches = list(eval_dataset(manifest, B, T, split=split, **kw))
        predicted, rows = [], 0
        for batch in batches:
            x, y = batch["input_ids"].numpy(), batch["labels"].numpy()
            assert x.shape == y.shape == (B, T)  # constant shape, the last batch too
            for row_x, row_y in zip(x, y):
                targets = np.flatnonzero(row_y[1:] != IGNORE_INDEX) + 1
                assert (row_y[targets] == row_x[targets]).all()
                predicted += [(row_x[:j].tolist(), int(row_x[j])) for j in targets]
                rows += len(targets) > 0
        expected = [(seq, t) for seq in ([SEP_ID, *p] for p in poems) for t in range(1, len(seq))]
        assert [target for _, target in predicted] == [seq[t] for seq, t in expected]
        for (context, _), (seq, t) in zip(predicted, expected):
            assert context == seq[t - len(context):t]
            assert min(t, T - s) <= len(context) <= min(t, T - 1)
            if s == 1:
                assert len(context) == min(t, T - 1)
        assert any(len(p) + 1 > T for p in poems)
        assert rows == sum(1 + -(-max(0, len(p) + 1 - T) // s) for p in poems)
        assert len(batches) == -(-rows // B)


@pytest.mark.parametrize("stride", [0, T])
def test_eval_stride_must_leave_context(tiny, stride):
    with pytest.raises(ValueError, match=f"validation stride {stride}: must be ≥ 1 and < the context {T}"):
        eval_dataset(load_manifest(tiny[1]), B, T, stride=stride)


# --- the manifest ---------------------------------------------------------------------------

def test_load_manifest_refuses_incomplete_dirs(tiny, tmp_path):
    _, data_dir = tiny
    with pytest.raises(DataDirError, match="no such DATA_DIR; create it with `poetry-gpt prepare"):
        load_manifest(tmp_path / "nothing")
    half = tmp_path / "half"
    half.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "train-00000-of-00007.tfrecord"):
        (half / name).write_bytes((data_dir / name).read_bytes())
    with pytest.raises(DataDirError, match=r"no manifest.json, so this is not a complete DATA_DIR.*rerun `poetry-gpt prepare"):
        load_manifest(half)
    (half / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(DataDirError, match="unreadable manifest; rerun"):
        load_manifest(half)
    data = json.loads((data_dir / MANIFEST).read_text(encoding="utf-8"))
    (half / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataDirError, match=r"train-00001-of-00007.tfrecord: shard listed in manifest.json is missing"):
        load_manifest(half)
    for name in data["splits"]["train"]["shards"] + data["splits"]["valid"]["shards"]:
        (half / name).write_bytes((data_dir / name).read_bytes())
    assert load_manifest(half).poems("train") == 48
    shard = half / data["splits"]["train"]["shards"][3]
    shard.write_bytes(shard.read_bytes()[:-5])  # a truncated copy
    with pytest.raises(DataDirError, match=r"train-00003-of-00007.tfrecord: \d+ bytes, but manifest.json says \d+"):
        load_manifest(half)
    data["format_version"] = 99
    (half / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataDirError, match="format version 99"):
        load_manifest(half)


def test_manifest_load_vocab_refuses_a_swapped_vocabulary(tmp_path):
    from poetry_gpt.config import DataConfig
    from poetry_gpt.data.prepare import prepare

    raw = tmp_path / "raw.txt"
    raw.write_text("".join(f"题{i} 唐诗：【春风{i % 10}明月，秋水白云。】\n" for i in range(30)), encoding="utf-8")
    prepare([raw], tmp_path / "d", DataConfig(valid_fraction=0.1), n_ctx=64)
    manifest = load_manifest(tmp_path / "d")
    assert manifest.load_vocab().hash == manifest.vocab_hash
    vocab_txt = tmp_path / "d" / "vocab.txt"
    lines = vocab_txt.read_text(encoding="utf-8").split("\n")
    lines[3], lines[4] = lines[4], lines[3]
    vocab_txt.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataDirError, match="vocab.txt does not match manifest.json"):
        manifest.load_vocab()
