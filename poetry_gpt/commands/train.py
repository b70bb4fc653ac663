"""``poetry-gpt train`` and ``poetry-gpt pipeline``."""
from __future__ import annotations

import click

from ..config import (ATTENTIONS, EMBEDDING_UPDATE_METHODS, LORA_TARGETS, PRECISIONS, SCHEDULES, STRATEGIES,
                      TUNE_METHODS)

# option name -> (section, field)
_OVERRIDES = {
    "epochs": ("train", "epochs"), "steps_per_epoch": ("train", "steps_per_epoch"),
    "batch_size": ("train", "batch_size"), "learning_rate": ("train", "learning_rate"),
    "warmup_steps": ("train", "warmup_steps"), "schedule": ("train", "schedule"),
    "min_lr_ratio": ("train", "min_lr_ratio"), "weight_decay": ("train", "weight_decay"),
    "grad_clip": ("train", "grad_clip"), "precision": ("train", "precision"), "strategy": ("train", "strategy"),
    "batch_split": ("train", "batch_split"), "attention": ("train", "attention"),
    "seed": ("train", "seed"), "keep_checkpoints": ("train", "keep_checkpoints"),
    "checkpoint_every": ("train", "checkpoint_every"), "samples_per_epoch": ("train", "samples_per_epoch"),
    "dropout": ("model", "dropout"),
    "tune": ("tune", "method"), "adapter_size": ("tune", "adapter_size"), "prefix_length": ("tune", "prefix_length"),
    "lora_rank": ("tune", "lora_rank"), "lora_alpha": ("tune", "lora_alpha"), "lora_targets": ("tune", "lora_targets"),
    "lora_embedding_rank": ("tune", "lora_embedding_rank"), "embedding_rank": ("tune", "embedding_rank"),
}
# a size option -> the --tune methods it belongs to (given with another method, it is refused)
_TUNE_SIZES = {"adapter_size": ("adapter",), "prefix_length": ("prefix",), "lora_rank": ("lora",),
               "lora_alpha": ("lora",), "lora_targets": ("lora",), "lora_embedding_rank": ("lora",),
               "embedding_rank": EMBEDDING_UPDATE_METHODS}


