"""Tests for poetry_gpt.verse.poem_metrics: exact figures on tiny inputs."""
from __future__ import annotations

import pytest

from poetry_gpt.verse import poem_metrics as pm

JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"  # 五绝, rhymes (霜/乡)
SONGXIONG = "别路云初起，离亭叶正飞。所嗟人异雁，不作一行归。"  # 五绝, rhymes (飞/归)
ZAIZENG = "弄玉有夫皆得道，刘纲兼室尽登仙。君能仔细窥朝露，须逐云车拜洞天。"  # 七绝, rhymes
CHUNWANG = ("国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。"
            "烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。")  # 五律, 簪 breaks the modern rhyme
IRREGULAR = "风淅淅。夜雨连云黑。"


def test_extract_body():
    assert pm.extract_body("题 唐诗：【春眠】后") == ("春眠", True)
    assert pm.extract_body("题 唐诗：【春眠") == ("春眠", False)
    assert pm.extract_body("春眠】") == ("春眠", True)
    assert pm.extract_body("春眠") == ("春眠", False)


def test_closure_rate():
    assert pm.closure_rate(["题：【春】", "题：【春", ("x", True), ("y【】", False)]) == 0.5
    assert pm.closure_rate([]) is None


def test_form_rates():
    rates = pm.form_rates([JINGYESI, CHUNWANG, IRREGULAR, ZAIZENG])
    assert rates == {"regular": 0.75, "五绝": 0.25, "七绝": 0.25, "五律": 0.25, "七律": 0.0}
    assert pm.form_rates([])["regular"] is None


def test_rhyme_rate():
    assert pm.rhyme_rate([JINGYESI, CHUNWANG, IRREGULAR, ZAIZENG]) == pytest.approx(2 / 3)
    assert pm.rhyme_rate([IRREGULAR]) is None


def test_distinct_n():
    assert pm.distinct_n(["明月光，明月霜。"], 1) == pytest.approx(4 / 6)
    assert pm.distinct_n(["明月光，明月霜。"], 2) == pytest.approx(3 / 4)
    assert pm.distinct_n(["春春春，春春。"], 2) == pytest.approx(1 / 3)
    assert pm.distinct_n(["ab，ba。"], 2) == 1.0  # "b，b" spans a mark: not a bigram
    assert pm.distinct_n(["明月光", "明月光"], 1) == 0.5  # pooled over bodies
    assert pm.distinct_n([], 1) is None


def test_ngram_count_is_what_distinct_n_divides_by():
    assert pm.ngram_count(["明月光，明月霜。", "ab"], 2) == 5
    assert pm.ngram_count(["明月光，明月霜。"], 1) == 6


def test_distinct_n_at_size_matches_the_size():
    a, b = "春眠不觉晓，处处闻啼鸟。", "白日依山尽，黄河入海流。"
    # every single poem has 8 distinct bigrams: at that size the pool is always all distinct
    assert pm.distinct_n_at_size([a, b] * 50, 2, 8) == 1.0
    # 16 bigrams: two poems drawn without replacement from 50 + 50 copies; the same text twice
    # (probability 49/99) halves distinct-2, so the mean is near 1 - 0.5 * 49/99
    got = pm.distinct_n_at_size([a, b] * 50, 2, 16, draws=400)
    assert 0.70 < got < 0.80
    # smaller samples of a repetitive corpus look more diverse than the whole corpus does
    assert pm.distinct_n_at_size([a, b] * 50, 2, 8) > pm.distinct_n([a, b] * 50, 2)
    # a poem cut to fit: 12 bigrams = one poem and half of another
    assert pm.distinct_n_at_size([a], 2, 4) == 1.0
    assert pm.distinct_n_at_size([a], 2, 9) is None  # more than the bodies hold
    assert pm.distinct_n_at_size([a], 2, 0) is None
    # deterministic for a seed
    assert pm.distinct_n_at_size([a, b] * 5, 2, 16, seed=3) == pm.distinct_n_at_size([a, b] * 5, 2, 16, seed=3)


def test_copy_rate():
    generated = [JINGYESI, "床前明月光，疑是天上霜。举头望明月，低头思故乡。", "春风，春风。"]
    result = pm.copy_rate(generated, [JINGYESI, SONGXIONG])
    assert result == {"clauses": 8, "clause_copy": 7 / 8, "poem_copy": pytest.approx(1 / 3)}
    index = pm.CopyIndex([JINGYESI, SONGXIONG])
    assert pm.copy_rate(generated, index) == result
    assert pm.copy_rate(generated, [JINGYESI], min_len=6) == {"clauses": 0, "clause_copy": None,
                                                               "poem_copy": pytest.approx(1 / 3)}


def test_corpus_figures():
    figures = pm.corpus_figures([JINGYESI, IRREGULAR])
    assert figures == {
        "poems": 2, "regular": 0.5, "五绝": 0.5, "七绝": 0.0, "五律": 0.0, "七律": 0.0,
        "rhyme_rate": 1.0,
        "distinct_1": pytest.approx(24 / 28),  # 20 + 8 characters; 明, 月, 头 and 淅 repeat
        "distinct_2": pytest.approx(21 / 22),  # 16 + 6 bigrams; 明月 repeats
    }


def test_sample_figures():
    samples = ["题 唐诗：【" + JINGYESI + "】", "题 唐诗：【" + SONGXIONG, ("题：【" + ZAIZENG + "】", True)]
    figures = pm.sample_figures(samples, [SONGXIONG])
    bodies = [JINGYESI, SONGXIONG, ZAIZENG]
    assert figures["poems"] == 3
    assert figures["regular"] == pytest.approx(2 / 3)  # the unclosed 五绝 counts as irregular
    assert (figures["五绝"], figures["七绝"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert figures["rhyme_rate"] == 1.0
    assert figures["closure_rate"] == pytest.approx(2 / 3)
    assert figures["distinct_1"] == pm.distinct_n(bodies, 1)
    assert figures["distinct_2"] == pm.distinct_n(bodies, 2)
    assert (figures["clauses"], figures["clause_copy"], figures["poem_copy"]) == (12, pytest.approx(1 / 3),
                                                                                 pytest.approx(1 / 3))
    assert "clause_copy" not in pm.sample_figures(samples)
    assert set(pm.corpus_figures(bodies)) < set(figures)
