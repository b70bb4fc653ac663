"""Tests for poetry_gpt.verse.forms: the regularity rule, rhyme groups and constrained decoding."""
from __future__ import annotations

import os

import numpy as np
import pytest

from poetry_gpt.verse import forms, tones
from poetry_gpt.generate import constraints
from poetry_gpt.data.corpus import parse_line
from poetry_gpt.errors import OptionError
from poetry_gpt.data.vocab import SEP_ID, CharVocab

JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
SONGXIONG = "别路云初起，离亭叶正飞。所嗟人异雁，不作一行归。"
ZAIZENG = "弄玉有夫皆得道，刘纲兼室尽登仙。君能仔细窥朝露，须逐云车拜洞天。"
CHUNWANG = "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。"
HUANGHELOU = ("昔人已乘黄鹤去，此地空余黄鹤楼。黄鹤一去不复返，白云千载空悠悠。"
              "晴川历历汉阳树，芳草萋萋鹦鹉洲。日暮乡关何处是，烟波江上使人愁。")
YIQINE = "风淅淅。夜雨连云黑。滴滴。窗外芭蕉灯下客。除非魂梦到乡国。免被关山隔。忆忆。一句枕前争忘得。"
POEMS = [JINGYESI, SONGXIONG, ZAIZENG, CHUNWANG, HUANGHELOU, YIQINE,
         "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
         "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
         "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
         "朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。",
         "故人西辞黄鹤楼，烟花三月下扬州。孤帆远影碧空尽，唯见长江天际流。",
         "空山新雨后，天气晚来秋。明月松间照，清泉石上流。竹喧归浣女，莲动下渔舟。随意春芳歇，王孙自可留。",
         "风急天高猿啸哀，渚清沙白鸟飞回。无边落木萧萧下，不尽长江滚滚来。"
         "万里悲秋常作客，百年多病独登台。艰难苦恨繁霜鬓，潦倒新停浊酒杯。"]
# headers, the other clause marks and some ASCII, so the tests see the constraint keep them out of clauses
LINES = [f"题{i} 唐诗：【{p}】" for i, p in enumerate(POEMS)] + ["春晓 宋词：【问？答！且；夏秋冬、abc 123】"]


@pytest.fixture(scope="module")
def vocab() -> CharVocab:
    return CharVocab.from_counts(CharVocab.count_chars(LINES))


def body_of(text: str) -> str:
    return text[text.index("【") + 1:text.index("】")]


