"""``poetry-gpt eval``: the report on a tiny trained run, checked against independent computations.

One module-scoped run: a generated corpus of regular 五绝/七绝 poems over a small character set,
``prepare``d, and the ``tiny`` preset trained 5 steps in fp32 (so training's own validation loss is
comparable). The CLI report is computed once and checked piece by piece.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from poetry_gpt.verse import poem_metrics
from poetry_gpt.config import DataConfig, config_from_preset
from poetry_gpt.errors import DataDirError, OptionError, RunDirError
from poetry_gpt.eval.evaluate import corpus_sample, held_out_prompts, perplexity, prompt_order

CHARS = "春花秋月山水风云天地人心江河日夜雪雨"
OTHER_CHARS = "东西南北金木火土竹松梅兰草石"
N_SAMPLES = 8
TOP_KEYS = {"version", "run", "export", "global_step", "epoch", "export_step", "data", "options", "validation", "samples",
            "held_out", "corpus", "examples", "seconds"}
FIGURE_KEYS = {"poems", "regular", "五绝", "七绝", "五律", "七律", "rhyme_rate", "distinct_1", "distinct_2"}
SAMPLE_KEYS = FIGURE_KEYS | {"closure_rate", "clauses", "clause_copy", "poem_copy"}


def write_raw(path: Path, n: int, seed: int = 0, chars: str = CHARS) -> Path:
    """``n`` random regular poems (五绝 and every third a 七绝) ``title 唐诗：【body】``."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        width = 7 if i % 3 == 2 else 5
        title = "".join(rng.choice(chars) for _ in range(2))
        body = "".join("".join(rng.choice(chars) for _ in range(width)) + "，。"[j % 2] for j in range(4))
        lines.append(f"{title} 唐诗：【{body}】")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_data(folder: Path, n: int = 120, seed: int = 0, chars: str = CHARS, vocab_dir=None) -> Path:
    from poetry_gpt.data.prepare import prepare

    folder.mkdir(parents=True, exist_ok=True)
    raw = write_raw(folder / "raw.txt", n, seed, chars)
    prepare([raw], folder / "data", DataConfig(valid_fraction=0.1), vocab_dir=vocab_dir, n_ctx=64)
    return folder / "data"


def invoke(args):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    return CliRunner().invoke(main, args)


def split_bodies(data_dir, split: str) -> list[str]:
    """Bodies of a split, decoded independently of poetry_gpt.eval.evaluate."""
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.datasets import read_poem_ids
    from poetry_gpt.data.vocab import CharVocab

    vocab = CharVocab.load(data_dir)
    lines = [vocab.decode(ids) for ids in read_poem_ids(load_manifest(data_dir), split)]
    return [line.partition("【")[2].rpartition("】")[0] for line in lines]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> Path:
    from poetry_gpt.train.loop import train

    run = tmp_path_factory.mktemp("trained") / "run"
    config = config_from_preset("tiny").replace(train=dict(epochs=1, steps_per_epoch=5, samples_per_epoch=0,
                                                           precision="fp32"))
    train(data_dir, run, config, echo=lambda s: None, verbose=0)
    return run


