"""``poetry-gpt prepare`` and ``poetry-gpt corpus stats``."""
from __future__ import annotations

import json

import click

from ..config import DataConfig

_DEFAULTS = DataConfig()
PROGRESS_DELAY_S = 0.5  # the progress bar appears only after this long


def _data_options(f):
    """Options shared by ``prepare`` and ``corpus stats`` (reading and vocabulary)."""
    f = click.option("--max-chars", type=int, default=_DEFAULTS.max_chars, show_default=True,
                     help="Skip (and count) lines longer than this many characters.")(f)
    f = click.option("--min-count", type=int, default=_DEFAULTS.min_count, show_default=True,
                     help="Characters seen fewer times become [UNK].")(f)
    f = click.option("--keep-duplicates", is_flag=True,
                     help="Keep poems whose body repeats an earlier poem (skipped by default).")(f)
    f = click.option("--context", "n_ctx", type=click.IntRange(min=1), default=128, show_default=True,
                     help="Model context, for counting poems longer than it (use your preset's n_ctx).")(f)
    return f


@click.command("prepare")
@click.argument("raw", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=str),
              help="The DATA_DIR to create (vocabulary, TFRecord shards, manifest.json).")
@click.option("--vocab", "vocab_dir", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Reuse the vocabulary of this DATA_DIR / RUN_DIR export / BERT-style checkpoint folder "
                   "(for fine-tuning).")
@click.option("--extend-vocab", is_flag=True,
              help="With --vocab: append the characters it lacks (ids after the base's) instead of [UNK].")
@click.option("--valid-fraction", type=float, default=_DEFAULTS.valid_fraction, show_default=True,
              help="Share of poems held out for validation.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seed of the train/validation split.")
@click.option("--shard-poems", type=int, default=_DEFAULTS.shard_poems, show_default=True, help="Poems per TFRecord shard.")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty DATA_DIR (only once the new one is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")
@_data_options
def prepare_cmd(raw, out_dir, vocab_dir, extend_vocab, valid_fraction, seed, shard_poems, overwrite, as_json,
                max_chars, min_count, keep_duplicates, n_ctx):
    """Turn RAW raw.txt file(s) into a character vocabulary and TFRecords in --out."""
    from tqdm import tqdm

    from ..data.diagnostics import format_report
    from ..data.prepare import prepare

    config = DataConfig(valid_fraction=valid_fraction, seed=seed, min_count=min_count, max_chars=max_chars,
                        keep_duplicates=keep_duplicates, shard_poems=shard_poems)
    # delay: a refused --out or RAW fails within it, so its error is not preceded by an empty bar
    with tqdm(desc="writing poems", unit=" poems", disable=as_json, leave=False, delay=PROGRESS_DELAY_S) as bar:
        result = prepare(raw, out_dir, config, vocab_dir=vocab_dir, overwrite=overwrite, n_ctx=n_ctx,
                         progress=bar.update, extend_vocab=extend_vocab)
    if as_json:
        click.echo(json.dumps(result.manifest, ensure_ascii=False, indent=2))
        return
    click.echo(format_report(result.report))
    base = result.manifest.get("vocab_base")
    if base:
        click.echo(f"Extended the vocabulary of {vocab_dir} ({base['size']} tokens) with "
                   f"{result.manifest['vocab']['size'] - base['size']} new character(s).")
    splits = result.manifest["splits"]
    click.echo(f"Wrote {result.data_dir}/: vocabulary ({result.manifest['vocab']['size']} tokens, tokenizer.json, vocab.txt), "
               f"train {splits['train']['poems']} poems / {splits['train']['tokens']:,} chars in "
               f"{len(splits['train']['shards'])} shard(s), valid {splits['valid']['poems']} poems, manifest.json "
               f"({result.seconds:.2f} s, {result.report['characters'] / max(result.seconds, 1e-9) / 1e6:.1f}M chars/s "
               "without start-up).")


@click.command("stats")
@click.argument("raw", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")
@_data_options
def stats_cmd(raw, as_json, max_chars, min_count, keep_duplicates, n_ctx):
    """Print the corpus diagnostics of RAW without writing anything."""
    from ..data.diagnostics import format_report
    from ..data.prepare import read_only_report

    config = DataConfig(min_count=min_count, max_chars=max_chars, keep_duplicates=keep_duplicates)
    report = read_only_report(raw, config, n_ctx=n_ctx)
    click.echo(json.dumps(report, ensure_ascii=False, indent=2) if as_json else format_report(report))
