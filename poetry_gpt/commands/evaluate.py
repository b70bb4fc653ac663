"""``poetry-gpt eval``: one JSON report on a trained run (see ``poetry_gpt.eval.evaluate``).

The library checks the options and raises one-line errors; the JSON goes to stdout (and
``--out``), progress to stderr. TensorFlow is imported only when the command runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..eval.evaluate import DEFAULT_BATCH_SIZE, DEFAULT_CORPUS_POEMS, DEFAULT_EXAMPLES, DEFAULT_SAMPLES, DEFAULT_SEED
from .options import sampling_options

EVAL_SAMPLING_OPTIONS = ("seed", "top_k", "top_p", "min_p", "temperature", "repetition_penalty", "batch_size")


@click.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=str),
              help="RUN_DIR written by `poetry-gpt train` (its export/ is evaluated).")
@click.option("--data", "data_dir", default=None, type=click.Path(path_type=str),
              help="DATA_DIR with the run's vocabulary  [default: the DATA_DIR recorded in the run's run.json]")
@click.option("--samples", type=int, default=DEFAULT_SAMPLES, show_default=True,
              help="Poems to sample, prompted with titles of held-out poems (≥ 1).")
@sampling_options(EVAL_SAMPLING_OPTIONS,
                  seed=dict(default=DEFAULT_SEED, show_default=True, help="Seed of the first sample (sample i uses seed+i)."),
                  batch_size=dict(default=DEFAULT_BATCH_SIZE,
                                  help="Rows per batch for the validation loss and the sampling (≥ 1)."))
@click.option("--corpus-poems", type=int, default=DEFAULT_CORPUS_POEMS, show_default=True,
              help="Training poems for the corpus figures: a fixed random sample of this many (0 = all).")
@click.option("--examples", type=int, default=DEFAULT_EXAMPLES, show_default=True,
              help="Samples shown verbatim in the report.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the report to this file.")
def eval_cmd(run_dir, data_dir, samples, corpus_poems, examples, out, **values):
    """Validation loss and poem-quality figures of a run, next to its corpus's own, as one JSON report.

    \b
    validation  cross-entropy (nats/char) and perplexity on the validation split
    samples     closed with 】, regular (by form), rhyme, distinct-1/2, copy rates of
                N poems sampled from held-out titles (`title 体裁：【`)
    held_out    the same figures for the held-out poems those titles came from
    corpus      the same figures for the training split
    """
    from ..eval.evaluate import check_eval_options, evaluate
    from ..fsutil import atomic_write_text

    config = check_eval_options(samples, corpus_poems, examples, **values)  # before TensorFlow loads
    if out and not Path(out).resolve().parent.is_dir():
        raise click.ClickException(f"--out {out}: the folder {Path(out).resolve().parent} does not exist; create it first")
    report = evaluate(run_dir, data_dir, samples=samples, corpus_poems=corpus_poems, examples=examples,
                      sampling=config, echo=lambda s: click.echo(s, err=True))
    text = json.dumps(report, ensure_ascii=False, indent=2)
    if out:
        try:
            atomic_write_text(out, text + "\n")
        except OSError as exc:
            raise click.ClickException(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    click.echo(text)
