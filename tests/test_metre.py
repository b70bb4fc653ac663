"""格律: the rule tables, the checker on famous poems, the vectorised figures and `poetry-gpt check`."""
from __future__ import annotations

import json
import random
import subprocess

import pytest

from helpers import cli
from poetry_gpt.verse import forms, metre

CHUNWANG = "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。"
SHANJU = "空山新雨后，天气晚来秋。明月松间照，清泉石上流。竹喧归浣女，莲动下渔舟。随意春芳歇，王孙自可留。"
DENGGAO = ("风急天高猿啸哀，渚清沙白鸟飞回。无边落木萧萧下，不尽长江滚滚来。"
           "万里悲秋常作客，百年多病独登台。艰难苦恨繁霜鬓，潦倒新停浊酒杯。")
GUANQUE = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
CHUNXIAO = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"


@pytest.mark.parametrize("body, form, pattern, group", [
    (CHUNWANG, "五律", "仄起首句不入韵", "下平十二侵"),
    (SHANJU, "五律", "平起首句不入韵", "下平十一尤"),
    (DENGGAO, "七律", "仄起首句入韵", "上平十灰"),
    (GUANQUE, "五绝", "仄起首句不入韵", "下平十一尤"),
])
def test_famous_regular_poems_pass(body, form, pattern, group):
    r = metre.check_poem(body)
    assert r.form == form and r.passes["standard"] and r.pattern == pattern
    assert r.violations == [] and r.rhyme_faults == [] and r.rhyme_groups == [group]
    assert not r.passes["strict"]  # every one of them frees some odd position (一三五不论)


def test_jingyesi_is_a_gujue():
    r = metre.check_poem(JINGYESI)
    assert r.form == "五绝" and r.passes == {"standard": False, "strict": False}
    assert {(v.line, v.position) for v in r.violations} == {(2, 4), (3, 2)}  # 上 and 头 break 粘/对


def test_chunxiao_rhymes_in_ze():
    r = metre.check_poem(CHUNXIAO)
    assert not r.passes["standard"]
    assert r.rhyme_faults == ["rhyme characters 鸟少 share no 平声 group (they rhyme in 上声十七筱: 仄韵, not 近体)"]


@pytest.mark.parametrize("clauses", [4, 8])
def test_sequences_follow_nian_and_dui(clauses):
    for seq in metre.SEQUENCES[clauses]:
        for n in (5, 7):
            lines = metre.pattern_lines(forms.get_form({(5, 4): "五绝", (7, 4): "七绝", (5, 8): "五律",
                                                        (7, 8): "七律"}[(n, clauses)]), seq)
            for i in range(0, clauses, 2):
                assert lines[i][1] != lines[i + 1][1]  # 对
                assert lines[i + 1][-1] == "平"  # rhyme lines end 平
                if i:
                    assert lines[i][1] == lines[i - 1][1]  # 粘
                    assert lines[i][-1] == "仄"
    assert len(set(metre.SEQUENCES[clauses])) == 4


def test_standard_frees_odd_positions_but_guards_gu_ping_and_san_ping_wei():
    for n, lines in metre.BASE_LINES.items():
        for letter, by in lines.items():
            for i, (strict, standard) in enumerate(zip(by["strict"], by["standard"]), 1):
                named = (n, letter, i) in metre.NAMED_POSITIONS
                assert standard == (strict if i % 2 == 0 or i == n or named else metre.FREE)


def _swap(body: str, index: int, char: str) -> str:
    return body[:index] + char + body[index + 1:]


def test_gu_ping_fails_standard():
    body = _swap(GUANQUE, 6, "白")  # 黄河入海流 -> 白河入海流: 仄平仄仄平
    r = metre.check_poem(body)
    assert not r.passes["standard"]
    assert [(v.line, v.position, v.fault) for v in r.violations] == [(2, 1, "孤平")]


def test_san_ping_wei_fails_standard():
    body = _swap(GUANQUE, 20, "千")  # 更上一层楼 -> 更上千层楼: 仄仄平平平
    r = metre.check_poem(body)
    assert not r.passes["standard"]
    assert [(v.line, v.position, v.fault) for v in r.violations] == [(4, 3, "三平尾")]


def _synthetic(seq: str, n: int, rhymes: str, ping: str = "天", ze: str = "月") -> str:
    form = forms.get_form({5: "五绝", 7: "七绝"}[n] if len(seq) == 4 else {5: "五律", 7: "七律"}[n])
    lines = metre.pattern_lines(form, seq)
    out, r = [], iter(rhymes)
    for i, tones_ in enumerate(lines):
        text = "".join(ping if t == "平" else ze for t in tones_)
        if tones_[-1] == "平":
            text = text[:-1] + next(r)
        out.append(text + form.punctuation[i])
    return "".join(out)