# ------------------------------------------------------------------------------- check
@pytest.mark.parametrize("body, form, rhymes", [
    (JINGYESI, "五绝", True), (SONGXIONG, "五绝", True), (ZAIZENG, "七绝", True),
    (HUANGHELOU, "七律", True),
    (CHUNWANG, "五律", False),  # 簪 is zān today, a 侵-rhyme (zēn) in Tang: the modern approximation misses it
])
def test_check_regular(body, form, rhymes):
    report = forms.check(body)
    assert report.regular and report.form == form
    n = forms.FORMS[form].clauses
    assert report.clause_lengths == [forms.FORMS[form].clause_len] * n
    assert report.punctuation == ["，", "。"] * (n // 2)
    assert len(report.rhyme_chars) == n // 2
    assert report.rhymes is rhymes


def test_check_rhyme_chars():
    report = forms.check(SONGXIONG)
    assert report.rhyme_chars == ["飞", "归"]
    assert report.rhyme_finals == ["微", "微"]


@pytest.mark.parametrize("body", [
    YIQINE,
    "床前明月光，疑是地上霜。举头望明月，低头思故乡？",  # ？ where 。 belongs
    "床前明月光。疑是地上霜，举头望明月。低头思故乡，",  # marks swapped
    "床前明月光，疑是地上霜。举头望明月，低头思故乡",  # no final mark
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。更上一层楼，欲穷千里目。",  # 6 clauses
    "床前明月光，疑是地上白霜。举头望明月，低头思故乡。",  # one clause of 6
    "床前明月，疑是地上，举头望明，低头思故。",  # 4 characters a clause
    "",
])
def test_check_irregular(body):
    report = forms.check(body)
    assert not report.regular and report.form is None and report.rhymes is None
    assert report.rhyme_chars == []


def test_check_reports_clauses_of_irregular():
    report = forms.check("风淅淅。夜雨连云黑。滴滴")
    assert report.clause_lengths == [3, 5, 2]
    assert report.punctuation == ["。", "。"]


@pytest.mark.parametrize("char, group", [
    ("光", "唐"), ("霜", "唐"), ("乡", "唐"), ("飞", "微"), ("归", "微"), ("心", "文"), ("云", "文"),
    ("天", "寒"), ("仙", "寒"), ("还", "寒"), ("鱼", "齐"), ("时", "齐"), ("五", "姑"), ("楼", "尤"),
    ("花", "麻"), ("雪", "皆"), ("来", "开"), ("声", "庚"), ("红", "庚"),
    ("a", None), ("，", None), ("【", None), (" ", None),
])
def test_rhyme_final(char, group):
    assert forms.rhyme_final(char) == group


def test_get_form():
    assert forms.get_form("七律").clauses == 8
    assert forms.get_form("五绝").rhyme_clauses == (2, 4)
    assert forms.get_form("七言律诗") is forms.get_form(" 七律 ") is forms.FORMS["七律"]  # full names, spaces
    assert forms.get_form("五言绝句").name == "五绝"
    assert forms.get_form("五絕") is forms.FORMS["五绝"] and forms.get_form("七言律詩") is forms.FORMS["七律"]
    with pytest.raises(OptionError, match="五绝, 七绝, 五律, 七律 .or 五言绝句"):
        forms.get_form("宋词")


@pytest.mark.parametrize("name, regular, total", [("tang-4k", 2555, 4000), ("tang-full", 36648, 52788)])
def test_corpus_regular_counts(shared_corpus, name, regular, total):
    path = shared_corpus / f"{name}.raw.txt"
    if not path.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} missing (CI=true requires it)")
        pytest.skip(f"{path} not found")
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    parsed = [parse_line(line) for line in lines]
    count = sum(isinstance(p, tuple) and forms.regular_form(p[2]) is not None for p in parsed)
    assert (count, len(lines)) == (regular, total)


# ----------------------------------------------------------------------- constrained decoding
def test_build_constraint_errors(vocab):
    with pytest.raises(OptionError, match="--form"):
        constraints.build_constraint("词", vocab)
    with pytest.raises(OptionError, match="--acrostic.*at most 4"):
        constraints.build_constraint("五绝", vocab, acrostic="春夏秋冬月")
    constraints.build_constraint("五律", vocab, acrostic="春夏秋冬月")  # 8 clauses: fine
    spaced = constraints.build_constraint("五绝", vocab, acrostic=" 春 夏\t秋 冬 ")  # spaces between them are ignored
    assert spaced.acrostic == "春夏秋冬"
    assert (spaced.allowed == constraints.build_constraint("五绝", vocab, acrostic="春夏秋冬").allowed).all()
    with pytest.raises(OptionError, match="--acrostic.*龘"):
        constraints.build_constraint("五绝", vocab, acrostic="春龘")
    with pytest.raises(OptionError, match="--acrostic.*'a'"):
        constraints.build_constraint("五绝", vocab, acrostic="a")
    assert "国" in vocab.tokens and "國" not in vocab.tokens
    with pytest.raises(OptionError, match="'國' is not in the vocabulary; its simplified form '国' is; choose"):
        constraints.build_constraint("五绝", vocab, acrostic="春國")


@pytest.mark.parametrize("form, acrostic, rhyme, prompt, match", [
    ("五绝", None, False, "题 唐诗：【床前明月光疑", "'，'"),  # a 7-character opening
    ("五绝", None, False, "题 唐诗：【床前明月光，疑是地上霜，", "'。'"),
    ("五绝", None, False, "题 唐诗：【床前a", "Chinese character"),
    ("五绝", None, False, "题 唐诗：【床前龘", "not in the vocabulary"),
    ("五绝", None, False, "题】 唐诗：【", "】 before 【"),
    ("五绝", None, False, "题 唐诗：【" + JINGYESI + "春", "】 must follow"),
    ("五绝", "春", False, "题 唐诗：【床", "--acrostic"),
    ("五绝", None, True, "题 唐诗：【床前明月光，疑是地上霜。举头望明月，低头思故人", "--rhyme"),
])
def test_prompt_misfit(vocab, form, acrostic, rhyme, prompt, match):
    c = constraints.build_constraint(form, vocab, acrostic=acrostic, rhyme=rhyme)
    with pytest.raises(OptionError, match=match):
        c.initial_state(prompt)


