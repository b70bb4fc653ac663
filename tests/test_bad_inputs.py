"""Every bad input of issue 7, through the real CLI: a one-line error that names the file/line or option,
an exit code ≠ 0, no traceback, and nothing the user had is changed."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from poetry_gpt.cli import main
from poetry_gpt.config import DataConfig, config_from_preset
from poetry_gpt.data.prepare import prepare
from poetry_gpt.train.loop import train

CHARS = "春夏秋冬风花雪月山水云烟江湖日夜天地人心明白青红寒暖高低来去"


def make_raw(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        clause = lambda: "".join(rng.choice(CHARS) for _ in range(5))  # noqa: E731
        lines.append(f"题{i} 唐诗：【{clause()}，{clause()}。{clause()}，{clause()}。】")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def digest(*paths: Path) -> dict:
    """Content hash of every file under the given paths (files or folders)."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_cli(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int | None = None) -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A prepared DATA_DIR and a trained tiny RUN_DIR, plus a DATA_DIR with another vocabulary."""
    root = tmp_path_factory.mktemp("bad_inputs")
    raw = make_raw(root / "raw.txt", 150)
    data = root / "data"
    prepare([raw], data, DataConfig(valid_fraction=0.1), n_ctx=64)
    other_raw = root / "other.txt"
    other_raw.write_text("".join(f"别{i} 宋词：【{'甲乙丙丁戊己庚辛'[i % 8] * 5}，天地玄黄宇。】\n" for i in range(150)),
                         encoding="utf-8")
    other = root / "other_data"
    prepare([other_raw], other, DataConfig(valid_fraction=0.1), n_ctx=64)
    run = root / "run"
    cfg = config_from_preset("tiny").replace(train=dict(epochs=1, steps_per_epoch=3, samples_per_epoch=0,
                                                        precision="fp32"))
    train(data, run, cfg, echo=lambda s: None, verbose=0)
    return {"root": root, "raw": raw, "data": data, "other": other, "run": run}


# --- raw.txt problems (prepare) ------------------------------------------------------------------

def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


RAW_CASES = {
    "empty": (b"", ["empty.txt", "empty"]),
    "blank_lines_only": (b"\n\n   \n\r\n", ["blank_lines_only.txt", "blank"]),
    "gbk": ("送兄 唐诗：【别路云初起，离亭叶正飞。】\n".encode("gbk"), ["gbk.txt", "not UTF-8", "byte", "line 1"]),
    "latin1": ("Ballade d'été: ça va\n".encode("latin-1"), ["latin1.txt", "not UTF-8", "byte"]),
    "binary": (bytes(range(256)) * 4, ["binary.txt", "binary"]),
    "no_brackets": ("送兄 唐诗 别路云初起\n另一行没有括号\n".encode(), ["no_brackets.txt", "line 1"]),
    "nested_bracket": ("送兄 唐诗：【别路【云初起，离亭叶正飞。】\n".encode(), ["nested_bracket.txt", "line 1"]),
    "one_huge_line": (("长 唐诗：【" + "云" * 10000 + "】\n").encode(), ["one_huge_line.txt", "line 1"]),
}