@pytest.fixture(scope="module")
def cli_report(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.json"
    result = invoke(["eval", "--run", str(run_dir), "--samples", str(N_SAMPLES), "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == report
    return report


@pytest.fixture(scope="module")
def generator(run_dir):
    from poetry_gpt.generate.generator import PoemGenerator

    return PoemGenerator(run_dir)


def context_start(t: int, length: int, n_ctx: int, stride: int) -> int:
    """Where the context of token ``t`` of a ``length``-token row starts, by the documented rule.

    Windows start at ``min(i · stride, length − n_ctx)``; token ``t`` is predicted by the first
    window that holds it, from that window's tokens before it.
    """
    extra = max(0, length - n_ctx)
    starts = [min(i * stride, extra) for i in range(1 + -(-extra // stride))]
    return next(s for s in starts if s + n_ctx > t)


def direct_loss(lm, poems: list[list[int]], n_ctx: int, stride: int) -> tuple[float, int]:
    """(sum of −log p, tokens) over ``[SEP]`` + each poem, one model call per predicted token.

    Token ``t`` is scored from transformers' own logits for ``seq[context_start(t):t]`` (float64
    log-softmax in numpy), independently of ``datasets.eval_dataset``.
    """
    import tensorflow as tf

    from poetry_gpt.data.vocab import SEP_ID

    total, count = 0.0, 0
    for ids in poems:
        seq = [SEP_ID] + ids
        for t in range(1, len(seq)):
            context = seq[context_start(t, len(seq), n_ctx, stride):t]
            logits = lm(tf.constant([context]), training=False).logits.numpy()[0, -1].astype(np.float64)
            total -= logits[seq[t]] - np.logaddexp.reduce(logits)
            count += 1
    return total, count


# --- the report -------------------------------------------------------------------------------

@pytest.mark.slow
def test_report_has_every_block(cli_report, run_dir, data_dir):
    r = cli_report
    assert set(r) == TOP_KEYS
    assert Path(r["run"]) == run_dir.resolve()
    assert r["global_step"] == 5 and r["export_step"] == 5 and r["epoch"] == 1
    assert r["data"]["path"] == str(data_dir.resolve()) and r["data"]["recorded_in_run"]
    assert r["data"]["same_data_as_run"]
    assert r["options"] == {"samples": N_SAMPLES, "seed": 3, "top_k": 64, "top_p": 1.0, "temperature": 1.0,
                            "repetition_penalty": 1.0, "min_p": 0.05, "batch_size": 16, "corpus_poems": 5000,
                            "min_clause_len": 5, "examples": 5}
    v = r["validation"]
    assert {"loss", "perplexity", "tokens", "rows", "poems", "dtype"} <= set(v) and v["dtype"] == "float32"
    assert math.isclose(v["perplexity"], math.exp(v["loss"]), rel_tol=1e-9)
    assert SAMPLE_KEYS <= set(r["samples"]) and SAMPLE_KEYS <= set(r["held_out"])
    assert FIGURE_KEYS <= set(r["corpus"])
    assert r["samples"]["poems"] == N_SAMPLES and r["held_out"]["poems"] == N_SAMPLES
    assert r["samples"]["seconds"] > 0 and r["samples"]["tokens"] > 0
    for block in ("samples", "held_out"):
        for key in ("regular", "closure_rate", "distinct_1", "distinct_2", "clause_copy", "poem_copy"):
            value = r[block][key]
            assert value is None or 0.0 <= value <= 1.0, (block, key, value)
    # the held-out poems are regular, closed, real poems; prepare drops duplicates, so none is a training poem
    assert r["held_out"]["regular"] == 1.0 and r["held_out"]["closure_rate"] == 1.0
    assert r["held_out"]["poem_copy"] == 0.0
    assert len(r["examples"]) == 5
    for example in r["examples"]:
        assert example["text"].count("：【") == 1 and " 唐诗：【" in example["text"]
    assert [e["seed"] for e in r["examples"]] == [3, 4, 5, 6, 7]


@pytest.mark.slow
def test_validation_loss_is_the_token_mean_over_all_poems(cli_report, run_dir, data_dir):
    """An independent computation: transformers' own logits, log-softmax in numpy, one poem at a time."""
    from transformers import TFGPT2LMHeadModel

    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.datasets import read_poem_ids

    lm = TFGPT2LMHeadModel.from_pretrained(str(run_dir / "export"))
    n_ctx = lm.config.n_positions
    poems = read_poem_ids(load_manifest(data_dir), "valid")
    total, count = direct_loss(lm, poems, n_ctx, n_ctx // 2)
    v = cli_report["validation"]
    assert v["tokens"] == count and v["stride"] == n_ctx // 2
    assert abs(v["loss"] - total / count) < 1e-4
    # and it is what training reported for the same weights (fp32 run, epoch-end validation)
    state = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))
    assert abs(v["loss"] - state["history"][-1]["val_loss"]) < 1e-4


@pytest.mark.slow
def test_validation_loss_scores_long_poems_in_sliding_windows(tmp_path):
    """Poems 2–3× the context: the loss is the direct per-token cross-entropy, each token once.

    With stride 1 every token has all the context the model can take (``n_ctx − 1`` tokens); with
    the default stride (half the context) at least half of it.
    """
    from poetry_gpt.config import ModelConfig
    from poetry_gpt.eval.evaluate import validation_loss
    from poetry_gpt.model.gpt2 import build_model
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.datasets import read_poem_ids
    from poetry_gpt.train.loop import set_precision
    from poetry_gpt.data.vocab import CharVocab

    n_ctx = 16
    data = make_data(tmp_path, n=30)
    manifest, vocab = load_manifest(data), CharVocab.load(data)
    poems = read_poem_ids(manifest, "valid")
    assert min(len(p) + 1 for p in poems) > 2 * n_ctx
    set_precision("fp32")
    lm = build_model(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_ctx=n_ctx), vocab, seed=5)
    for stride in (None, 1):
        v = validation_loss(lm, manifest, vocab, 4, n_ctx, **({} if stride is None else {"stride": stride}))
        total, count = direct_loss(lm, poems, n_ctx, n_ctx // 2 if stride is None else stride)
        assert v["tokens"] == count == sum(len(p) for p in poems)
        assert v["loss"] == pytest.approx(total / count, rel=1e-6), stride


@pytest.mark.slow
def test_corpus_and_held_out_figures_are_poem_metrics_of_the_splits(cli_report, data_dir):
    train = split_bodies(data_dir, "train")
    expected = poem_metrics.corpus_figures(train)
    corpus = cli_report["corpus"]
    assert {k: corpus[k] for k in expected} == pytest.approx(expected)
    assert corpus["train_poems"] == len(train) and corpus["sampled"] is False
    valid = split_bodies(data_dir, "valid")
    refs = [valid[i] for i in prompt_order(len(valid), N_SAMPLES)]
    expected = poem_metrics.sample_figures([("【" + b + "】", True) for b in refs], train)
    assert {k: cli_report["held_out"][k] for k in expected} == pytest.approx(expected)
    # 格律: the metre block of each (the random quatrains rhyme rarely and pass the tone check less)
    assert cli_report["corpus"]["metre"] == json.loads(json.dumps(poem_metrics.metre_block(train)))
    assert cli_report["held_out"]["metre"] == json.loads(json.dumps(poem_metrics.metre_block(refs)))
    for block in ("samples", "held_out", "corpus"):
        metre = cli_report[block]["metre"]
        assert {"pingshui_rhyme_rate", "pass_standard", "pass_strict", "tone_accuracy"} <= set(metre)
        assert "format_accuracy" not in metre  # no title heads 20 poems: no 词牌


def test_metre_block_of_known_poems():
    from poetry_gpt.verse.cipai import learn_patterns

    chunwang = "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。"
    jingyesi = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    ci = "一曲新词酒一杯。去年天气旧亭台。夕阳西下几时回。无可奈何花落去，似曾相识燕归来。小园香径独徘徊。"
    patterns = learn_patterns([("浣溪沙", ci)] * 20)
    block = poem_metrics.metre_block([chunwang, jingyesi, ci, ci[:-8]], ["春望", "静夜思", "浣溪沙", "浣溪沙"], patterns)
    assert block["regular"] == 2 and block["pass_standard"] == 0.5 and block["pingshui_rhyme_rate"] == 1.0
    by_position = {f: v["by_position"] for f, v in block["tone_accuracy"].items()}
    assert set(by_position) == {"五绝", "五律"} and by_position["五律"][1] == by_position["五律"][3] == 1.0
    assert by_position["五律"][0] < 1.0  # 一三五不论: 春望 frees some first characters
    assert block["format_accuracy"] == {"poems": 2, "share": 0.5}


@pytest.mark.slow
def test_sample_figures_match_the_examples_and_the_prompts(cli_report, data_dir, generator):
    """The samples are the generator's for the held-out prompts and seeds seed..seed+N-1; figures recomputed."""
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.datasets import read_poem_ids

    vocab = generator.vocab
    lines = [vocab.decode(ids) for ids in read_poem_ids(load_manifest(data_dir), "valid")]
    prompts = [line.partition("【")[0] + "【" for line in lines]
    prompts = [prompts[i] for i in prompt_order(len(prompts), N_SAMPLES)]
    drawn = generator.generate(prompts, num_samples=1, seed=3, batch_size=16,  # the default sampling
                               max_new_tokens=cli_report["samples"]["max_new_tokens"])
    assert [s.text for s in drawn[:5]] == [e["text"] for e in cli_report["examples"]]
    train = split_bodies(data_dir, "train")
    expected = poem_metrics.sample_figures([(s.text, s.closed) for s in drawn], train)
    assert {k: cli_report["samples"][k] for k in expected} == pytest.approx(expected)
    for n in (1, 2):  # the corpus's distinct-n at the samples' size: as many n-grams as the samples hold
        grams = poem_metrics.ngram_count([s.body for s in drawn], n)
        assert cli_report["corpus"][f"distinct_{n}_at_sample_size"] == pytest.approx(
            poem_metrics.distinct_n_at_size(train, n, grams))


@pytest.mark.slow
def test_same_seed_same_report_and_data_override(cli_report, run_dir, data_dir, generator, tmp_path):
    from poetry_gpt.eval.evaluate import evaluate

    def stable(report):
        out = {k: v for k, v in report.items() if k not in ("seconds", "validation", "samples")}
        out["validation"] = {k: v for k, v in report["validation"].items() if k != "seconds"}
        out["samples"] = {k: v for k, v in report["samples"].items() if k not in ("seconds", "tokens_per_second")}
        return out

    again = evaluate(run_dir, samples=N_SAMPLES, seed=3, generator=generator)
    assert stable(again) == stable(cli_report)
    other = evaluate(run_dir, samples=N_SAMPLES, seed=4, generator=generator)
    assert [e["seed"] for e in other["examples"]] == [4, 5, 6, 7, 8]
    assert [e["text"] for e in other["examples"]] != [e["text"] for e in cli_report["examples"]]
    # the sampling options reach the sampler: greedy with a strong repetition penalty is its own poem set
    greedy = evaluate(run_dir, samples=N_SAMPLES, seed=3, top_k=1, repetition_penalty=3.0, generator=generator)
    assert greedy["options"]["top_k"] == 1 and greedy["options"]["repetition_penalty"] == 3.0
    expected = generator.generate([e["text"].partition("【")[0] + "【" for e in greedy["examples"]], top_k=1,
                                  repetition_penalty=3.0, seed=3, max_new_tokens=greedy["samples"]["max_new_tokens"])
    assert [e["text"] for e in greedy["examples"]] == [x.text for x in expected]
    # --data: other poems with the run's vocabulary
    other_data = make_data(tmp_path / "same-vocab", n=60, seed=7, vocab_dir=data_dir)
    moved = evaluate(run_dir, other_data, samples=N_SAMPLES, seed=3, generator=generator)
    assert moved["data"]["path"] == str(other_data.resolve())
    assert not moved["data"]["recorded_in_run"] and not moved["data"]["same_data_as_run"]
    assert moved["corpus"]["train_poems"] == len(split_bodies(other_data, "train"))
    assert moved["validation"]["loss"] != cli_report["validation"]["loss"]


# --- refusals ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_refuses_data_with_another_vocabulary(run_dir, tmp_path):
    other = make_data(tmp_path / "other", n=40, chars=OTHER_CHARS)
    result = invoke(["eval", "--run", str(run_dir), "--data", str(other), "--samples", "2"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --data") and "vocab" in lines[0]
    from poetry_gpt.eval.evaluate import evaluate

    with pytest.raises(RunDirError):
        evaluate(run_dir, other, samples=2)


@pytest.mark.parametrize("args, needle", [
    (["--samples", "0"], "--samples"),
    (["--top-k", "0"], "--top-k"),
    (["--batch-size", "0"], "--batch-size"),
    (["--corpus-poems", "-1"], "--corpus-poems"),
    (["--temperature", "0"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--repetition-penalty", "-1"], "--repetition-penalty"),
    (["--min-p", "1"], "--min-p"),
])
def test_bad_options_are_one_line(tmp_path, args, needle):
    result = invoke(["eval", "--run", str(tmp_path), *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {needle}:")


def test_missing_run_and_foreign_folder(tmp_path):
    result = invoke(["eval", "--run", str(tmp_path / "nope")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "no such RUN_DIR" in result.output
    (tmp_path / "x.txt").write_text("x")
    result = invoke(["eval", "--run", str(tmp_path)])
    assert result.exit_code == 1 and "run.json" in result.output and len(result.output.strip().splitlines()) == 1


def test_out_in_a_missing_folder_fails_first(tmp_path):
    result = invoke(["eval", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "no" / "r.json")])
    assert result.exit_code == 1 and "--out" in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_recorded_data_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": {"path": str(tmp_path / "gone"), "hash": "x"},
                                              "vocab": {"hash": "y", "size": 3}}))
    result = invoke(["eval", "--run", str(run)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--data" in result.output and "gone" in result.output


# --- pure helpers -----------------------------------------------------------------------------

def test_held_out_prompts_cycle_and_skip():
    poems = [("春晓", "唐诗", "a"), ("\ufffd月", "唐诗", "b"), ("长" * 30, "唐诗", "c"), ("", "宋词", "d")]
    prompts, bodies, info = held_out_prompts(poems, 5, n_ctx=64)
    first = prompts[0]
    assert sorted(prompts[:2]) == ["宋词：【", "春晓 唐诗：【"] and prompts[2:] == prompts[:2] + [first]  # cycled
    assert bodies == [{"春晓 唐诗：【": "a", "宋词：【": "d"}[p] for p in prompts]
    assert info == {"usable": 2, "skipped": {"unknown_chars": 1, "too_long": 1}, "cycled": True}
    with pytest.raises(DataDirError):
        held_out_prompts(poems[1:3], 1, n_ctx=64)


def test_prompt_order_is_a_fixed_shuffle_of_the_whole_split():
    order = prompt_order(1000, 100)
    assert order == prompt_order(1000, 100) and len(set(order)) == 100
    assert max(order) > 500  # drawn from the whole split, not its first poems
    assert order != list(range(100)) and prompt_order(1000, 100, seed=1) != order
    assert sorted(prompt_order(7, 7)) == list(range(7)) and prompt_order(7, 9)[7:] == prompt_order(7, 9)[:2]


def test_corpus_sample_is_fixed_and_ordered():
    bodies = [str(i) for i in range(100)]
    assert corpus_sample(bodies, 0) == (bodies, False) and corpus_sample(bodies, 100) == (bodies, False)
    chosen, sampled = corpus_sample(bodies, 10)
    assert sampled and len(chosen) == 10 and chosen == corpus_sample(bodies, 10)[0]
    assert [int(b) for b in chosen] == sorted(int(b) for b in chosen)


def test_perplexity_guard():
    assert perplexity(1.0) == pytest.approx(math.e)
    assert perplexity(1000.0) is None and perplexity(float("nan")) is None and perplexity(None) is None


def test_check_options_library():
    from poetry_gpt.eval.evaluate import check_eval_options

    with pytest.raises(OptionError, match="--samples"):
        check_eval_options(samples=0)
