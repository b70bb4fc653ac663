"""``poetry-gpt prepare`` and ``corpus stats``: counts, split determinism, refusals, --vocab, kill -9 safety."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_raw

from poetry_gpt.cli import main
from poetry_gpt.config import DataConfig
from poetry_gpt.data.corpus import read_corpus
from poetry_gpt.errors import DataDirError, OptionError
from poetry_gpt.data.prepare import prepare, split_indices
from poetry_gpt.data.manifest import MANIFEST, load_manifest
from poetry_gpt.data.datasets import read_poem_ids
from poetry_gpt.data.vocab import CharVocab

POEM = "静夜思 唐诗：【床前明月光，疑是地上霜。举头望明月，低头思故乡。】"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes and modification time."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def tree_digest(data_dir: Path) -> dict:
    """sha256 of every file but the manifest (whose ``created`` time differs between runs)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data_dir.iterdir()) if p.name != MANIFEST}


def manifest_without_time(data_dir: Path) -> dict:
    data = json.loads((data_dir / MANIFEST).read_text(encoding="utf-8"))
    data.pop("created")
    return data


@pytest.fixture(scope="module")
def tang4k(shared_corpus) -> Path:
    return shared_corpus / "tang-4k.raw.txt"


@pytest.fixture(scope="module")
def tang4k_data(tang4k, tmp_path_factory) -> Path:
    """tang-4k prepared through the CLI with the default options."""
    out = tmp_path_factory.mktemp("p") / "tang4k"
    result = invoke("prepare", tang4k, "--out", out)
    assert result.exit_code == 0, result.output
    assert "Kept 4000 poem(s); skipped 0." in result.output and f"Wrote {out}/" in result.output
    return out


# --- counts and the manifest ----------------------------------------------------------------

def test_tang_4k_keeps_every_poem_and_the_manifest_counts_match(tang4k, tang4k_data):
    manifest = load_manifest(tang4k_data)
    splits = manifest.data["splits"]
    assert manifest.poems("train") + manifest.poems("valid") == 4000
    assert manifest.poems("valid") == 80  # 2% of 4000
    poems = read_corpus([tang4k]).poems
    total_chars = sum(len(p.text) for p in poems)
    assert manifest.tokens("train") + manifest.tokens("valid") == total_chars
    train, valid = read_poem_ids(manifest, "train"), read_poem_ids(manifest, "valid")
    assert (len(train), len(valid)) == (splits["train"]["poems"], splits["valid"]["poems"])
    assert sum(map(len, train)) == manifest.tokens("train") and sum(map(len, valid)) == manifest.tokens("valid")
    vocab = CharVocab.load(tang4k_data)
    assert manifest.vocab_hash == vocab.hash and manifest.vocab_size == vocab.size
    assert manifest.data["vocab"]["pad_id"] == 0 and manifest.data["vocab"]["source"] == "built from the corpus"
    assert splits["train"]["shard_bytes"] == [(tang4k_data / n).stat().st_size for n in splits["train"]["shards"]]
    assert manifest.data["options"] == {"valid_fraction": 0.02, "seed": 1234, "min_count": 1, "max_chars": 4096,
                                        "keep_duplicates": False, "shard_poems": 20000}
    assert manifest.data["genres"] == {"唐诗": 4000} and manifest.genre == "唐诗"
    assert manifest.data["sources"] == [os.path.abspath(tang4k)]  # as given: symlinks are not resolved
    assert manifest.data["report"]["poems_kept"] == 4000
    from poetry_gpt import __version__
    assert manifest.data["poetry_gpt_version"] == __version__
    assert sorted(p.name for p in tang4k_data.iterdir()) == sorted(
        [MANIFEST, "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
         *splits["train"]["shards"], *splits["valid"]["shards"]])
    assert not list(tang4k_data.parent.glob(f".{tang4k_data.name}.*"))  # no temporary folders left


def test_json_output_is_the_manifest(tang4k, tmp_path):
    result = invoke("prepare", tang4k, "--out", tmp_path / "d", "--json", "--shard-poems", "1000")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "d" / MANIFEST).read_text(encoding="utf-8"))
    assert len(printed["splits"]["train"]["shards"]) == 4


# --- the split ------------------------------------------------------------------------------