@pytest.mark.parametrize("name", sorted(RAW_CASES))
def test_prepare_refuses_bad_raw_files(tmp_path, name):
    content, fragments = RAW_CASES[name]
    raw = _write(tmp_path / f"{name}.txt", content)
    before = digest(raw)
    result = run_cli("prepare", raw, "--out", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert digest(raw) == before
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_a_folder_and_a_missing_file(tmp_path):
    assert_one_line_error(run_cli("prepare", tmp_path, "--out", tmp_path / "o"), str(tmp_path), "folder")
    assert_one_line_error(run_cli("prepare", tmp_path / "nope.txt", "--out", tmp_path / "o"), "nope.txt", "no such file")


def test_a_stray_nul_byte_skips_its_line_not_the_file(tmp_path):
    """issue 12 #16: one NUL byte on line 202 of a 600-line corpus is a skipped, counted line."""
    raw = make_raw(tmp_path / "raw.txt", 600)
    lines = raw.read_bytes().split(b"\n")
    lines[201] = lines[201].replace("【".encode(), "【\x00".encode(), 1)
    raw.write_bytes(b"\n".join(lines))
    result = run_cli("prepare", raw, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Kept 599 poem(s); skipped 1." in result.output
    [skip] = [line for line in result.output.splitlines() if "control_chars" in line]
    assert "202" in skip, skip


def test_a_bom_file_works(tmp_path):
    raw = tmp_path / "bom.txt"
    make_raw(raw, 40)
    raw.write_bytes(b"\xef\xbb\xbf" + raw.read_bytes().replace(b"\n", b"\r\n"))
    result = run_cli("prepare", raw, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Kept 40 poem(s)" in result.output


def test_valid_fraction_leaving_an_empty_split(tmp_path):
    raw = make_raw(tmp_path / "raw.txt", 3)
    assert_one_line_error(run_cli("prepare", raw, "--out", tmp_path / "o", "--valid-fraction", "0.9"), "--valid-fraction")


def test_out_is_not_overwritten_without_overwrite(tmp_path, world):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious", encoding="utf-8")
    assert_one_line_error(run_cli("prepare", world["raw"], "--out", out), "--out", "--overwrite")
    assert (out / "keep.txt").read_text(encoding="utf-8") == "precious"


# --- DATA_DIR / RUN_DIR problems (train) ---------------------------------------------------------

def test_fewer_poems_than_one_batch(tmp_path):
    raw = make_raw(tmp_path / "raw.txt", 6)
    prepare([raw], tmp_path / "d", DataConfig(valid_fraction=0.2), n_ctx=64)
    result = run_cli("train", "--data", tmp_path / "d", "--run", tmp_path / "r", "--config", "tiny")
    assert_one_line_error(result, "batch")


def test_data_dir_without_manifest(tmp_path, world):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "vocab.txt").write_text("x", encoding="utf-8")
    result = run_cli("train", "--data", broken, "--run", tmp_path / "r", "--config", "tiny")
    assert_one_line_error(result, str(broken), "manifest", "prepare")


def test_data_dir_with_another_vocabulary_than_the_run(world):
    before = digest(world["run"])
    result = run_cli("train", "--data", world["other"], "--run", world["run"], "--epochs", "2")
    assert_one_line_error(result, "vocabulary")
    assert digest(world["run"]) == before


def test_run_dir_whose_config_differs(world):
    before = digest(world["run"])
    result = run_cli("train", "--data", world["data"], "--run", world["run"], "--config", "small")
    assert_one_line_error(result, "--config")
    assert digest(world["run"]) == before


def test_unknown_preset(tmp_path, world):
    result = run_cli("train", "--data", world["data"], "--run", tmp_path / "r", "--config", "huge")
    line = assert_one_line_error(result, "--config", "huge")
    for name in ("tiny", "small", "base", "medium"):
        assert name in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option,value", [("--batch-size", "-1"), ("--epochs", "0"), ("--learning-rate", "-0.1")])
def test_negative_counts_for_train(tmp_path, world, option, value):
    result = run_cli("train", "--data", world["data"], "--run", tmp_path / "r", "--config", "tiny", option, value)
    assert_one_line_error(result, option)


def test_corrupt_checkpoint(tmp_path, world):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    for data_file in (run / "checkpoints").glob("ckpt-*.data-*"):
        data_file.write_bytes(b"garbage" * 10)
    before = digest(run)
    result = run_cli("train", "--run", run, "--epochs", "2")
    assert_one_line_error(result, "checkpoint")
    assert digest(run) == before


def test_init_from_a_folder_that_is_not_gpt2(tmp_path, world):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    result = run_cli("train", "--data", world["data"], "--run", tmp_path / "r", "--config", "tiny",
                     "--init-from", fake)
    assert_one_line_error(result, "--init-from", str(fake))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("train", "--data", world["data"], "--run", tmp_path / "r2", "--config", "tiny",
                                  "--init-from", empty), "--init-from")


# --- generation problems ------------------------------------------------------------------------

def test_opening_with_characters_outside_the_vocabulary(world):
    result = run_cli("generate", "--run", world["run"], "春风X𠀀")
    line = assert_one_line_error(result)
    assert "X" in line and "vocabulary" in line


def test_opening_longer_than_the_context(world):
    result = run_cli("generate", "--run", world["run"], "春" * 200)
    assert_one_line_error(result, "context")


@pytest.mark.parametrize("option,value", [
    ("--top-k", "0"), ("--top-p", "1.5"), ("--temperature", "0"), ("-n", "-1"), ("--batch-size", "-2"),
    ("--max-new-tokens", "-5"), ("--repetition-penalty", "0"),
])
def test_bad_sampling_options(world, option, value):
    result = run_cli("generate", "--run", world["run"], "春风", option, value)
    line = assert_one_line_error(result)
    assert option in line or option.lstrip("-") in line or "num-samples" in line, line


def test_unknown_form_and_too_long_acrostic(world):
    assert_one_line_error(run_cli("generate", "--run", world["run"], "--form", "宋词"), "--form")
    assert_one_line_error(run_cli("generate", "--run", world["run"], "--form", "五绝", "--acrostic", "春夏秋冬风"),
                          "--acrostic")


@pytest.mark.parametrize("args,fragments", [
    (("--leniency", "strict"), ("--leniency: acts only with --strict",)),
    (("--leniency", "standard"), ("--leniency: acts only with --strict",)),  # typed, even at its default
    (("--rhyme-book", "modern"), ("--rhyme-book: acts only with --rhyme or --strict",)),
])
def test_options_that_would_change_nothing_are_refused(tmp_path, args, fragments):
    """Checked before the model loads: a folder that is no run is never looked at."""
    assert_one_line_error(run_cli("generate", "--run", tmp_path, "--form", "五绝", *args), *fragments)


def test_generate_from_a_folder_that_is_no_run(tmp_path):
    assert_one_line_error(run_cli("generate", "--run", tmp_path, "春风"), str(tmp_path))
