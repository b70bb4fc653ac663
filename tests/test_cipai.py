"""词牌 patterns learned from a corpus (poetry_gpt.cipai) and reported by prepare / corpus stats."""
from __future__ import annotations

from poetry_gpt import cipai

HUANXISHA = "一曲新词酒一杯。去年天气旧亭台。夕阳西下几时回。无可奈何花落去，似曾相识燕归来。小园香径独徘徊。"
HUANXISHA_2 = "山下兰芽短浸溪。松间沙路净无泥。萧萧暮雨子规啼。谁道人生无再少，门前流水尚能西。休将白发唱黄鸡。"
ODD = "一曲新词酒一杯，去年天气旧亭台。"


def test_clause_pattern_treats_dun_as_a_break_written_comma():
    assert cipai.clause_pattern("大江东去，浪淘尽、千古风流人物。") == ((4, 3, 6), "，，。")
    assert cipai.clause_pattern("春风十里") == ((4,), "")


def test_learn_patterns_modal_pattern_share_and_threshold():
    poems = [("浣溪沙", HUANXISHA)] * 18 + [("浣溪沙", HUANXISHA_2.replace("。", "，", 1))] + [("浣溪沙", ODD)]
    poems += [("小令", HUANXISHA)] * 19 + [("失调名", HUANXISHA)] * 30
    learned = cipai.learn_patterns(poems)
    assert list(learned) == ["浣溪沙"]  # 小令 has 19 poems, 失调名 names no tune
    entry = learned["浣溪沙"]
    assert entry["poems"] == 20 and entry["clauses"] == [7] * 6 and entry["share"] == 0.95
    assert entry["marks"] == "。。。，。。" and entry["pattern"] == "7。7。7。7，7。7。"
    assert cipai.follows(HUANXISHA_2, entry) and not cipai.follows(ODD, entry)


def test_prepare_records_patterns_in_the_manifest_and_stats_lists_them(tmp_path):
    from poetry_gpt.diagnostics import format_report
    from poetry_gpt.prepare import prepare, read_only_report

    raw = tmp_path / "ci.raw.txt"
    raw.write_text("".join(f"浣溪沙 宋词：【{HUANXISHA[:-1]}{'。' * (i % 2)}{i}】\n" for i in range(24)), encoding="utf-8")
    manifest = prepare([raw], tmp_path / "data").manifest
    assert manifest["cipai"]["浣溪沙"]["poems"] == 24 and manifest["report"]["cipai"] == manifest["cipai"]
    report = read_only_report([raw])
    assert "词牌 patterns (titles heading ≥ 20 poems): 1; top: 浣溪沙 24 poems" in format_report(report)