def test_initial_state(vocab):
    c = constraints.build_constraint("五绝", vocab, rhyme=True, rhyme_book="modern")
    none = constraints.NO_RHYME
    assert c.initial_state("") == (0, none)
    assert c.initial_state("春晓 唐诗：") == (0, none)
    assert c.initial_state("春晓 唐诗：【") == (1, none)
    assert c.initial_state("春晓 唐诗：【春眠不觉晓") == (6, none)
    state, rhyme = c.initial_state("题 唐诗：【床前明月光，疑是地上霜。")
    assert state == 13 and constraints.group_of(rhyme[0]) == ["唐"] and rhyme[1:] == none[1:]  # 中华新韵: no record
    assert c.initial_state("题 唐诗：【" + JINGYESI + "】")[0] == c.done_state
    assert c.initial_state("题 唐诗：【" + JINGYESI)[0] == c.done_state - 1


def test_initial_state_pingshui(vocab):
    """The default book: clause 2 records its 平水韵 平声 group and the character (none may come twice)."""
    c = constraints.build_constraint("五绝", vocab, rhyme=True)
    assert c.rhyme_book == "pingshui"
    state, rhyme = c.initial_state("题 唐诗：【床前明月光，疑是地上霜。")
    assert state == 13 and constraints.group_of(rhyme[0], tones.group_names()) == ["下平七阳"]
    assert c.tokens[rhyme[1]] == "霜"
    with pytest.raises(OptionError, match=r"--rhyme: '霜' at the end of clause 4 does not rhyme \(平水韵 平声 group, no rhyme character twice\)"):
        c.initial_state("题 唐诗：【床前明月光，疑是地上霜。举头望明月，低头思故霜")


def _sample_numpy(c, prompt, rng, boost_open=False):
    state, group = c.initial_state(prompt)
    ids = []
    for _ in range(400):
        if state == c.done_state:
            break
        logits = rng.normal(0.0, 3.0, len(c.tokens))
        if boost_open:
            logits[c.tokens.index("【")] += 6.0
        masked = np.where(c.allowed_tokens(state, group), logits, -1e9)
        tok = int(np.argmax(masked + rng.gumbel(size=len(masked))))
        ids.append(tok)
        state, group = c.advance(state, group, tok)
    assert state == c.done_state
    return prompt + "".join(c.tokens[i] for i in ids)


def _assert_poem(text, form, acrostic, rhyme):
    """``rhyme``: False, or the book the rhyme clauses must rhyme in (True: the default, pingshui)."""
    body = body_of(text)
    report = forms.check(body)
    assert report.form == form, text
    clauses = forms.split_clauses(body)[0]
    assert all(forms.is_hanzi(ch) for ch in "".join(clauses)), text
    assert "".join(cl[0] for cl in clauses[:len(acrostic or "")]) == (acrostic or ""), text
    if rhyme == "modern":
        assert report.rhymes, (text, report.rhyme_finals)
    elif rhyme:
        assert pingshui_rhymes(report.rhyme_chars), (text, report.rhyme_chars)


def pingshui_rhymes(chars) -> bool:
    """The 平水韵 rhyme check, written out: one 平声 group shared by every rhyme character, none twice."""
    table = tones.table()
    shared = set.intersection(*(set(table.ping_groups(c)) for c in chars))
    return bool(shared) and len(set(chars)) == len(chars)


def test_pingshui_rhyme_check_itself():
    assert pingshui_rhymes("霜乡") and pingshui_rhymes("流楼")
    assert not pingshui_rhymes("霜人")  # 下平七阳 / 上平十一真
    assert not pingshui_rhymes("乡乡")  # a rhyme character twice
    assert not pingshui_rhymes("鸟少")  # 上声十七筱: 仄韵


CASES = [(f, a, r) for f in forms.FORMS for a in (None, "春风明月") for r in (False, "pingshui", "modern")]