def _tune_options(f):
    """``train``'s fine-tuning options (``--init-from`` + ``--tune``); unset ones keep the preset's or the run's."""
    opts = [
        click.option("--tune", type=click.Choice(TUNE_METHODS),
                     help="With --init-from: what trains. full = every weight [default]; bitfit = the biases; "
                          "adapter / prefix / lora = small added weights, the base frozen; bitfit, adapter and "
                          "prefix also a low-rank update of the embedding (--embedding-rank)."),
        click.option("--adapter-size", type=int, help="--tune adapter: the bottleneck width [default: 32]."),
        click.option("--prefix-length", type=int, help="--tune prefix: virtual positions per layer [default: 16]."),
        click.option("--lora-rank", type=int, help="--tune lora: the rank [default: 4]."),
        click.option("--lora-embedding-rank", type=int,
                     help="--tune lora: the rank of LoRA on wte (the embedding and tied head) [default: 12]."),
        click.option("--embedding-rank", type=int,
                     help="--tune bitfit/adapter/prefix: the rank of the update of the tied embedding (the input "
                          "embedding and the LM head) they also train; 0 = the method alone [default: 12]."),
        click.option("--lora-alpha", type=float, help="--tune lora: the update is scaled by alpha/rank [default: 16]."),
        click.option("--lora-targets", help=f"--tune lora: the matrices, comma-separated, among "
                                            f"{','.join(LORA_TARGETS)} [default: all of them]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _check_tune_sizes(values: dict, method: str) -> None:
    """Refuse a size option of another method than ``method`` (``--lora-rank`` with ``--tune adapter``).

    Args:
        values: the command line's option values.
        method: the ``--tune`` method the run uses.
    """
    from ..errors import OptionError

    for name, owners in _TUNE_SIZES.items():
        if values.get(name) is not None and method not in owners:
            listed = " or ".join(owners)
            raise OptionError(f"--{name.replace('_', '-')}: applies only to --tune {listed}, and this run tunes with "
                              f"{method}; drop it or pass --tune {owners[0]}")


def _train_options(f):
    """Options shared by ``train`` and ``pipeline``; unset ones keep the preset's (or the run's) value."""
    opts = [
        click.option("--config", "preset", default=None,
                     help="Preset from configs.py: tiny, small, base, medium [default: small; on resume: the run's]."),
        click.option("--epochs", type=int, help="Total epochs (a resumed run trains until this many are done)."),
        click.option("--max-time", help="Train for this long instead (90s, 30m, 2h, 1h30m): the decay is planned to "
                                        "end at the deadline (a new run: --schedule wsd unless given); --epochs is "
                                        "then no limit. Not remembered on resume."),
        click.option("--steps-per-epoch", type=int, help="Steps per epoch (0 = one pass over the training split)."),
        click.option("--batch-size", type=int, help="Sequences per step."),
        click.option("--learning-rate", type=float, help="Peak AdamW learning rate."),
        click.option("--warmup-steps", type=int, help="Linear warm-up steps."),
        click.option("--schedule", type=click.Choice(SCHEDULES),
                     help="Decay after warm-up (wsd: the peak, then a linear cool-down over the last 20%% of the "
                          "steps or of the --max-time budget)."),
        click.option("--min-lr-ratio", type=float, help="Final learning rate as a share of the peak."),
        click.option("--weight-decay", type=float, help="AdamW decoupled weight decay."),
        click.option("--grad-clip", type=float, help="Global-norm gradient clipping (0 = off)."),
        click.option("--precision", type=click.Choice(PRECISIONS), help="auto = bf16 where the CPU/GPU has it, else fp32."),
        click.option("--strategy", type=click.Choice(STRATEGIES), help="tf.distribute strategy."),
        click.option("--batch-split", type=int,
                     help="Compute each step's batch in N parts side by side, one core each (speed only; "
                          "0 = auto: one part per core, at most 4, on a CPU; 1 = the whole batch at once)."),
        click.option("--attention", type=click.Choice(ATTENTIONS),
                     help="What a packed training row's characters attend to: poem = their own poem only, positions "
                          "counted from its start, as when a poem is written [default]; row = the whole row."),
        click.option("--seed", type=int, help="Seed for initialisation and data order."),
        click.option("--keep-checkpoints", type=int, help="How many recent checkpoints to keep."),
        click.option("--checkpoint-every", type=int, help="Also checkpoint every N steps (0 = epoch ends only)."),
        click.option("--samples-per-epoch", type=int, help="Sample poems shown and saved after each epoch."),
        click.option("--dropout", type=float, help="Dropout (model shape: only for a new run)."),
        click.option("--overwrite", is_flag=True, help="Start over in a RUN_DIR that holds something."),
        click.option("--quiet", is_flag=True, help="One line per epoch instead of a progress bar."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _resolve(run_dir, preset, overwrite, values, max_time=None):
    from ..run_dir import resolve_config

    sections = {"model": {}, "train": {}, "tune": {}}
    for name, (section, field) in _OVERRIDES.items():
        if values.get(name) is not None:
            sections[section][field] = values[name]
    config = resolve_config(run_dir, preset, sections["model"], sections["train"], overwrite, sections["tune"],
                            timed=max_time is not None)
    _check_tune_sizes(values, config.tune.method)
    return config


def _report(result):
    last = result.history[-1] if result.history else {}
    click.echo(f"Trained to step {result.global_step} (epoch {result.epoch}) in {result.seconds:.0f} s, "
               f"{result.tokens_per_second:.0f} tokens/s. Run: {result.run_dir}/ (checkpoints/, export/, "
               f"samples/, logs/, trainer_state.json)"
               + (f"; val loss {last['val_loss']:.4f}" if last.get("val_loss") is not None else "") + ".")
    b = result.budget
    if b:
        why = {"decay": "the decay ended", "deadline": "the deadline came first"}.get(b["stopped_by"], "stopped")
        click.echo(f"Time budget {b['max_time']} (deadline {b['deadline'][11:]}): planned {b['planned_steps']} steps, "
                   f"reached {b['reached_steps']} ({why}) in {b['elapsed_seconds']:.0f} s; learning rate "
                   f"{last.get('learning_rate', float('nan')):.3g}.")


def _max_time(values) -> float | None:
    """``--max-time`` in seconds (None when not given); removes it from ``values``."""
    from ..train.budget import parse_duration

    text = values.pop("max_time", None)
    return None if text is None else parse_duration(text)


@click.command("train")
@click.option("--data", "data_dir", type=click.Path(path_type=str),
              help="DATA_DIR from `poetry-gpt prepare` (optional when resuming: the run remembers it).")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=str),
              help="RUN_DIR to create, or to resume when it holds a run.")
@click.option("--init-from", type=click.Path(path_type=str),
              help="Fine-tune from this GPT-2 folder (save_pretrained files; vocabulary must match).")
@_tune_options
@_train_options
def train_cmd(data_dir, run_dir, init_from, preset, overwrite, quiet, **values):
    """Train a poem model on DATA_DIR, or continue the run in RUN_DIR."""
    from ..generate.epoch import sample_poems
    from ..train.budget import clock
    from ..train.loop import train

    started, max_time = clock(), _max_time(values)
    config = _resolve(run_dir, preset, overwrite, values, max_time)
    result = train(data_dir, run_dir, config, overwrite=overwrite, init_from=init_from, echo=click.echo,
                   sample_poems=sample_poems,
                   verbose=2 if quiet else 1, max_time=max_time, started=started)
    _report(result)


@click.command("pipeline")
@click.argument("raw", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=str),
              help="RUN_DIR; the prepared data goes to RUN_DIR/data.")
@click.option("--samples", "n_samples", type=int, default=4, show_default=True, help="Poems to print at the end.")
@_train_options
def pipeline_cmd(raw, run_dir, n_samples, preset, overwrite, quiet, **values):
    """prepare + train + a few poems, in one command (RAW: raw.txt file(s))."""
    from pathlib import Path

    from ..config import DataConfig
    from ..data.diagnostics import format_report
    from ..data.manifest import MANIFEST
    from ..data.prepare import prepare
    from ..generate.epoch import sample_poems
    from ..run_dir import check_run_target
    from ..train.budget import clock
    from ..train.loop import train

    started, max_time = clock(), _max_time(values)  # the budget counts prepare too
    config = _resolve(run_dir, preset, overwrite, values, max_time)
    data_dir = Path(run_dir) / "data"
    has_data = (data_dir / MANIFEST).is_file()  # a RUN_DIR/data without a manifest is not ours: foreign
    inputs = [("RAW", p) for p in raw]
    check_run_target(run_dir, overwrite, ("data",) if has_data else (), inputs)  # before prepare writes there
    if has_data and not overwrite:
        click.echo(f"Using the data already prepared in {data_dir}/.")
    else:
        prepared = prepare(raw, data_dir, DataConfig(), n_ctx=config.model.n_ctx, overwrite=True,
                           out_option="--run (its data/ folder)")
        click.echo(format_report(prepared.report))
        click.echo(f"Prepared {data_dir}/ in {prepared.seconds:.1f} s.")
    result = train(str(data_dir), run_dir, config, overwrite=overwrite, echo=click.echo, verbose=2 if quiet else 1,
                   sample_poems=sample_poems,
                   own_entries=("data",), inputs=inputs, max_time=max_time, started=started)
    _report(result)
    if n_samples > 0:
        from ..model.export import load_export

        lm, vocab, meta = load_export(run_dir)
        click.echo("Poems:")
        for line in sample_poems(lm, vocab, [""] * n_samples, genre=meta.get("genre", "诗"),
                                 n_ctx=config.model.n_ctx, seed=result.global_step):
            click.echo(f"  {line}")