def test_split_indices_deterministic():
    train, valid = split_indices(1000, 0.1, seed=7)
    assert len(valid) == 100 and len(train) == 900
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(1000))
    again = split_indices(1000, 0.1, seed=7)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], valid)
    assert not np.array_equal(split_indices(1000, 0.1, seed=8)[1], valid)
    assert len(split_indices(10, 0.001, seed=1)[1]) == 1  # at least one validation poem


def test_same_seed_same_data_different_seed_different(tang4k, tang4k_data, tmp_path):
    again = invoke("prepare", tang4k, "--out", tmp_path / "same")
    assert again.exit_code == 0, again.output
    assert tree_digest(tmp_path / "same") == tree_digest(tang4k_data)
    assert manifest_without_time(tmp_path / "same") == manifest_without_time(tang4k_data)
    other = invoke("prepare", tang4k, "--out", tmp_path / "other", "--seed", "99")
    assert other.exit_code == 0, other.output
    a, b = load_manifest(tang4k_data), load_manifest(tmp_path / "other")
    assert a.hash != b.hash and a.poems("valid") == b.poems("valid") == 80
    assert read_poem_ids(a, "valid") != read_poem_ids(b, "valid")
    assert CharVocab.load(tmp_path / "other").hash == CharVocab.load(tang4k_data).hash  # the vocabulary does not depend on it


@pytest.mark.parametrize("lines, args", [
    ([POEM], []),  # one poem: its validation poem leaves none for training
    ([POEM, POEM.replace("静", "动"), POEM.replace("静", "寂")], ["--valid-fraction", "0.9"]),
])
def test_valid_fraction_leaving_an_empty_split(tmp_path, lines, args):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    one_line_error(invoke("prepare", raw, "--out", out, *args), "--valid-fraction", "leaves no poem for training")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw.txt"]


@pytest.mark.parametrize("option, value", [("--valid-fraction", "0"), ("--valid-fraction", "1.5"),
                                           ("--min-count", "0"), ("--max-chars", "2"), ("--shard-poems", "0")])
def test_invalid_options_name_the_option(tmp_path, tang4k, option, value):
    one_line_error(invoke("prepare", tang4k, "--out", tmp_path / "out", option, value), option)
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(tmp_path, tang4k):
    result = invoke("prepare", tang4k, "--out", tmp_path / "out", "--context", "0")
    assert result.exit_code == 2 and "--context" in result.output and not (tmp_path / "out").exists()
    result = invoke("prepare", tang4k)
    assert result.exit_code == 2 and "--out" in result.output
    result = invoke("prepare", tang4k, "--out", tmp_path / "out", "--vocab", tmp_path / "missing")
    assert result.exit_code == 2 and "--vocab" in result.output


# --- refusing to overwrite, incomplete folders ------------------------------------------------

