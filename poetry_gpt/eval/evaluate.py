"""``poetry-gpt eval``: validation loss and poem-quality figures of a trained run, next to its corpus's.

One report (a JSON-ready dict, see ``evaluate``) with:

* ``validation``: the poem-level cross-entropy per character (nats) and perplexity on the
  DATA_DIR's validation split, computed as training's validation is (``datasets.eval_dataset``
  rows: ``[SEP]`` + poem, padded, pads ignored, a poem longer than the context in sliding windows
  that predict each character once with at least half the context; float32 compute, one XLA
  program; the sum of all token losses divided by the number of tokens, not a mean of batch means).
* ``samples``: N unconstrained samples (top-k) prompted corpus-style with the titles and genres of
  held-out (validation) poems, ``title 体裁：【`` (cycling when there are fewer than N), and their
  figures from ``poem_metrics.sample_figures``: share closed with 】, share regular (overall and by
  form), rhyme rate of the regular ones, distinct-1/2, and the copy rates against the training split.
* ``held_out``: the same figures for the real held-out poems those prompts came from (one per
  sample, so the same amount of text: distinct-n depends on how much text it is computed over,
  and the copy rate of unseen real poems is the natural floor for a model's).
* ``corpus``: ``poem_metrics.corpus_figures`` of the training split (all of it, or a deterministic
  random sample of ``corpus_poems`` poems, as the block says), plus ``distinct_{1,2}_at_sample_size``:
  the corpus's distinct-n over random poems holding as many n-grams as the samples do
  (``poem_metrics.distinct_n_at_size``), the fair yardstick for the samples' distinct-n.

The model evaluated is the run's ``export/`` (the weights of the last finished epoch).
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Callable

from .. import __version__
from ..data.corpus import parse_line, prompt_prefix
from ..data.datasets import IGNORE_INDEX, eval_dataset, eval_stride, read_poem_ids
from ..data.manifest import Manifest
from ..data.vocab import CharVocab
from ..errors import DataDirError, Rule, RunDirError, check_rules
from ..generate.generator import PoemGenerator
from ..run_dir import RunDir, data_manifest, open_run
from ..sampling import SamplingConfig
from ..train.trainer import perplexity
from ..verse import poem_metrics
from ..verse.forms import CLOSE, OPEN

# a share from 300 samples has a standard error of at most 2.9 points (100: 5)
DEFAULT_SAMPLES = 300
DEFAULT_BATCH_SIZE = 16
DEFAULT_SEED = 0
PROMPT_ORDER_SEED = 0  # which held-out titles prompt the samples (fixed: independent of --seed)
DEFAULT_CORPUS_POEMS = 5000
DEFAULT_EXAMPLES = 5
CORPUS_SAMPLE_SEED = 0  # the corpus sample does not change with --seed
MIN_CLAUSE_LEN = 5  # copy rate: clauses of at least this many characters
UNK_CHAR = "\ufffd"  # [UNK] decoded as one character, so clause lengths stay right


#: the options of ``evaluate`` beyond the sampling ones, checked first
EVAL_RULES = (
    Rule("samples", "--samples", lambda v: v >= 1, "must be ≥ 1"),
    Rule("corpus_poems", "--corpus-poems", lambda v: v >= 0, "must be ≥ 0 (0 = all training poems)"),
    Rule("examples", "--examples", lambda v: v >= 0, "must be ≥ 0"),
)
#: eval's sampling defaults: ``SamplingConfig``'s, with a fixed seed and larger batches
EVAL_SAMPLING = SamplingConfig(seed=DEFAULT_SEED, batch_size=DEFAULT_BATCH_SIZE)


def check_eval_options(samples: int = DEFAULT_SAMPLES, corpus_poems: int = DEFAULT_CORPUS_POEMS,
                       examples: int = DEFAULT_EXAMPLES, sampling: SamplingConfig | None = None,
                       **options) -> SamplingConfig:
    """Check the options of ``evaluate``: its own (``EVAL_RULES``), then the sampling ones as ``generate`` does.

    Args:
        samples: ≥ 1.
        corpus_poems: ≥ 0.
        examples: ≥ 0.
        sampling: the sampling options (default ``EVAL_SAMPLING``).
        **options: ``SamplingConfig`` fields replacing those of ``sampling``.

    Returns:
        The checked ``SamplingConfig``.

    Raises:
        OptionError: naming the first bad option and its valid range.
    """
    check_rules(EVAL_RULES, {"samples": samples, "corpus_poems": corpus_poems, "examples": examples})
    return SamplingConfig.of(sampling or EVAL_SAMPLING, **options)


# --- the run and its data --------------------------------------------------------------------

def resolve_data(run: RunDir, info: dict, data_dir: str | os.PathLike | None) -> tuple[Manifest, CharVocab]:
    """The DATA_DIR to evaluate on (``data_dir``, else the one recorded in run.json) and its vocabulary.

    Raises:
        DataDirError: the DATA_DIR is missing or incomplete.
        RunDirError: its vocabulary is not the run's.
    """
    manifest = data_manifest(run, data_dir)
    run_hash = info["vocab"].get("hash")
    if manifest.vocab_hash != run_hash:
        raise RunDirError(f"--data {manifest.path}: its vocabulary ({manifest.vocab_size} tokens) is not the run's "
                          f"({info['vocab'].get('size')} tokens, vocab hash differs); pass a DATA_DIR prepared "
                          f"with `poetry-gpt prepare ... --vocab {run.path}`")
    vocab = manifest.load_vocab()
    return manifest, vocab


def read_split_lines(manifest: Manifest, vocab: CharVocab, split: str) -> list[str]:
    """The poems of a split as corpus lines (``title 体裁：【body】``), in file order; [UNK] as U+FFFD."""
    tokens = list(vocab.tokens)
    tokens[vocab.unk_id] = UNK_CHAR
    return ["".join(tokens[i] for i in ids) for ids in read_poem_ids(manifest, split)]


def parse_lines(lines: list[str]) -> list[tuple[str, str, str]]:
    """``(title, genre, body)`` of each line that parses (prepare wrote only lines that do)."""
    out = []
    for line in lines:
        parsed = parse_line(line)
        if isinstance(parsed, tuple):
            out.append(parsed)
    return out


# --- validation loss -------------------------------------------------------------------------

def validation_loss(lm, manifest: Manifest, vocab: CharVocab, batch_size: int, n_ctx: int,
                    stride: int | None = None, tuning=None) -> dict:
    """Token-mean cross-entropy of ``lm`` on the validation split, as training's ``test_step`` computes it.

    Args:
        lm: a ``TFGPT2LMHeadModel``.
        manifest: the DATA_DIR.
        vocab: its vocabulary (pad and sep ids).
        batch_size: rows per batch (does not change the result beyond float rounding).
        n_ctx: tokens per row (the model's context).
        stride: window stride for poems longer than the context (default ``datasets.eval_stride``).
        tuning: the ``model.peft.Tuning`` the model is computed with (an adapter/prefix export), or None.

    Returns:
        ``loss`` (nats per character; None when the split has no tokens), ``perplexity``, ``tokens``,
        ``rows``, ``poems``, ``dtype``, ``stride``, ``seconds``.
    """
    import tensorflow as tf

    from ..model.fast_forward import lm_loss_terms

    @tf.function(jit_compile=True)  # every batch has the same shape: one XLA program
    def terms(input_ids, labels):
        loss_sum, n = lm_loss_terms(lm, input_ids, labels, training=False, compute_dtype=tf.float32,
                                    tuning=tuning)
        used_rows = tf.reduce_sum(tf.cast(tf.reduce_any(labels != IGNORE_INDEX, axis=1), tf.int32))
        return loss_sum, n, used_rows

    t0 = time.perf_counter()
    total, count, rows = 0.0, 0.0, 0
    stride = eval_stride(n_ctx) if stride is None else stride
    for batch in eval_dataset(manifest, batch_size, n_ctx, pad_id=vocab.pad_id, sep_id=vocab.sep_id, stride=stride):
        loss_sum, n, used = terms(batch["input_ids"], batch["labels"])
        total += float(loss_sum.numpy())  # float32 per batch, accumulated in float64
        count += float(n.numpy())
        rows += int(used.numpy())
    loss = total / count if count else None
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": int(count), "rows": rows,
            "poems": manifest.poems("valid"), "dtype": "float32", "batch_size": batch_size, "n_ctx": n_ctx,
            "stride": stride, "seconds": round(time.perf_counter() - t0, 2)}


# --- prompts ---------------------------------------------------------------------------------

def held_out_prompts(poems: list[tuple[str, str, str]], n: int, n_ctx: int) -> tuple[list[str], list[str], dict]:
    """``n`` corpus-style prompts ``title 体裁：【`` from held-out poems, in a fixed random order, cycled.

    The order (``prompt_order``) is random so that the prompts represent the whole split, not
    its first poems (a corpus in collection order starts with one kind of poem: 全唐诗 with
    emperors' poems and ritual hymns), and fixed so that runs and seeds see the same prompts.
    A poem is skipped as a prompt when its title or genre holds a character the vocabulary lacks
    (decoded as U+FFFD) or when its prompt would take more than a quarter of the context.

    Args:
        poems: ``(title, genre, body)`` of the validation split.
        n: how many prompts.
        n_ctx: the model's context.

    Returns:
        ``(prompts, bodies, info)``: the prompts, the body of the poem each came from, and counts
        (``usable`` poems, ``skipped`` ones by reason, ``cycled``).

    Raises:
        DataDirError: no validation poem gives a usable prompt.
    """
    usable, skipped = [], {"unknown_chars": 0, "too_long": 0}
    for title, genre, body in poems:
        prompt = prompt_prefix(title, genre)
        if UNK_CHAR in prompt:
            skipped["unknown_chars"] += 1
        elif 1 + len(prompt) > n_ctx // 4:
            skipped["too_long"] += 1
        else:
            usable.append((prompt, body))
    if not usable:
        raise DataDirError(f"no validation poem gives a usable prompt ({len(poems)} poems; skipped: "
                           f"{skipped['unknown_chars']} with unknown characters, {skipped['too_long']} with a "
                           f"title longer than a quarter of the {n_ctx}-token context)")
    chosen = [usable[i] for i in prompt_order(len(usable), n)]
    info = {"usable": len(usable), "skipped": skipped, "cycled": n > len(usable)}
    return [p for p, _ in chosen], [b for _, b in chosen], info


def prompt_order(usable: int, n: int, seed: int = PROMPT_ORDER_SEED) -> list[int]:
    """Indices of the ``n`` prompts among ``usable`` ones: a seeded shuffle, cycled when n > usable.

    Args:
        usable: how many usable prompts there are (≥ 1).
        n: how many to take.
        seed: the shuffle's seed.
    """
    order = list(range(usable))
    random.Random(seed).shuffle(order)
    return [order[i % usable] for i in range(n)]


def corpus_sample(bodies: list[str], limit: int, seed: int = CORPUS_SAMPLE_SEED) -> tuple[list[str], bool]:
    """All ``bodies`` (limit 0 or ≥ their number) or a random sample of ``limit`` of them, in corpus order.

    Returns:
        ``(bodies, sampled)``.
    """
    if not limit or limit >= len(bodies):
        return list(bodies), False
    keep = sorted(random.Random(seed).sample(range(len(bodies)), limit))
    return [bodies[i] for i in keep], True


def _clean(value):
    """JSON-safe: non-finite floats become None (JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# --- the report ------------------------------------------------------------------------------

def evaluate(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
             samples: int = DEFAULT_SAMPLES, corpus_poems: int = DEFAULT_CORPUS_POEMS,
             examples: int = DEFAULT_EXAMPLES, sampling: SamplingConfig | None = None,
             echo: Callable[[str], None] | None = None, generator=None, **options) -> dict:
    """Evaluate a trained run: validation loss, sample figures, held-out and corpus figures.

    Args:
        run_dir: the RUN_DIR (its ``export/`` is evaluated).
        data_dir: the DATA_DIR (default: the one recorded in run.json); its vocabulary must be the run's.
        samples: how many poems to sample (≥ 1).
        corpus_poems: training poems for the ``corpus`` figures (0 = all; else a fixed random sample).
        examples: how many samples to include verbatim.
        sampling: how to sample (default ``EVAL_SAMPLING``: seed 0, batch 16); its ``batch_size`` is also
            the validation loss's rows per batch; ``num_samples`` and ``max_new_tokens`` are eval's own.
        echo: progress messages (e.g. to stderr); None is silent.
        generator: a ``PoemGenerator`` already loaded from this run (to reuse its compiled sampler).
        **options: ``SamplingConfig`` fields replacing those of ``sampling`` (``seed=3``, ``top_k=1``, …).

    Returns:
        The report (JSON-ready; non-finite numbers are None).

    Raises:
        OptionError, RunDirError, DataDirError: one-line explanations.
    """
    say = echo or (lambda _s: None)
    config = check_eval_options(samples, corpus_poems, examples, sampling, **options)
    batch_size, seed = config.batch_size, config.seed
    started = time.perf_counter()
    run, _ = open_run(run_dir, "read")  # refused unless run.json records the data and vocabulary
    info = run.read_run()
    manifest, vocab = resolve_data(run, info, data_dir)
    state = run.read_state()

    generator = _generator_for(run, manifest, generator, say)
    n_ctx = generator.n_ctx

    say(f"Validation loss on {manifest.poems('valid')} held-out poems …")
    validation = validation_loss(generator.model, manifest, vocab, batch_size, n_ctx,
                                 tuning=generator.export.tuning)

    say("Reading the splits …")
    valid_poems = parse_lines(read_split_lines(manifest, vocab, "valid"))
    train_poems = parse_lines(read_split_lines(manifest, vocab, "train"))
    index = poem_metrics.CopyIndex([body for _, _, body in train_poems], MIN_CLAUSE_LEN)
    patterns = manifest.data.get("cipai") or generator.cipai

    say(f"Sampling {samples} poems (top-k {config.top_k}, seed {seed}) …")
    drawn, sample_block, held_out = _sample_blocks(generator, config, valid_poems, samples, index, patterns)
    say("Corpus figures …")
    corpus_block = _corpus_block(train_poems, corpus_poems, patterns, [s.body for s in drawn])

    meta = generator.export.meta or {}
    report = {
        "version": __version__,
        "run": str(run.path.resolve()),
        "export": str(Path(generator.export.path).resolve()),
        "global_step": state.get("global_step"),
        "epoch": state.get("epoch"),
        "export_step": meta.get("global_step"),
        "data": {
            "path": str(Path(manifest.path).resolve()),
            "hash": manifest.hash,
            "recorded_in_run": data_dir is None,
            "same_data_as_run": manifest.hash == info["data"].get("hash"),
            "train_poems": manifest.poems("train"),
            "valid_poems": manifest.poems("valid"),
        },
        "options": {"samples": samples, "seed": seed, "top_k": config.top_k, "top_p": config.top_p,
                    "temperature": config.temperature, "repetition_penalty": config.repetition_penalty,
                    "min_p": config.min_p, "batch_size": batch_size,
                    "corpus_poems": corpus_poems, "min_clause_len": MIN_CLAUSE_LEN, "examples": examples},
        "validation": validation,
        "samples": sample_block,
        "held_out": held_out,
        "corpus": corpus_block,
        "examples": [{"text": s.text, "closed": s.closed, "form": _form_name(s), "seed": s.seed}
                     for s in drawn[:examples]],
        "seconds": round(time.perf_counter() - started, 2),
    }
    return _clean(report)


def _generator_for(run: RunDir, manifest: Manifest, generator, say: Callable[[str], None]):
    """The run's ``PoemGenerator`` (loaded unless given), checked against the DATA_DIR's vocabulary."""
    if generator is None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        say(f"Loading {run.export} …")
        generator = PoemGenerator(run.path)
    if generator.vocab.hash != manifest.vocab_hash:
        raise RunDirError(f"{generator.export.path}: the export's vocabulary is not the DATA_DIR's "
                          f"({manifest.path}); re-export the run with `poetry-gpt train --run {run.path}`")
    return generator


def _sample_blocks(generator, config: SamplingConfig, valid_poems: list, samples: int, index,
                   patterns: dict) -> tuple[list, dict, dict]:
    """Sample one poem per held-out title; the figures of the samples and of the poems they stand beside.

    Args:
        generator: the run's ``PoemGenerator``.
        config: the sampling configuration.
        valid_poems: ``parse_lines`` of the validation split.
        samples: how many poems to sample.
        index: the training poems' ``CopyIndex``.
        patterns: the 词牌 patterns of the corpus.

    Returns:
        ``(drawn samples, samples block, held_out block)``.
    """
    prompts, ref_bodies, prompt_info = held_out_prompts(valid_poems, samples, generator.n_ctx)
    max_new = generator.n_ctx - 1 - max(len(p) for p in prompts)
    t0 = time.perf_counter()
    drawn = generator.generate(prompts, sampling=config.replace(num_samples=1, max_new_tokens=max_new))
    seconds = time.perf_counter() - t0
    tokens = sum(s.tokens for s in drawn)
    block = poem_metrics.sample_figures([(s.text, s.closed) for s in drawn], index)
    titles = [s.text.partition("：" + OPEN)[0].rpartition(" ")[0] for s in drawn]
    block["metre"] = poem_metrics.metre_block([s.body if s.closed else "" for s in drawn], titles, patterns)
    block.update({
        "prompts": "titles and genres of held-out poems: `title 体裁：【`",
        "prompt_poems": prompt_info,
        "max_new_tokens": max_new,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
    })
    held_out = poem_metrics.sample_figures([(OPEN + b + CLOSE, True) for b in ref_bodies], index)
    held_out["what"] = "the held-out poems whose titles prompted the samples, one per sample"
    held_out["metre"] = poem_metrics.metre_block(ref_bodies, titles, patterns)
    return drawn, block, held_out


def _corpus_block(train_poems: list, corpus_poems: int, patterns: dict, sample_bodies: list[str]) -> dict:
    """The figures of the training poems (all, or a fixed sample of ``corpus_poems``).

    Args:
        train_poems: ``parse_lines`` of the training split.
        corpus_poems: how many (0 = all).
        patterns: the 词牌 patterns of the corpus.
        sample_bodies: the samples' bodies (distinct-n is also given at their size).
    """
    train_bodies = [body for _, _, body in train_poems]
    chosen, sampled = corpus_sample(train_bodies, corpus_poems)
    block = poem_metrics.corpus_figures(chosen)
    train_titles = {body: title for title, _, body in train_poems}
    block["metre"] = poem_metrics.metre_block(chosen, [train_titles.get(b, "") for b in chosen], patterns)
    for n in (1, 2):  # distinct-n depends on the text's size: the corpus at the samples' size
        block[f"distinct_{n}_at_sample_size"] = poem_metrics.distinct_n_at_size(
            chosen, n, poem_metrics.ngram_count(sample_bodies, n))
    block.update({
        "split": "train",
        "train_poems": len(train_bodies),
        "sampled": sampled,
        "sample": (f"a fixed random sample of {len(chosen)} of the {len(train_bodies)} training poems "
                   f"(seed {CORPUS_SAMPLE_SEED})") if sampled else f"all {len(train_bodies)} training poems",
    })
    return block


def _form_name(sample) -> str | None:
    from ..verse.forms import check

    return check(sample.body).form if sample.closed else None