@pytest.mark.parametrize("form, acrostic, rhyme", CASES)
def test_random_logits_numpy(vocab, form, acrostic, rhyme):
    c = _build(form, vocab, acrostic, rhyme)
    for seed in range(20):
        text = _sample_numpy(c, "题 唐诗：【", np.random.default_rng(seed))
        _assert_poem(text, form, acrostic, rhyme)


def _build(form, vocab, acrostic, rhyme):
    """``build_constraint`` with ``rhyme`` False or a rhyme book."""
    return constraints.build_constraint(form, vocab, acrostic=acrostic, rhyme=bool(rhyme),
                                        rhyme_book=rhyme or constraints.DEFAULT_RHYME_BOOK)


@pytest.mark.parametrize("form", list(forms.FORMS))
def test_plain_rhyme_defaults_to_pingshui(vocab, form):
    """issue 13: ``--rhyme`` alone rhymes in the 平水韵 (one 平声 group, no character twice) over many seeds;
    the old 中华新韵 default failed this for 79 of these 80 poems."""
    c = constraints.build_constraint(form, vocab, rhyme=True)
    for seed in range(20):
        body = body_of(_sample_numpy(c, "题 唐诗：【", np.random.default_rng(seed)))
        assert pingshui_rhymes(forms.check(body).rhyme_chars), body


def test_rhyme_book_is_checked(vocab):
    with pytest.raises(OptionError, match=r"^--rhyme-book: must be pingshui .* or modern .*, got pinshui$"):
        constraints.build_constraint("五绝", vocab, rhyme=True, rhyme_book="pinshui")
    with pytest.raises(OptionError, match="--rhyme-book modern: --strict rhymes in the 平水韵"):
        constraints.build_constraint("五绝", vocab, strict="standard", rhyme_book="modern")


def test_random_logits_from_header_and_opening(vocab):
    c = constraints.build_constraint("五绝", vocab, rhyme=True)
    for seed in range(10):
        text = _sample_numpy(c, "", np.random.default_rng(seed), boost_open=True)
        assert "】" not in text[:text.index("【")]
        _assert_poem(text, "五绝", None, True)
        text = _sample_numpy(c, "题 唐诗：【床前明月光，", np.random.default_rng(seed))
        assert body_of(text).startswith("床前明月光，")
        _assert_poem(text, "五绝", None, True)


def test_free_constraint_writes_one_header(vocab):
    """issue 12 #6: free sampling is header (no 】), body (no second 【) and done, whatever the logits."""
    free = constraints.free_constraint(vocab)
    o, c = vocab.id_of("【"), vocab.id_of("】")
    none = constraints.NO_RHYME
    assert free.initial_state("") == (0, none) and free.initial_state("春晓 唐诗：【春眠") == (1, none)
    assert free.initial_state("题 唐诗：【春眠】")[0] == free.done_state
    assert not free.allowed[:2, :3].any()  # never a special token
    with pytest.raises(OptionError, match="opening: the prompt '题 唐诗：【春【眠' has a second '【'"):
        free.initial_state("题 唐诗：【春【眠", option="opening")
    with pytest.raises(OptionError, match="】 before 【"):
        free.initial_state("题】 唐诗：【")
    rng = np.random.default_rng(0)
    for _ in range(50):
        state, text = 0, ""
        while state != free.done_state:
            logits = rng.normal(0.0, 3.0, len(vocab))
            logits[[o, c]] += 6.0  # both brackets are the favourites at every step
            tok = int(np.argmax(np.where(free.allowed_tokens(state, none), logits, -1e9) + rng.gumbel(size=len(vocab))))
            state, text = free.advance(state, none, tok)[0], text + vocab.tokens[tok]
        head, _, body = text.partition("【")
        assert "】" not in head and text.endswith("】") and "【" not in body, text


@pytest.mark.parametrize("form, acrostic, rhyme", CASES)
def test_every_form_keeps_the_free_rule(vocab, form, acrostic, rhyme):
    """The free rule composes with the forms: in each state a form allows only what the free automaton
    allows in the matching state (header ↔ header, body positions and close ↔ body, done ↔ done)."""
    free = constraints.free_constraint(vocab)
    c = _build(form, vocab, acrostic, rhyme)
    matching = np.array([0] + [1] * (c.done_state - 1) + [free.done_state])
    assert not (c.allowed & ~free.allowed[matching]).any()
    assert (c.allowed[0] == free.allowed[0]).all()  # the header is written as freely as without a form