@pytest.mark.parametrize("n", [5, 7])
def test_synthetic_patterns_pass_strict_and_broken_rules_fail(n):
    for seq in metre.SEQUENCES[4] + metre.SEQUENCES[8]:
        rhymes = "光香乡阳章"
        body = _synthetic(seq, n, rhymes)
        assert metre.check_poem(body, "strict").passes == {"standard": True, "strict": True}, body
        assert not metre.check_poem(_synthetic(seq, n, "光东乡阳章"[:5])).passes["standard"]  # two groups
        assert not metre.check_poem(_synthetic(seq, n, "光光乡阳章")).passes["standard"]  # repeated
    shi_nian = _synthetic("ABAB", n, "光香")  # line 3 breaks 粘
    r = metre.check_poem(shi_nian, "strict")
    assert not r.passes["standard"] and not r.passes["strict"]


def test_figures_agree_with_the_per_poem_check():
    rng = random.Random(0)
    chars = "天月风雨山水花鸟光香乡东看思一白"
    bodies = [CHUNWANG, SHANJU, DENGGAO, GUANQUE, JINGYESI, CHUNXIAO, "不规则的诗。"]
    for _ in range(300):
        n, k = rng.choice([(5, 4), (7, 4), (5, 8), (7, 8)])
        bodies.append("".join("".join(rng.choice(chars) for _ in range(n)) + "，。"[j % 2] for j in range(k)))
    for seq in metre.SEQUENCES[4]:
        bodies.append(_synthetic(seq, 5, "光香乡"))
    figures = metre.metre_figures(bodies)
    checks = [metre.check_poem(b, script="simplified") for b in bodies]
    regular = [c for c in checks if c.form]
    assert figures["regular"] == len(regular) == len(bodies) - 1
    for name in metre.LENIENCIES:
        assert figures[f"pass_{name}"] == round(sum(c.passes[name] for c in regular) / len(regular), 4)
    assert figures["pass_strict"] > 0


def test_tone_marks():
    tones_, rhymes = metre.tone_marks(CHUNWANG)
    assert len(tones_) == len(CHUNWANG) and tones_[:6] == ["仄", "仄", "平", "平", "仄", ""]
    assert rhymes == [10, 22, 34, 46]
    assert metre.tone_marks(DENGGAO)[1] == [6, 14, 30, 46, 62]  # 首句入韵
    assert forms.tone_marks is not None and forms.tone_marks(GUANQUE) == metre.tone_marks(GUANQUE)


def test_check_command(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(f"春望 唐诗：【{CHUNWANG}】\n春晓 唐诗：【{CHUNXIAO}】\n", encoding="utf-8")
    out = subprocess.run(cli() + ["check", "--file", str(raw), "--json"], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert [d["passes"]["standard"] for d in data] == [True, False] and data[0]["rhyme_groups"] == ["下平十二侵"]
    out = subprocess.run(cli() + ["check", f"登鹳雀楼 唐诗：【{GUANQUE}】", JINGYESI], capture_output=True, text=True,
                         check=True)
    assert "五绝 仄起首句不入韵 (ABCD) — standard: pass, strict: fail" in out.stdout
    assert "2 poem(s), 2 regular 绝句/律诗; passing: standard 1, strict 0." in out.stdout
    bad = subprocess.run(cli() + ["check"], capture_output=True, text=True)
    assert bad.returncode != 0 and "give poems as arguments or --file" in bad.stderr


def test_corpus_report_has_the_metre_figures(tmp_path):
    from poetry_gpt.data.prepare import read_only_report

    raw = tmp_path / "raw.txt"
    raw.write_text("".join(f"诗{i} 唐诗：【{b}】\n" for i, b in enumerate([CHUNWANG, SHANJU, JINGYESI, CHUNXIAO, "不规则。"])),
                   encoding="utf-8")
    report = read_only_report([raw])
    rf = report["regular_form"]
    assert (rf["pass_standard"], rf["pass_strict"], rf["pingshui_rhyme_rate"]) == (0.5, 0.0, 1.0)
    assert rf["pingshui_ping_rhyme_rate"] == 0.75  # 春晓 rhymes in 仄声: not what --rhyme writes
    assert report["metre"]["by_form"]["五律"]["pass_standard"] == 1.0 and report["metre"]["script"] == "simplified"
    assert report["metre"]["unknown"]["unknown_characters"] == 0


def test_report_without_the_tone_table(monkeypatch):
    from poetry_gpt.verse import tones

    def missing():
        raise tones.ToneDataMissing("the 平水韵 tone table is not installed")

    monkeypatch.setattr(metre, "lookups", lambda script="simplified": missing())
    assert metre.corpus_metre([CHUNWANG]) == {"error": "the 平水韵 tone table is not installed"}


def test_tone_marks_of_an_irregular_body_mark_the_sentence_ends():
    tones_, rhymes = metre.tone_marks("大江东去，浪淘尽。千古风流人物！")
    assert rhymes == [7, 14] and tones_[4] == "" and tones_[0] == "仄"
