"""TFRecord shards and the DATA_DIR manifest: writing them, and reading them into ``tf.data``.

Layout of a DATA_DIR::

    manifest.json                  written last: shard names, counts, vocab hash, options, version
    tokenizer.json, vocab.txt, …   the character vocabulary (see vocab.py)
    train-00000-of-00003.tfrecord  one poem per tf.train.Example: feature "ids" (int64 list)
    valid-00000-of-00001.tfrecord

Every file is written under a temporary name and renamed when complete, and the
manifest is written after all shards, so a DATA_DIR with ``manifest.json`` is
complete; one without it is refused (``load_manifest``).

Reading packs poems for training: each poem is preceded by ``[SEP]``, the
shuffled poems are concatenated into one stream and cut into rows of exactly
``n_ctx`` tokens (nanoGPT's way), so a training batch holds no padding. A poem
longer than the context continues in the next row. Validation reads one poem per
row (padded, pads masked with label −100); a poem longer than the context is
scored with overlapping windows, each character predicted once with at least
``n_ctx − stride`` characters of context (``eval_windows``), so its loss is the
poem-level cross-entropy.
"""
from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataDirError
from ..fsutil import atomic_write_json, fsync_dir, read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")
IGNORE_INDEX = -100


# --- writing -------------------------------------------------------------------------

def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varint bytes of non-negative ints, all concatenated, and each value's byte count."""
    values = np.asarray(values)
    if len(values) and values.min() < 0:
        raise ValueError("varints of negative values")
    if not len(values) or values.max() < (1 << 14):  # every vocabulary below 16k ids: 1 or 2 bytes each
        v = values.astype(np.uint16)
        two = v >= 128
        pairs = np.empty((len(v), 2), dtype=np.uint8)
        pairs[:, 0] = (v & 0x7F) | (two.view(np.uint8).astype(np.uint16) << 7)
        pairs[:, 1] = v >> 7
        keep = np.empty((len(v), 2), dtype=bool)
        keep[:, 0] = True
        keep[:, 1] = two
        return pairs[keep], two.view(np.uint8) + np.uint8(1)
    table, keep = _varint_table(values)
    return table[keep], keep.sum(axis=1)


