"""TFRecord shards of a DATA_DIR: poems serialised as ``tf.train.Example`` bytes and written atomically.

Every shard is written under a temporary name and renamed when complete (``write_shards``); the
manifest (``manifest.py``) is written after all of them.
"""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np


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