def test_allowed_tokens_rhyme_fallback(vocab):
    c = constraints.build_constraint("五绝", vocab, rhyme=True, rhyme_book="modern")
    match_state = int(np.flatnonzero(c.rhyme_role == constraints.ROLE_MATCH)[0])
    group = 1 << forms.GROUP_NAMES.index("唐")
    rest = constraints.NO_RHYME[1:]
    restricted = c.allowed_tokens(match_state, (group, *rest))
    assert restricted.any() and (c.token_final[restricted] == group).all()
    assert (c.allowed_tokens(match_state, (1 << 20, *rest)) == c.allowed[match_state]).all()  # no token: fallback
    assert (c.allowed_tokens(match_state, constraints.NO_RHYME) == c.allowed[match_state]).all()
    assert c.allowed[c.done_state].sum() == 1 and c.allowed[c.done_state, SEP_ID]


# ------------------------------------------------------------------------------ TensorFlow
@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def test_tf_matches_numpy_and_fallback(vocab, tf):
    c = constraints.build_constraint("五绝", vocab, rhyme=True, rhyme_book="modern")
    tables = c.as_tensors()
    match_state = int(np.flatnonzero(c.rhyme_role == constraints.ROLE_MATCH)[0])
    states = np.array([0, 1, 6, match_state, match_state, match_state, c.done_state], np.int32)
    groups = np.full((len(states), constraints.RHYME_WIDTH), -1, np.int32)
    groups[:, 0] = [-1, -1, -1, 1 << forms.GROUP_NAMES.index("唐"), 1 << 20, -1, 8]
    logits = np.random.default_rng(0).normal(size=(len(states), len(vocab))).astype(np.float32)
    out = constraints.apply_constraint_tf(tf.constant(logits), tf.constant(states), tf.constant(groups), tables).numpy()
    assert np.isfinite(out).all()
    for row, (s, g) in enumerate(zip(states, groups)):
        expected = c.allowed_tokens(int(s), tuple(g))
        assert ((out[row] > -1e8) == expected).all()
    half = constraints.apply_constraint_tf(tf.constant(logits, tf.float16), tf.constant(states), tf.constant(groups), tables)
    assert np.isfinite(half.numpy()).all()


@pytest.mark.parametrize("form", list(forms.FORMS))
def test_random_logits_tf_xla(vocab, tf, form):
    batch = 32
    steps = forms.FORMS[form].body_len + 2

    @tf.function(jit_compile=True)
    def sample(tables, state, group, seed):
        V = tf.shape(tables["token_final"])[0]
        out = tf.TensorArray(tf.int32, size=steps)
        for t in tf.range(steps):
            seeds = tf.stack([seed, t])
            logits = 3.0 * tf.random.stateless_normal([batch, V], seeds)
            masked = constraints.apply_constraint_tf(logits, state, group, tables)
            u = tf.random.stateless_uniform([batch, V], seeds + 1, minval=1e-7, maxval=1.0)
            tok = tf.argmax(masked - tf.math.log(-tf.math.log(u)), axis=1, output_type=tf.int32)
            out = out.write(t, tok)
            state, group = constraints.advance_tf(state, group, tok, tables)
        return tf.transpose(out.stack()), state

    settings = [(None, False), ("春风明月", False), (None, "pingshui"), ("春风明月", "pingshui"), (None, "modern")]
    for seed, (acrostic, rhyme) in enumerate(settings):
        c = _build(form, vocab, acrostic, rhyme)
        s0, g0 = c.initial_state("题 唐诗：【")
        ids, final = sample(c.as_tensors(), tf.fill([batch], s0), tf.constant([g0] * batch), tf.constant(seed))
        assert (final.numpy() == c.done_state).all()
        for row in ids.numpy():
            text = "【" + vocab.decode(row)
            assert text.endswith("】[SEP]")
            _assert_poem(text, form, acrostic, rhyme)
