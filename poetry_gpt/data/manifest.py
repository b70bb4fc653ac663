"""The DATA_DIR manifest: what ``prepare`` wrote (shards, counts, vocabulary hash, options), written last.

Layout of a DATA_DIR::

    manifest.json                  written last: shard names, counts, vocab hash, options, version;
                                   "vocab_base": {"size", "hash"} of the base when --extend-vocab
    tokenizer.json, vocab.txt, …   the character vocabulary (see vocab.py)
    train-00000-of-00003.tfrecord  one poem per tf.train.Example: feature "ids" (int64 list)
    valid-00000-of-00001.tfrecord

A DATA_DIR with ``manifest.json`` is complete; one without it is refused (``load_manifest``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataDirError
from ..fsutil import atomic_write_json, fsync_dir, read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")


def write_manifest(data_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` last, atomically: from then on the DATA_DIR is complete."""
    fsync_dir(data_dir)
    atomic_write_json(data_dir / MANIFEST, manifest)
    fsync_dir(data_dir)


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

    @property
    def base_vocab_size(self) -> int | None:
        """N_base of a DATA_DIR prepared with ``--extend-vocab``: ids below it are the base's, the others new
        characters; None when the vocabulary was not extended."""
        base = self.data.get("vocab_base")
        return int(base["size"]) if base else None

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


def vocab_base(manifest_or_data_dir: "Manifest | str | os.PathLike") -> int | None:
    """``Manifest.base_vocab_size`` of a manifest or DATA_DIR: the base's vocabulary size, None when not extended.

    Args:
        manifest_or_data_dir: a ``Manifest`` or a DATA_DIR (opened with ``load_manifest``).
    """
    manifest = manifest_or_data_dir if isinstance(manifest_or_data_dir, Manifest) else load_manifest(manifest_or_data_dir)
    return manifest.base_vocab_size


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