def test_refuses_a_non_empty_out_without_overwrite(tmp_path, tang4k):
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("keep me", encoding="utf-8")
    before = snapshot(tmp_path)
    # a folder that is not a DATA_DIR is refused, with --overwrite too, and named
    for extra in ((), ("--overwrite",)):
        one_line_error(invoke("prepare", tang4k, "--out", out, *extra), f"--out: {out} is not empty and is not a DATA_DIR",
                       "--overwrite replaces only a DATA_DIR")
        assert snapshot(tmp_path) == before
    # a DATA_DIR needs --overwrite, which replaces it with a complete one
    (out / "precious.txt").unlink()
    assert invoke("prepare", tang4k, "--out", out).exit_code == 0
    refused = invoke("prepare", tang4k, "--out", out)
    one_line_error(refused, f"--out: {out} already exists and is not empty", "--overwrite")
    assert "writing poems" not in refused.output  # no empty progress bar before the error
    result = invoke("prepare", tang4k, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert load_manifest(out).poems("train") == 3920
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing left beside it
    # an empty folder is fine without --overwrite; a file is refused
    (tmp_path / "empty").mkdir()
    assert invoke("prepare", tang4k, "--out", tmp_path / "empty").exit_code == 0
    (tmp_path / "file").write_text("x", encoding="utf-8")
    one_line_error(invoke("prepare", tang4k, "--out", tmp_path / "file", "--overwrite"), "is a file, not a folder")
    assert (tmp_path / "file").read_text(encoding="utf-8") == "x"


def test_out_never_holds_nor_lies_inside_an_input(tmp_path):
    """Issue 12.1: `prepare dataset/raw.txt --out dataset --overwrite` deleted raw.txt and its neighbours."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    raw = write_raw(dataset / "raw.txt", 40)
    (dataset / "notes.txt").write_text("mine", encoding="utf-8")
    before = snapshot(tmp_path)
    for extra in ((), ("--overwrite",)):
        one_line_error(invoke("prepare", raw, "--out", dataset, *extra), f"--out: {dataset} holds the input RAW {raw}")
        assert snapshot(tmp_path) == before
    # a DATA_DIR given as --vocab is an input too: not replaced, nor written into
    vocab_dir = tmp_path / "vocab"
    assert invoke("prepare", raw, "--out", vocab_dir).exit_code == 0
    before = snapshot(tmp_path)
    one_line_error(invoke("prepare", raw, "--out", vocab_dir, "--vocab", vocab_dir, "--overwrite"),
                   f"--out: {vocab_dir} holds the input --vocab {vocab_dir}")
    one_line_error(invoke("prepare", raw, "--out", vocab_dir / "sub", "--vocab", vocab_dir),
                   f"--out: {vocab_dir / 'sub'} is inside the input --vocab {vocab_dir}")
    # a DATA_DIR that holds a raw file of its own (put there by hand) is not replaced either
    (vocab_dir / "more.txt").write_bytes(raw.read_bytes())
    one_line_error(invoke("prepare", vocab_dir / "more.txt", "--out", vocab_dir, "--overwrite"), "holds the input RAW")
    assert snapshot(tmp_path) == {**before, Path("vocab/more.txt"): snapshot(tmp_path)[Path("vocab/more.txt")]}


def test_a_failed_prepare_leaves_the_old_data_dir(tmp_path, tang4k, tang4k_data):
    out = tmp_path / "data"
    assert invoke("prepare", tang4k, "--out", out).exit_code == 0
    before = snapshot(out)
    bad = tmp_path / "bad.txt"
    bad.write_text("not a poem\n", encoding="utf-8")
    one_line_error(invoke("prepare", bad, "--out", out, "--overwrite"), "bad.txt: line 1")
    assert snapshot(out) == before


def test_a_write_error_is_one_line_and_leaves_nothing(tmp_path, tang4k, monkeypatch):
    import tensorflow as tf

    class FullDisk:
        def __init__(self, path):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, record):
            raise tf.errors.ResourceExhaustedError(None, None, f"{self.path}; No space left on device")

    monkeypatch.setattr(tf.io, "TFRecordWriter", FullDisk)
    one_line_error(invoke("prepare", tang4k, "--out", tmp_path / "data"),
                   "data: writing the DATA_DIR failed", "No space left on device", "nothing was changed")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_data_dir_is_refused_with_a_message_to_rerun(tmp_path, tang4k_data):
    half = tmp_path / "half"
    half.mkdir()
    for p in tang4k_data.iterdir():
        if p.name != MANIFEST:
            (half / p.name).write_bytes(p.read_bytes())
    with pytest.raises(DataDirError, match=r"not a complete DATA_DIR \(an interrupted prepare\?\); rerun `poetry-gpt prepare RAW"):
        load_manifest(half)


def test_stale_partial_folders_of_dead_processes_are_removed(tmp_path, tang4k):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".data.partial-{dead.pid}"
    stale.mkdir()
    (stale / "vocab.txt").write_text("x", encoding="utf-8")
    assert invoke("prepare", tang4k, "--out", tmp_path / "data").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_old_data_dir_swapped_aside_by_a_killed_process_is_restored(tmp_path, tang4k_data, tang4k):
    """The fallback swap (no atomic exchange) renames the old DATA_DIR aside first: a later run puts it back."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".data.old-{dead.pid}"
    aside.mkdir()
    for p in tang4k_data.iterdir():
        (aside / p.name).write_bytes(p.read_bytes())
    # the next prepare into the same --out first puts it back, and so refuses to overwrite it
    one_line_error(invoke("prepare", tang4k, "--out", tmp_path / "data"), "already exists", "--overwrite")
    assert load_manifest(tmp_path / "data").poems("train") == 3920
    assert not aside.exists()


# --- --vocab, --min-count --------------------------------------------------------------------

def test_reusing_a_vocabulary_reports_uncovered_characters(tmp_path, tang4k_data):
    raw = tmp_path / "new.txt"
    raw.write_text(POEM + "\n" + "新 宋词：【龘龘靐，床前𠀋。】\n" + POEM.replace("静", "动") + "\n", encoding="utf-8")
    vocab = CharVocab.load(tang4k_data)
    missing = [c for c in dict.fromkeys(raw.read_text(encoding="utf-8")) if c != "\n" and c not in vocab]
    assert {"龘", "靐", "𠀋"} <= set(missing)
    occurrences = sum(c in missing for c in raw.read_text(encoding="utf-8"))
    out = tmp_path / "ft"
    result = invoke("prepare", raw, "--out", out, "--vocab", tang4k_data, "--valid-fraction", "0.34")
    assert result.exit_code == 0, result.output
    assert f"Not in the given vocabulary: {len(missing)} character(s), {occurrences} occurrence(s) mapped to [UNK]" in result.output
    assert "龘" in result.output.split("most common:")[1]
    report = load_manifest(out).data["report"]
    assert report["not_in_vocab"]["characters"] == len(missing)
    assert report["unk_occurrences"] == report["not_in_vocab"]["occurrences"] == occurrences
    assert (out / "vocab.txt").read_bytes() == (tang4k_data / "vocab.txt").read_bytes()
    manifest = load_manifest(out)
    assert manifest.vocab_hash == vocab.hash and manifest.data["vocab"]["source"] == str(tang4k_data)
    ids = read_poem_ids(manifest, "train") + read_poem_ids(manifest, "valid")
    assert sum(row.count(vocab.unk_id) for row in ids) == occurrences
    # a folder without a vocabulary is refused before anything is written
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(invoke("prepare", raw, "--out", tmp_path / "x", "--vocab", empty), "no vocab.txt here")
    assert not (tmp_path / "x").exists()


def test_min_count_option(tmp_path, tang4k, tang4k_data):
    result = invoke("prepare", tang4k, "--out", tmp_path / "m", "--min-count", "3", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["vocab"]["size"] < load_manifest(tang4k_data).vocab_size
    assert manifest["report"]["unk_occurrences"] > 0 and manifest["options"]["min_count"] == 3


# --- corpus stats -----------------------------------------------------------------------------

def test_corpus_stats_prints_the_report_and_writes_nothing(tmp_path, tang4k, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("corpus", "stats", tang4k)
    assert result.exit_code == 0, result.output
    for fragment in ("Read 4000 poem line(s) from 1 file(s)", "Kept 4000 poem(s); skipped 0.",
                     "Regular 绝句/律诗 form: 2555 (63.9%)", "Genres: 唐诗 4000.", "Coverage of occurrences",
                     "Line length p50/p90/p99/max"):
        assert fragment in result.output
    as_json = invoke("corpus", "stats", tang4k, "--json")
    assert json.loads(as_json.stdout)["regular_form"]["poems"] == 2555
    assert list(tmp_path.iterdir()) == []


def test_library_prepare_result(tmp_path, tang4k):
    seen = []
    result = prepare([tang4k], tmp_path / "lib", DataConfig(valid_fraction=0.1, seed=5), progress=seen.append)
    assert result.data_dir == tmp_path / "lib" and result.seconds > 0
    assert seen == [3600, 400] and result.report["poems_kept"] == 4000
    with pytest.raises(OptionError, match="--out: .* already exists"):
        prepare([tang4k], tmp_path / "lib", DataConfig())


# --- kill -9 ----------------------------------------------------------------------------------

def _command() -> list[str]:
    script = Path(sys.executable).with_name("poetry-gpt")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from poetry_gpt.cli import main; main()"]


def _start(raw: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([*_command(), "prepare", str(raw), "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _kill_all(jobs: list[tuple[subprocess.Popen, Path, object]]) -> list[str]:
    """SIGKILL each process at its moment: seconds after the start, or when a predicate on its
    --out folder becomes true (polled every 2 ms). The processes run side by side."""
    start, deadline = time.monotonic(), time.monotonic() + 120
    outcome: list[str | None] = [None] * len(jobs)
    while None in outcome and time.monotonic() < deadline:
        for i, (proc, out, when) in enumerate(jobs):
            if outcome[i] is not None:
                continue
            if proc.poll() is not None:
                outcome[i] = "finished before the kill"
            elif (when(out) if callable(when) else time.monotonic() - start >= when):
                proc.send_signal(signal.SIGKILL)
                outcome[i] = "killed"
        time.sleep(0.002)
    for proc, _, _ in jobs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return [o or "timeout" for o in outcome]


def _partial_has(pattern: str):
    def check(out: Path) -> bool:
        return any(list(p.glob(pattern)) if pattern else True for p in out.parent.glob(f".{out.name}.partial-*"))
    check.__name__ = f"partial folder has {pattern or 'appeared'}"
    return check


def _describe(when) -> str:
    return f"{when:.2f} s" if isinstance(when, float) else when.__name__


def _assert_absent_or_complete(out: Path, reference: Path, note: str, allowed=()):
    if not out.exists():
        return "absent"
    manifest = load_manifest(out)  # complete: no DataDirError
    digests = tree_digest(out)
    if digests == tree_digest(reference):
        assert manifest_without_time(out) == manifest_without_time(reference), note
        return "complete"
    for other in allowed:
        if digests == tree_digest(other):
            return "old"
    raise AssertionError(f"{out} is neither absent nor a complete DATA_DIR ({note}): {sorted(digests)}, {manifest.data}")


@pytest.mark.slow
def test_kill_9_during_prepare_never_leaves_a_half_data_dir(shared_corpus, tmp_path, tang4k_data):
    raw = shared_corpus / "tang-full.raw.txt"
    reference = prepare([raw], tmp_path / "reference", DataConfig()).data_dir
    rng = random.Random()
    work = tmp_path / "work"
    work.mkdir()
    # fresh --out, killed at random moments (start-up, reading, writing, after) and at write-phase events
    moments = [rng.uniform(0.3, 2.0), rng.uniform(2.0, 6.0), _partial_has("*.tfrecord*"), _partial_has(MANIFEST)]
    jobs = [(_start(raw, work / f"fresh{i}"), work / f"fresh{i}", when) for i, when in enumerate(moments)]
    outcomes = _kill_all(jobs)
    states = []
    for (_, out, when), how in zip(jobs, outcomes):
        note = f"kill at {_describe(when)}: {how}"
        states.append((note, _assert_absent_or_complete(out, reference, note)))
    assert "killed" in outcomes, states

    # --overwrite of an existing DATA_DIR, killed around the swap: the old or the new one is there, never neither;
    # meanwhile a rerun into a killed --out works and removes the killed run's partial folder
    over = work / "over"
    subprocess.run(["cp", "-r", str(tang4k_data), str(over)], check=True)
    killed_fresh = next((out for (_, out, _), state in zip(jobs, states) if state[1] == "absent"), work / "fresh0")
    rerun = _start(raw, killed_fresh, "--overwrite")
    when = rng.choice([_partial_has(MANIFEST), _partial_has("valid-*.tfrecord")])
    how = _kill_all([(_start(raw, over, "--overwrite"), over, when)])[0]
    state = _assert_absent_or_complete(over, reference, f"overwrite, kill at {_describe(when)}", allowed=[tang4k_data])
    assert state in ("complete", "old"), (how, state)
    states.append((f"overwrite, kill at {_describe(when)}: {how}", state))
    assert rerun.wait(timeout=120) == 0
    assert _assert_absent_or_complete(killed_fresh, reference, "rerun") == "complete"
    assert not list(work.glob(f".{killed_fresh.name}.*")), sorted(p.name for p in work.iterdir())
    print(states)


def test_corpus_stats_has_rhyme_and_distinct_figures(tmp_path, tang4k):
    from poetry_gpt.verse import forms

    result = invoke("corpus", "stats", tang4k, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    bodies = [p.body for p in read_corpus([tang4k]).poems]
    checks = [forms.check(b) for b in bodies]
    regular = [c for c in checks if c.regular]
    assert report["regular_form"]["poems"] == len(regular) == 2555
    assert report["regular_form"]["rhyme_rate"] == pytest.approx(sum(c.rhymes for c in regular) / len(regular))
    assert 0 < report["distinct"]["distinct_2"] <= 1