def _varint_table(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of each value as a row ``[n, width]`` (uint8) and which of them are used (bool)."""
    v = np.asarray(values).astype(np.uint64)
    top = int(v.max()) if len(v) else 0
    width = max(1, (top.bit_length() + 6) // 7)
    if width == 1:
        return v.astype(np.uint8).reshape(-1, 1), np.ones((len(v), 1), dtype=bool)
    table = np.empty((len(v), width), dtype=np.uint8)
    keep = np.empty((len(v), width), dtype=bool)
    for k in range(width):
        rest = v >> np.uint64(7 * k)
        keep[:, k] = rest > 0 if k else True
        table[:, k] = (rest & np.uint64(0x7F)).astype(np.uint8) | ((rest >= 128).astype(np.uint8) << 7)
    return table, keep


def _varint_len(values: np.ndarray) -> np.ndarray:
    """Bytes of each value's varint (int64)."""
    v = np.asarray(values, dtype=np.int64)
    n = np.ones(len(v), dtype=np.int64)
    for k in range(1, 10):
        more = v >= (1 << (7 * k))
        if not more.any():
            break
        n += more
    return n


_KEY = b"\x0a\x03ids"  # map-entry field 1 (key) = "ids"


def serialize_buffer(ids: np.ndarray, lengths: np.ndarray) -> tuple[bytes, np.ndarray]:
    """All poems serialised as ``tf.train.Example`` protos, concatenated, and where each ends.

    Each example is ``Features{feature{"ids": Feature{int64_list{packed ids}}}}``; the proto's
    nested length prefixes are computed for all poems at once with numpy, then the header bytes
    and the packed-varint payloads are scattered into one buffer, so the cost per poem is a few
    numpy elements rather than Python calls.

    Args:
        ids: all token ids concatenated (non-negative).
        lengths: number of ids of each poem.

    Returns:
        ``(buffer, ends)``: the examples back to back and the end offset of each (int64).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return b"", np.zeros(0, np.int64)
    ids = np.asarray(ids)
    if len(ids) != int(lengths.sum()) or (lengths < 0).any():
        raise ValueError(f"{len(ids)} ids do not split into poems of lengths summing to {int(lengths.sum())}")
    payload, nbytes = _varints(ids)
    packed_len = np.zeros(n, dtype=np.int64)  # P: bytes of each poem's packed varints
    nonempty = lengths > 0
    if nonempty.any():
        tok_starts = np.cumsum(lengths) - lengths
        packed_len[nonempty] = np.add.reduceat(nbytes, tok_starts[nonempty], dtype=np.int64)
    has = packed_len > 0
    l1 = np.where(has, 1 + _varint_len(packed_len) + packed_len, 0)  # Int64List{1: packed}
    l2 = 1 + _varint_len(l1) + l1  # Feature{3: Int64List}
    l3 = len(_KEY) + 1 + _varint_len(l2) + l2  # map entry {1: "ids", 2: Feature}
    l4 = 1 + _varint_len(l3) + l3  # Features{1: entry}
    # header columns, in order; each (bytes [n, w], used [n, w])

    def const(b: bytes, use=None):
        return (np.tile(np.frombuffer(b, np.uint8), (n, 1)),
                np.ones((n, len(b)), dtype=bool) if use is None else np.repeat(use[:, None], len(b), axis=1))

    parts = [const(b"\x0a"), _varint_table(l4), const(b"\x0a"), _varint_table(l3), const(_KEY + b"\x12"),
             _varint_table(l2), const(b"\x1a"), _varint_table(l1), const(b"\x0a", has)]
    p_table, p_keep = _varint_table(packed_len)
    parts.append((p_table, p_keep & has[:, None]))
    head = np.concatenate([t for t, _ in parts], axis=1)
    used = np.concatenate([u for _, u in parts], axis=1)
    head_len = used.sum(axis=1)
    rec_len = head_len + packed_len
    assert np.array_equal(rec_len, 1 + _varint_len(l4) + l4)
    ends = np.cumsum(rec_len)
    starts = ends - rec_len
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    is_head = np.zeros(len(out), dtype=bool)
    is_head[np.repeat(starts, head_len) + (np.arange(int(head_len.sum())) - np.repeat(np.cumsum(head_len) - head_len, head_len))] = True
    out[is_head] = head[used]
    out[~is_head] = payload
    return out.tobytes(), ends


def serialize_examples(ids: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """Serialise poems as ``tf.train.Example`` protos with one int64-list feature ``ids``.

    Byte-identical to ``tf.train.Example(...).SerializeToString()`` with packed values,
    built with numpy instead of one protobuf object per poem (see ``serialize_buffer``).

    Args:
        ids: all token ids concatenated.
        lengths: number of ids of each poem.
    """
    buf, ends = serialize_buffer(ids, lengths)
    bounds = [0] + ends.tolist()
    return [buf[s:e] for s, e in zip(bounds, bounds[1:])]


def write_shards(data_dir: Path, split: str, records: Sequence[bytes], shard_poems: int) -> list[str]:
    """Write serialised examples into ``split-XXXXX-of-YYYYY.tfrecord`` files atomically.

    Args:
        data_dir: the output folder.
        split: "train" or "valid".
        records: serialised examples in order.
        shard_poems: poems per shard.

    Returns:
        The shard file names (relative to ``data_dir``).
    """
    import tensorflow as tf

    n_shards = max(1, math.ceil(len(records) / shard_poems))
    names = []
    for i in range(n_shards):
        name = f"{split}-{i:05d}-of-{n_shards:05d}.tfrecord"
        tmp = data_dir / (name + ".tmp")
        try:
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                write = writer.write
                for rec in records[i * shard_poems:(i + 1) * shard_poems]:
                    write(rec)
        except tf.errors.OpError as exc:  # e.g. disk full: an OSError for the caller, naming the file
            raise OSError(errno.EIO, exc.message.splitlines()[0] if exc.message else type(exc).__name__,
                          str(tmp)) from None
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / name)
        names.append(name)
    return names


def write_manifest(data_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` last, atomically: from then on the DATA_DIR is complete."""
    fsync_dir(data_dir)
    atomic_write_json(data_dir / MANIFEST, manifest)
    fsync_dir(data_dir)


# --- reading -------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    """A DATA_DIR's manifest.

    Args:
        path: the DATA_DIR.
        data: the manifest's JSON content.
    """

    path: Path
    data: dict

    def shards(self, split: str) -> list[str]:
        return [str(self.path / n) for n in self.data["splits"][split]["shards"]]

    def poems(self, split: str) -> int:
        return int(self.data["splits"][split]["poems"])

    def tokens(self, split: str) -> int:
        """Character tokens of the split (without the [SEP] before each poem)."""
        return int(self.data["splits"][split]["tokens"])

    @property
    def vocab_hash(self) -> str:
        return self.data["vocab"]["hash"]

    @property
    def vocab_size(self) -> int:
        return int(self.data["vocab"]["size"])

    @property
    def hash(self) -> str:
        return self.data["hash"]

    def load_vocab(self):
        """The DATA_DIR's ``CharVocab``, checked against the manifest's vocab hash.

        Raises:
            DataDirError: vocab.txt is not the vocabulary the shards were written with.
        """
        from .vocab import CharVocab

        vocab = CharVocab.load(self.path)
        if vocab.hash != self.vocab_hash:
            raise DataDirError(f"{self.path}: vocab.txt does not match manifest.json; "
                               f"rerun `poetry-gpt prepare RAW --out {self.path} --overwrite`")
        return vocab

    @property
    def genre(self) -> str:
        genres = self.data.get("genres", {})
        return max(genres, key=genres.get) if genres else "诗"


def load_manifest(data_dir: str | os.PathLike) -> Manifest:
    """Open a DATA_DIR, checking that it is complete.

    Args:
        data_dir: a folder written by ``poetry-gpt prepare``.

    Raises:
        DataDirError: the folder is missing, has no manifest (incomplete), or lacks a shard.
    """
    path = Path(data_dir)
    if not path.is_dir():
        raise DataDirError(f"{path}: no such DATA_DIR; create it with `poetry-gpt prepare RAW --out {path}`")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DataDirError(f"{path}: no {MANIFEST}, so this is not a complete DATA_DIR (an interrupted prepare?); "
                           f"rerun `poetry-gpt prepare RAW --out {path} --overwrite`")
    try:
        data = read_json(mpath)
        version = data["format_version"]
        splits = data["splits"]
    except (ValueError, KeyError, TypeError):
        raise DataDirError(f"{mpath}: unreadable manifest; rerun `poetry-gpt prepare RAW --out {path} --overwrite`") from None
    if version != FORMAT_VERSION:
        raise DataDirError(f"{mpath}: format version {version}, this poetry_gpt reads {FORMAT_VERSION}; rerun prepare")
    for split in SPLITS:
        sizes = splits[split].get("shard_bytes") or [None] * len(splits[split]["shards"])
        for name, size in zip(splits[split]["shards"], sizes):
            shard = path / name
            if not shard.is_file():
                raise DataDirError(f"{shard}: shard listed in {MANIFEST} is missing; "
                                   f"rerun `poetry-gpt prepare RAW --out {path} --overwrite`")
            if size is not None and shard.stat().st_size != size:
                raise DataDirError(f"{shard}: {shard.stat().st_size} bytes, but {MANIFEST} says {size} (a damaged copy?); "
                                   f"rerun `poetry-gpt prepare RAW --out {path} --overwrite`")
    return Manifest(path, data)


def batches_per_pass(manifest: Manifest, batch_size: int, n_ctx: int) -> int:
    """How many packed training batches one pass over the training split yields.

    Args:
        manifest: the DATA_DIR's manifest.
        batch_size: rows per batch.
        n_ctx: tokens per row.
    """
    stream = manifest.tokens("train") + manifest.poems("train")
    return (stream // n_ctx) // batch_size


def _parse_ids(serialized):
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, {"ids": tf.io.RaggedFeature(tf.int64)})
    return tf.cast(parsed["ids"], tf.int32)


def _with_sep(ragged, sep_id: int):
    import tensorflow as tf

    n = ragged.nrows()
    sep = tf.RaggedTensor.from_tensor(tf.fill([n, 1], tf.constant(sep_id, tf.int32)), row_splits_dtype=ragged.row_splits.dtype)
    return tf.concat([sep, ragged], axis=1)


def _stateless_permutation(n, seed):
    """A permutation of ``range(n)`` from ``seed`` (int64 [2]) only: Philox keys, stable argsort.

    Unlike ``Dataset.shuffle(seed=...)``, it does not depend on TensorFlow's global seed
    (``tf.random.set_seed``) or on the device, so a resumed run sees the same order.
    """
    import tensorflow as tf

    keys = tf.random.stateless_uniform([n], seed=seed, minval=None, maxval=None, dtype=tf.int64, alg="philox")
    return tf.argsort(keys, stable=True)


def _pass_dataset(files: list[str], n_ctx: int, sep_id: int, seed, shuffle_buffer: int):
    """One shuffled pass over the training shards, packed into rows of ``n_ctx`` tokens.

    The shard order is permuted, then the poems are read in windows of ``shuffle_buffer``
    and each window is permuted (one window, a uniform shuffle, when the split fits in the
    buffer). Both permutations come from ``seed`` alone (``_stateless_permutation``).
    """
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    files_t = tf.constant(files)
    if len(files) > 1:
        files_t = tf.gather(files_t, _stateless_permutation(len(files), tf.stack([seed, tf.constant(-1, tf.int64)])))
    ds = tf.data.Dataset.from_tensor_slices(files_t)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=1, deterministic=True)

    def window(index, serialized):
        order = _stateless_permutation(tf.shape(serialized)[0], tf.stack([seed, index]))
        return _with_sep(tf.gather(_parse_ids(serialized), order), sep_id).flat_values

    ds = ds.batch(shuffle_buffer).enumerate().map(window)

    def carry(rest, chunk):
        buf = tf.concat([rest, chunk], axis=0)
        n_rows = tf.shape(buf)[0] // n_ctx
        rows = tf.reshape(buf[: n_rows * n_ctx], [n_rows, n_ctx])
        return buf[n_rows * n_ctx:], rows

    ds = ds.scan(tf.zeros([0], tf.int32), carry)
    return ds.unbatch()


def train_dataset(manifest: Manifest, batch_size: int, n_ctx: int, *, seed: int = 0,
                  start_step: int = 0, shuffle_buffer: int = 65536, pad_id: int = 0, sep_id: int = 2):
    """The endless packed training stream: pass after pass, each shuffled with its own seed.

    Batch ``k`` of the stream is the same whatever ``start_step`` is, so a resumed run
    continues the data order exactly (``start_step`` skips whole passes cheaply and the
    rest batch by batch). The order depends on ``seed`` and the pass only, not on
    TensorFlow's global seed or the device.

    Args:
        manifest: the DATA_DIR's manifest.
        batch_size: rows per batch.
        n_ctx: tokens per row.
        seed: data-order seed; pass ``p`` is shuffled with ``(seed, p)``.
        start_step: the first batch to produce (the run's global step).
        shuffle_buffer: poems in the shuffle buffer (bounded memory for any corpus size).
        pad_id: the padding id (never produced in training rows; kept for the signature).
        sep_id: the poem boundary id.

    Returns:
        A ``tf.data.Dataset`` of ``{"input_ids": int32[B, n_ctx], "labels": int32[B, n_ctx]}``.
    """
    import tensorflow as tf

    per_pass = batches_per_pass(manifest, batch_size, n_ctx)
    if per_pass < 1:
        raise DataDirError(
            f"{manifest.path}: the training split has {manifest.tokens('train') + manifest.poems('train')} tokens, "
            f"fewer than one batch of {batch_size}×{n_ctx}; use more poems, a smaller --batch-size or a smaller context")
    files = manifest.shards("train")
    buffer = max(1, min(shuffle_buffer, manifest.poems("train")))
    first_pass, skip = divmod(start_step, per_pass)

    def one_pass(p):
        pass_seed = tf.cast(seed, tf.int64) * 1_000_003 + p
        return _pass_dataset(files, n_ctx, sep_id, pass_seed, buffer).batch(batch_size, drop_remainder=True).take(per_pass)

    ds = tf.data.Dataset.range(first_pass, 2 ** 62).flat_map(one_pass)
    if skip:
        ds = ds.skip(skip)
    ds = ds.map(lambda x: {"input_ids": x, "labels": x})
    options = tf.data.Options()
    options.experimental_deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_stride(n_ctx: int) -> int:
    """The default sliding-window stride of validation: half the context.

    A poem of ``L`` tokens (``[SEP]`` included) longer than the context takes
    ``1 + ceil((L − n_ctx) / stride)`` rows and each of its characters past the first
    window is predicted with between ``n_ctx − stride`` and ``n_ctx − 1`` characters of
    context. Stride 1 gives every character the most context the model has (``n_ctx − 1``)
    but costs one row per character past the context (tang-4k at n_ctx 128: +906% rows);
    half the context costs +7% rows there (+18% at n_ctx 64) and leaves at least
    ``n_ctx / 2`` characters of context.

    Args:
        n_ctx: tokens per row (at least 2).
    """
    return max(1, n_ctx // 2)


def eval_windows(seq, n_ctx: int, stride: int, pad_id: int = 0):
    """One poem's validation rows: overlapping windows that predict each token exactly once.

    Window ``i`` starts at ``min(i · stride, L − n_ctx)`` (the last one ends at the poem's
    end, so only a poem shorter than the context is padded) and scores the tokens that no
    earlier window reached; the others (its context part) and the padding get label −100.
    Token ``p`` is thus predicted by the first window holding it, from the window's tokens
    before it: ``min(p, n_ctx − 1)`` of them with stride 1, at least ``min(p, n_ctx − stride)``
    otherwise.

    Args:
        seq: int32 [L]: ``[SEP]`` + the poem.
        n_ctx: tokens per row.
        stride: tokens between window starts, 1 ≤ stride < n_ctx.
        pad_id: the padding id.

    Returns:
        ``(input_ids, labels)``, int32 [windows, n_ctx] each.
    """
    import tensorflow as tf

    length = tf.shape(seq)[0]
    extra = tf.maximum(length - n_ctx, 0)
    starts = tf.minimum(tf.range(1 + (extra + stride - 1) // stride) * stride, extra)
    pos = starts[:, None] + tf.range(n_ctx)[None, :]
    ids = tf.gather(tf.pad(seq, [[0, tf.maximum(n_ctx - length, 0)]], constant_values=pad_id), pos)
    first_new = tf.concat([[0], starts[:-1] + n_ctx], axis=0)  # the first token each window scores
    scored = (pos >= first_new[:, None]) & (pos < length)
    return ids, tf.where(scored, ids, IGNORE_INDEX)


def eval_dataset(manifest: Manifest, batch_size: int, n_ctx: int, split: str = "valid",
                 pad_id: int = 0, sep_id: int = 2, stride: int | None = None):
    """The validation poems, one per row ([SEP] + poem, padded; long poems in sliding windows).

    A poem longer than the context takes several overlapping rows (``eval_windows``): each
    token is predicted exactly once, with up to ``n_ctx − 1`` tokens of context and at least
    ``n_ctx − stride``, so the token mean of the losses is the poem-level cross-entropy. Every
    batch has exactly ``batch_size`` rows (the last is filled with all-pad rows, whose labels
    are all ignored), so a compiled step never sees a new shape.

    Args:
        manifest: the DATA_DIR's manifest.
        batch_size: rows per batch.
        n_ctx: tokens per row.
        split: which split to read.
        pad_id: the padding id.
        sep_id: the poem boundary id.
        stride: tokens between the windows of a long poem, 1 ≤ stride < n_ctx (default
            ``eval_stride(n_ctx)``: the cost/context trade-off is described there).

    Returns:
        A finite ``tf.data.Dataset`` of ``{"input_ids", "labels"}`` with labels −100 on padding
        and on tokens an earlier window of the same poem already scored.
    """
    import tensorflow as tf

    stride = eval_stride(n_ctx) if stride is None else stride
    if not 1 <= stride < n_ctx:
        raise ValueError(f"validation stride {stride}: must be ≥ 1 and < the context {n_ctx}")

    def rows(ids):
        return eval_windows(tf.concat([[sep_id], ids], axis=0), n_ctx, stride, pad_id)

    def fill(x, y):
        missing = [[0, batch_size - tf.shape(x)[0]], [0, 0]]
        return {"input_ids": tf.pad(x, missing, constant_values=pad_id),
                "labels": tf.pad(y, missing, constant_values=IGNORE_INDEX)}

    ds = tf.data.TFRecordDataset(manifest.shards(split))
    ds = ds.map(lambda s: tf.cast(tf.io.parse_single_example(s, {"ids": tf.io.RaggedFeature(tf.int64)})["ids"], tf.int32))
    ds = ds.map(rows).unbatch().batch(batch_size).map(fill)
    return ds.prefetch(tf.data.AUTOTUNE)


def read_poem_ids(manifest: Manifest, split: str) -> list[list[int]]:
    """All poems of a split as lists of ids, in file order (for tests and small tools)."""
    import tensorflow as tf

    out = []
    for s in tf.data.TFRecordDataset(manifest.shards(split)).batch(1024):
        out.extend(_parse_ids(s).to_list())
    return out
