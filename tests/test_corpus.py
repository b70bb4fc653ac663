"""Reading raw.txt: parsing, skip reasons with line numbers, encodings, one-line errors, diagnostics."""
from __future__ import annotations

import random
import re

import pytest
from click.testing import CliRunner

from poetry_gpt.verse import forms
from poetry_gpt.cli import main
from poetry_gpt.data.corpus import (SKIP_REASONS, Poem, format_line, genre_counts, parse_line, prompt_prefix, read_corpus, read_text_file)
from poetry_gpt.data.diagnostics import corpus_report, format_report, regular_form_counts
from poetry_gpt.errors import InputError
from poetry_gpt.data.vocab import CharVocab

GOOD = "静夜思 唐诗：【床前明月光，疑是地上霜。举头望明月，低头思故乡。】"
GOOD2 = "春晓 唐诗：【春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。】"
GOOD3 = "如梦令 宋词：【昨夜雨疏风骤，浓睡不消残酒。】"


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def one_line_error(result, *fragments: str) -> str:
    """Assert a CLI run failed with exit code 1 and a one-line ``Error: ...`` holding every fragment."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# --- parsing --------------------------------------------------------------------------------

def test_parse_line_fields():
    assert parse_line(GOOD) == ("静夜思", "唐诗", "床前明月光，疑是地上霜。举头望明月，低头思故乡。")
    assert parse_line("唐诗：【白日依山尽】") == ("", "唐诗", "白日依山尽")  # no title
    assert parse_line("春 夜 喜 雨 唐诗：【好雨知时节】") == ("春 夜 喜 雨", "唐诗", "好雨知时节")  # title with spaces
    assert parse_line("Title one 宋词:【x】") == ("Title one", "宋词", "x")  # ASCII colon
    assert parse_line("题\u3000元曲：【y】") == ("题", "元曲", "y")
    assert parse_line("题\t宋诗：【z】") == ("题", "宋诗", "z")


def test_canonical_text():
    poem = Poem("题 目", "宋词", "春。")
    assert poem.text == "题 目 宋词：【春。】" == format_line("题 目", "宋词", "春。")
    assert Poem("", "唐诗", "x").text == "唐诗：【x】"
    assert prompt_prefix("春晓", "唐诗", "春眠") == "春晓 唐诗：【春眠"
    assert prompt_prefix("", "唐诗") == "唐诗：【"
    assert parse_line(Poem("Title one", "宋词", "x").text) == ("Title one", "宋词", "x")


def test_each_skip_reason_with_line_numbers(tmp_path):
    lines = [
        GOOD,                                       # 1 kept
        "",                                         # 2 blank
        "这一行没有括号",                             # 3 no_brackets
        "【没有标题】",                               # 4 no_header
        "套 唐诗：【床前【明月】",                      # 5 nested_brackets
        "后 唐诗：【床前明月光】 注释",                  # 6 text_after_close
        "空 唐诗：【  】",                             # 7 empty_body
        "控 唐诗：【床前\x01明月】",                    # 8 control_chars
        "长 唐诗：【" + "月" * 60 + "】",               # 9 too_long (max_chars=50)
        "重 唐诗：【床前明月光，疑是地上霜。举头望明月，低头思故乡。】",  # 10 duplicate body of line 1
        "   ",                                      # 11 blank
        GOOD2,                                      # 12 kept
        "无括号二",                                   # 13 no_brackets
        GOOD3,                                      # 14 kept
    ]
    path = write(tmp_path / "raw.txt", "\n".join(lines) + "\n")
    result = read_corpus([path], max_chars=50)
    src = str(path)
    assert result.skipped == {
        "no_brackets": [(src, 3), (src, 13)],
        "no_header": [(src, 4)],
        "nested_brackets": [(src, 5)],
        "text_after_close": [(src, 6)],
        "empty_body": [(src, 7)],
        "control_chars": [(src, 8)],
        "too_long": [(src, 9)],
        "duplicate": [(src, 10)],
    }
    assert set(result.skipped) == set(SKIP_REASONS)  # every reason is exercised
    assert [(p.line_no, p.genre) for p in result.poems] == [(1, "唐诗"), (12, "唐诗"), (14, "宋词")]
    assert all(p.source == src for p in result.poems)
    assert (result.lines, result.blank, result.skipped_count) == (12, 2, 9)
    # keep_duplicates keeps line 10
    assert [p.line_no for p in read_corpus([path], max_chars=50, keep_duplicates=True).poems] == [1, 10, 12, 14]

    vocab = CharVocab.from_counts(CharVocab.count_chars(p.text for p in result.poems))
    ids, lengths = vocab.encode_lines([p.text for p in result.poems])
    report = corpus_report(result, vocab, ids, lengths)
    assert report["skipped"]["no_brackets"] == {"count": 2, "why": SKIP_REASONS["no_brackets"],
                                                "first": [f"{src}:3", f"{src}:13"]}
    text = format_report(report)
    for reason in SKIP_REASONS:
        assert f"({reason}), e.g. {src}:" in text
    assert "Kept 3 poem(s); skipped 9." in text

    # the CLI shows the same with the reasons and line numbers, and exits 0
    out = CliRunner().invoke(main, ["corpus", "stats", str(path), "--max-chars", "50"])
    assert out.exit_code == 0, out.output
    assert f"(nested_brackets), e.g. {src}:5" in out.output
    assert f"(no_brackets), e.g. {src}:3, {src}:13" in out.output


def test_bom_file(tmp_path):
    path = write(tmp_path / "bom.txt", "\ufeff" + GOOD + "\n" + GOOD2 + "\n")
    result = read_corpus([path])
    assert [p.title for p in result.poems] == ["静夜思", "春晓"]
    assert result.skipped == {}


def test_crlf_file(tmp_path):
    path = write(tmp_path / "crlf.txt", GOOD + "\r\n\r\n" + GOOD2 + "\r\n" + GOOD3)  # no final newline
    result = read_corpus([path])
    assert [(p.line_no, p.body[-1]) for p in result.poems] == [(1, "。"), (3, "。"), (4, "。")]
    assert [p.text for p in result.poems] == [GOOD, GOOD2, GOOD3]
    assert (result.lines, result.blank) == (3, 1)


def test_genre_word_from_the_line(tmp_path):
    lines = [GOOD, GOOD3, "登高 宋诗：【风急天高猿啸哀】", "天净沙 元曲：【枯藤老树昏鸦】", "无题 词：【x】"]
    result = read_corpus([write(tmp_path / "g.txt", "\n".join(lines))])
    assert [p.genre for p in result.poems] == ["唐诗", "宋词", "宋诗", "元曲", "词"]
    assert genre_counts(result.poems) == {"唐诗": 1, "宋词": 1, "宋诗": 1, "元曲": 1, "词": 1}
    assert result.poems[1].text == GOOD3


def test_title_with_spaces_and_surrounding_white_space(tmp_path):
    lines = ["  A  Spring   Night 唐诗：【春】  ", "\t题 目\u3000宋词：【秋】\t"]
    result = read_corpus([write(tmp_path / "t.txt", "\n".join(lines))])
    assert [(p.title, p.genre, p.body) for p in result.poems] == [("A  Spring   Night", "唐诗", "春"),
                                                                  ("题 目", "宋词", "秋")]


def test_several_files_in_order_and_duplicates_across_files(tmp_path):
    a = write(tmp_path / "a.txt", GOOD + "\n" + GOOD2 + "\n")
    b = write(tmp_path / "b.txt", GOOD3 + "\n" + GOOD + "\n")
    result = read_corpus([a, b])
    assert [(p.source, p.line_no) for p in result.poems] == [(str(a), 1), (str(a), 2), (str(b), 1)]
    assert result.skipped == {"duplicate": [(str(b), 2)]}
    assert result.files == [str(a), str(b)]
    # a file that only repeats earlier poems is read (its lines are counted as duplicates), not an error
    again = read_corpus([a, a])
    assert len(again.poems) == 2 and again.skipped == {"duplicate": [(str(a), 1), (str(a), 2)]}


def test_ten_thousand_char_line_is_skipped_and_counted(tmp_path):
    long_line = "长 唐诗：【" + "月" * 10_000 + "】"
    path = write(tmp_path / "long.txt", GOOD + "\n" + long_line + "\n" + GOOD2 + "\n")
    result = read_corpus([path])  # default max_chars 4096
    assert [p.line_no for p in result.poems] == [1, 3]
    assert result.skipped == {"too_long": [(str(path), 2)]}
    out = CliRunner().invoke(main, ["corpus", "stats", str(path)])
    assert out.exit_code == 0 and f"(too_long), e.g. {path}:2" in out.output
    # a larger --max-chars keeps it
    assert len(read_corpus([path], max_chars=20_000).poems) == 3
    # alone in a file it is an error naming the reason
    alone = write(tmp_path / "alone.txt", long_line + "\n")
    with pytest.raises(InputError, match=r"alone.txt: line 1: .*longer than --max-chars ×1"):
        read_corpus([alone])


# --- file-level errors: one line naming the file (and byte / line) --------------------------

def _bad_files(tmp_path):
    gbk_text = "# header\n" + GOOD + "\n"
    return {
        "empty": (write(tmp_path / "empty.txt", ""), ["empty.txt: the file is empty"]),
        "blank": (write(tmp_path / "blank.txt", "\n  \n\r\n\t\n"), ["blank.txt: only blank lines (4)"]),
        "folder": (tmp_path, [f"{tmp_path}: is a folder"]),
        "missing": (tmp_path / "missing.txt", ["missing.txt: no such file"]),
        "gbk": (write(tmp_path / "gbk.txt", gbk_text, "gbk"),
                ["gbk.txt: not UTF-8 at byte 9 (line 2)", "re-encode the file as UTF-8", "GB18030", "iconv"]),
        "latin1": (write(tmp_path / "latin1.txt", "first line\ncafé au lait\n", "latin-1"),
                   ["latin1.txt: not UTF-8 at byte 14 (line 2)", "re-encode the file as UTF-8"]),
        "binary": (_binary(tmp_path), ["binary.bin: looks like a binary file (NUL byte at byte 8, line 3)"]),
        "utf16": (write(tmp_path / "utf16.txt", GOOD + "\n", "utf-16"), ["utf16.txt: encoded as UTF-16", "iconv -f UTF-16"]),
        "all bad": (write(tmp_path / "bad.txt", "\n\nnot a poem\n【no header】\nt 唐诗：【a】 tail\n"),
                    ["bad.txt: line 3: no line is a usable poem",
                     "no 【…】 around the body ×1", "no `title 体裁：` before 【 ×1", "text after the closing 】 ×1"]),
    }


def _binary(tmp_path):
    path = tmp_path / "binary.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return path


@pytest.mark.parametrize("case", ["empty", "blank", "folder", "missing", "gbk", "latin1", "binary", "utf16", "all bad"])
def test_bad_file_is_a_one_line_error(tmp_path, case):
    path, fragments = _bad_files(tmp_path)[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(InputError) as info:
        read_corpus([path])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    # and through the CLI: exit code 1, one line, nothing written
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(main, ["prepare", str(path), "--out", str(out_dir)])
    one_line_error(result, *fragments)
    assert not out_dir.exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    stats = CliRunner().invoke(main, ["corpus", "stats", str(path)])
    one_line_error(stats, *fragments)


def test_a_stray_nul_past_the_start_skips_only_its_line(tmp_path):
    """A NUL byte on line 202 of 600 is a control character of that line (skipped and counted), not a
    binary file; the same byte within the first 8000 bytes still marks the file binary, as git decides."""
    from poetry_gpt.data.corpus import BINARY_SNIFF_BYTES

    lines = [f"题{i} 唐诗：【{GOOD[8:-1]}{i}】" for i in range(600)]
    lines[201] = lines[201][:9] + "\x00" + lines[201][9:]
    path = write(tmp_path / "raw.txt", "\n".join(lines) + "\n")
    assert path.read_bytes().find(b"\x00") >= BINARY_SNIFF_BYTES
    result = read_corpus([path])
    assert len(result.poems) == 599 and result.lines == 600
    assert result.skipped == {"control_chars": [(str(path), 202)]}
    assert 202 not in [p.line_no for p in result.poems]

    early = write(tmp_path / "early.txt", "\n".join(lines[:20] + lines[201:202] + lines[20:]) + "\n")
    nul = early.read_bytes().find(b"\x00")
    assert 0 <= nul < BINARY_SNIFF_BYTES
    with pytest.raises(InputError, match=rf"early.txt: looks like a binary file \(NUL byte at byte {nul}, line 21\)"):
        read_corpus([early])


def test_latin1_file_is_not_called_gb18030(tmp_path):
    # "è" followed by a letter is a valid GB18030 pair, but no 【…】 appears in that reading
    path = write(tmp_path / "l1.txt", "Les poèmes\n", "latin-1")
    with pytest.raises(InputError) as info:
        read_text_file(path)
    assert "GB18030" not in str(info.value) and "at byte 6 (line 1)" in str(info.value)


def test_byte_offset_counts_the_bom(tmp_path):
    path = tmp_path / "bom-bad.txt"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n" + b"abc\xff\n")
    offset = 3 + len(GOOD.encode()) + 1 + 3
    with pytest.raises(InputError, match=rf"not UTF-8 at byte {offset} \(line 2\)"):
        read_text_file(path)


def test_no_files():
    with pytest.raises(InputError, match="no raw.txt given"):
        read_corpus([])


# --- the fast path agrees with parse_line line by line ---------------------------------------

def _reference_read(text: str, max_chars: int, keep_duplicates: bool):
    """The straightforward reading: split lines, strip, parse_line each (the spec of read_corpus)."""
    poems, skipped, seen, lines, blank = [], {}, set(), 0, 0
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    for line_no, raw in enumerate(rows, start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            blank += 1
            continue
        lines += 1
        line = line.strip()
        parsed = "too_long" if len(line) > max_chars else parse_line(line)
        if isinstance(parsed, tuple) and not keep_duplicates:
            if parsed[2] in seen:
                parsed = "duplicate"
            else:
                seen.add(parsed[2])
        if isinstance(parsed, str):
            skipped.setdefault(parsed, []).append(line_no)
        else:
            poems.append((*parsed, line_no))
    return poems, skipped, lines, blank


def test_read_corpus_equals_line_by_line_parsing(tmp_path):
    pieces = ["唐诗", "宋词", "：", ":", "【", "】", " ", "  ", "\t", "\u3000", "\r", "\x01", "\x85", "\u2003",
              "\ufeff", "\x1c", "\x0b", "春", "夜", "，", "。", "a", "题 ", " 唐诗：【", "】\r", "\n", "\r\n"]
    rng = random.Random(20261126)
    for trial in range(400):
        parts = []
        for _ in range(rng.randint(1, 10)):
            if rng.random() < 0.4:
                parts.append(rng.choice([GOOD, GOOD2, GOOD3, "唐诗：【x】", "a b  唐诗:【y】", "t 唐诗：【 】"]))
            else:
                parts.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))))
            parts.append(rng.choice(["\n", "\r\n", "\n\n", ""]))
        text = GOOD + "\n" + "".join(parts)
        path = tmp_path / f"f{trial}.txt"
        path.write_bytes(text.encode("utf-8"))
        max_chars = rng.choice([8, 12, 4096])
        keep = rng.random() < 0.5
        poems, skipped, lines, blank = _reference_read(text, max_chars, keep)
        if not poems:  # then reading is an error naming the first bad line
            with pytest.raises(InputError, match=f"line {min(min(v) for v in skipped.values())}: no line"):
                read_corpus([path], max_chars=max_chars, keep_duplicates=keep)
            continue
        got = read_corpus([path], max_chars=max_chars, keep_duplicates=keep)
        assert [(p.title, p.genre, p.body, p.line_no) for p in got.poems] == poems, repr(text)
        assert {r: [ln for _, ln in v] for r, v in got.skipped.items()} == skipped, repr(text)
        assert (got.lines, got.blank) == (lines, blank)


def test_tang_4k_reads_whole(shared_corpus):
    path = shared_corpus / "tang-4k.raw.txt"
    result = read_corpus([path])
    text = path.read_text(encoding="utf-8")
    assert len(result.poems) == 4000 and result.skipped == {}
    assert [p.text for p in result.poems] == [line for line in text.split("\n") if line.strip()]
    assert [p.line_no for p in result.poems] == list(range(1, 4001))


# --- diagnostics ----------------------------------------------------------------------------

def test_regular_form_counts_agree_with_forms_on_every_poem(shared_corpus):
    bodies = [p.body for p in read_corpus([shared_corpus / "tang-4k.raw.txt"]).poems]
    for body in bodies:
        form = forms.regular_form(body)
        assert regular_form_counts([body]) == ({form.name: 1} if form else {}), body
    expected = {}
    for body in bodies:
        form = forms.regular_form(body)
        if form:
            expected[form.name] = expected.get(form.name, 0) + 1
    assert regular_form_counts(bodies) == expected
    assert sum(expected.values()) == 2555  # the reference measurements (../shared/ANCHORS.md): 2555 of 4000


@pytest.mark.parametrize("body", [
    "别路云初起，离亭叶正飞。所嗟人异雁，不作一行归。",   # 五绝
    "别路云初起，离亭叶正飞。所嗟人异雁，不作一行归",     # no final mark
    "别路云初起，离亭叶正飞。所嗟人异雁，不作一行归？",   # ？ instead of 。
    "别路云初起。离亭叶正飞，所嗟人异雁，不作一行归。",   # marks in the wrong order
    "别路云初起，离亭叶正飞。所嗟人异雁，不作一行归。别路云初起，离亭叶正飞。所嗟人异雁，不作一行归。",  # 五律
    "别路云初起，离亭叶正飞。所嗟人异雁，不作一行归。所嗟人异雁，不作一行归。",  # 6 clauses
    "朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。",  # 七绝
    "朝辞白帝彩云间，千里江陵一日。两岸猿声啼不住，轻舟已过万重山。",  # one clause short
    "a b c d e，a b c。12345，67890。",
    "，，，，", "", "。", "别路云初起，，离亭叶正飞。",
])
def test_regular_form_counts_edge_cases(body):
    form = forms.regular_form(body)
    assert regular_form_counts([body]) == ({form.name: 1} if form else {})
    assert regular_form_counts([body, "x", body]) == ({form.name: 2} if form else {})


def test_report_counts_tang_4k(shared_corpus):
    result = CliRunner().invoke(main, ["corpus", "stats", str(shared_corpus / "tang-4k.raw.txt"), "--json"])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.stdout)
    assert report["poems_kept"] == 4000 and report["skipped"] == {}
    assert report["regular_form"]["poems"] == 2555 and report["regular_form"]["share"] == round(2555 / 4000, 4)
    assert report["genres"] == {"唐诗": 4000}
    assert report["unk_occurrences"] == 0
    assert report["characters"] == sum(len(line) for line in
                                       (shared_corpus / "tang-4k.raw.txt").read_text(encoding="utf-8").split("\n"))
    assert set(report["line_length"]) == {"p50", "p90", "p99", "max", "mean"}
    assert re.match(r"\d+\.\d+", str(report["line_length"]["mean"]))
