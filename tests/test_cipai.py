"""词牌 patterns learned from a corpus (poetry_gpt.verse.cipai) and reported by prepare / corpus stats."""
from __future__ import annotations

from poetry_gpt.verse import cipai

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
    from poetry_gpt.data.diagnostics import format_report
    from poetry_gpt.data.prepare import prepare, read_only_report

    raw = tmp_path / "ci.raw.txt"
    raw.write_text("".join(f"浣溪沙 宋词：【{HUANXISHA[:-1]}{'。' * (i % 2)}{i}】\n" for i in range(24)), encoding="utf-8")
    manifest = prepare([raw], tmp_path / "data").manifest
    assert manifest["cipai"]["浣溪沙"]["poems"] == 24 and manifest["report"]["cipai"] == manifest["cipai"]
    report = read_only_report([raw])
    assert "词牌 patterns (titles heading ≥ 20 poems): 1; top: 浣溪沙 24 poems" in format_report(report)


# ----------------------------------------------------------------------- generate --form <词牌>
TUNE, TUNE_LENGTHS, TUNE_MARKS = "春风令", (3, 3, 7, 4, 5), "，，。，。"


def _tune_corpus(path, poems: int = 24):
    """A raw.txt of ``poems`` random 词 to the made-up tune 春风令 (3，3，7。4，5。) and as many random quatrains."""
    import random

    from helpers import CHARS

    rng = random.Random(0)
    words = (lambda n: "".join(rng.choice(CHARS) for _ in range(n)))  # noqa: E731
    lines = [f"{TUNE} 宋词：【{''.join(words(n) + m for n, m in zip(TUNE_LENGTHS, TUNE_MARKS))}】" for _ in range(poems)]
    lines += [f"{words(2)} 宋词：【{words(5)}，{words(5)}。{words(5)}，{words(5)}。】" for _ in range(poems)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cipai_layout_constraint_follows_the_pattern():
    import numpy as np

    from poetry_gpt.generate import constraints
    from poetry_gpt.data.vocab import CharVocab

    vocab = CharVocab.from_counts(CharVocab.count_chars([f"{TUNE} 宋词：【{HUANXISHA}】", "春 宋词：【花，月。】"]))
    layout = constraints.Layout(TUNE, TUNE_LENGTHS, tuple(TUNE_MARKS))
    c = constraints.layout_constraint(layout, vocab, acrostic="一去")
    entry = {"clauses": list(TUNE_LENGTHS)}
    for seed in range(30):
        rng = np.random.default_rng(seed)
        state, rhyme, text = *c.initial_state(f"{TUNE} 宋词：【"), ""
        while state != c.done_state:
            logits = np.where(c.allowed_tokens(state, rhyme), rng.normal(0, 3, len(vocab)), -1e9)
            token = int(np.argmax(logits + rng.gumbel(size=len(logits))))
            state, rhyme = c.advance(state, rhyme, token)
            text += vocab.tokens[token]
        body = text[:text.index("】")]
        assert cipai.follows(body, entry) and cipai.clause_pattern(body)[1] == TUNE_MARKS, body
        assert body.startswith("一") and body[4] == "去"
    assert c.tokens_to_finish(c.initial_state(f"{TUNE} 宋词：【")[0]) == layout.body_len + 1 == 28


def test_generate_form_cipai_from_the_export_alone(tmp_path):
    """prepare records the tune, train copies it into export/poetry_gpt.json (via run.json), and generate
    constrains to it from the export alone (DATA_DIR gone), title defaulting to the tune."""
    import json
    import shutil

    import pytest

    from helpers import train_tiny

    from poetry_gpt.errors import OptionError
    from poetry_gpt.generate.generator import PoemGenerator

    train_tiny(_tune_corpus(tmp_path / "ci.raw.txt"), tmp_path, steps=2)
    shutil.rmtree(tmp_path / "data")
    meta = json.loads((tmp_path / "run" / "export" / "poetry_gpt.json").read_text(encoding="utf-8"))
    assert meta["cipai"][TUNE]["clauses"] == list(TUNE_LENGTHS)
    gen = PoemGenerator(tmp_path / "run" / "export")
    assert list(gen.cipai) == [TUNE] and gen.form_names()[-1] == TUNE
    traces = dict(gen.sampler.traces)
    samples = gen.generate(None, form=TUNE, num_samples=24, batch_size=8, seed=3)
    for s in samples:
        assert s.closed and s.prompt == f"{TUNE} 宋词：【" and cipai.follows(s.body, meta["cipai"][TUNE]), s.text
    gen.generate(None, form="五绝", num_samples=8, batch_size=8, seed=3)  # the forms share the program
    assert gen.sampler.traces["decode"] == traces["decode"] + 1
    with pytest.raises(OptionError, match="--strict: a 词牌's pattern records clause lengths"):
        gen.generate(None, form=TUNE, strict=True)
    with pytest.raises(OptionError, match=f"unknown form '八绝'.*or a 词牌 of this model's corpus: {TUNE}"):
        gen.generate(None, form="八绝")
