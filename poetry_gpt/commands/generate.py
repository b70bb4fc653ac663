"""``poetry-gpt generate`` and ``poetry-gpt chat``: write poems with a trained model.

Option values are checked by the library (``poetry_gpt.sampling.SamplingConfig``), which raises a
one-line ``OptionError`` naming the option; TensorFlow is imported only when a
command runs, so ``poetry-gpt --help`` stays fast.
"""
from __future__ import annotations

import json
import time

import click

from ..errors import OptionError
from ..fsutil import atomic_write_text
from ..sampling import DEFAULT_MIN_P, SamplingConfig
from .options import sampling_config, sampling_options


def _model_options(f):
    """The model and prompt options of ``generate`` and ``chat``, then the sampling ones (``options.py``)."""
    opts = [
        click.option("--run", "run_dir", required=True, type=click.Path(path_type=str),
                     help="RUN_DIR written by `poetry-gpt train` (uses its export/), or an export folder."),
        click.option("--checkpoint", default=None,
                     help="Use this training checkpoint of RUN_DIR instead of export/: latest, a step, or ckpt-N."),
        click.option("--title", default=None, help="Title of the poem (for openings that are not a full prefix)."),
        click.option("--genre", default=None,
                     help="Genre word of the prompt, e.g. 唐诗  [default: the model's most common genre]"),
    ]
    f = sampling_options(min_p=dict(default=None, show_default=False,
                                    help_suffix=f"  [default: {DEFAULT_MIN_P}; 0 with --eager]"))(f)
    for opt in reversed(opts):
        f = opt(f)
    return f


def _precheck(values: dict, eager: bool = False) -> SamplingConfig:
    """Take the sampling options out of ``values`` as one checked ``SamplingConfig`` (the default min-p, none
    for the eager path, which has no min-p), refusing bad values before the (slow) model load."""
    config = sampling_config(values, min_p=0.0 if eager else DEFAULT_MIN_P)
    if config.strict and not config.form:
        raise OptionError("--strict: needs --form (五绝, 七绝, 五律 or 七律)")
    return config


#: options that only act with another one: (option's field, its CLI name, what it needs, the needing fields)
_DEPENDENT_OPTIONS = (("leniency", "--leniency", "--strict", ("strict",)),
                      ("rhyme_book", "--rhyme-book", "--rhyme or --strict", ("rhyme", "strict")))


def _refuse_idle_options(config: SamplingConfig) -> None:
    """Refuse an option typed on the command line that would change nothing (``--leniency strict`` without
    ``--strict``), rather than ignore it. ``chat`` keeps them: there they are the session's settings for a
    later ``:strict on``.

    Args:
        config: the checked options of this ``generate``.
    """
    ctx = click.get_current_context()
    for field, option, needs, needing in _DEPENDENT_OPTIONS:
        typed = ctx.get_parameter_source(field) == click.core.ParameterSource.COMMANDLINE
        if typed and not any(getattr(config, n) for n in needing):
            raise OptionError(f"{option}: acts only with {needs}; add it, or drop {option}")


def _load(run_dir, checkpoint=None):
    """The generator for ``--run`` (and ``--checkpoint``), without transformers' load-time chatter on stderr."""
    from transformers.utils import logging as hf_logging

    from ..generate.generator import PoemGenerator

    hf_logging.set_verbosity_error()
    return PoemGenerator(run_dir, checkpoint=checkpoint)


def check_out(out: str, run_dir: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that would replace a file without ``overwrite``, sits in a missing folder, or is
    part of the model ``--run`` reads (its export, checkpoints or run files), before the model loads.

    Args:
        out: the ``--out`` file.
        run_dir: the ``--run`` RUN_DIR or export folder.
        overwrite: ``--overwrite`` was given.
    """
    from pathlib import Path

    from ..fsutil import is_within
    from ..run_dir import RUN_ENTRIES

    path, run = Path(out), Path(run_dir)
    names = [n for n in (*RUN_ENTRIES, "export.old") if n not in ("logs", "samples")]  # what runs and loads need
    parts = [run] if (run / "config.json").is_file() else [run / name for name in names]
    for part in parts:
        if is_within(path, part):
            raise OptionError(f"--out {out}: it is part of the model --run reads ({part}); choose a file outside it")
    if not path.resolve().parent.is_dir():
        raise OptionError(f"--out {out}: the folder {path.resolve().parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise OptionError(f"--out {out}: the file already exists; pass --overwrite to replace it or choose another name")


def format_line(sample) -> str:
    """A sample as one output line: the corpus-style text, ``[unclosed] `` first when it has no 】."""
    return sample.text if sample.closed else "[unclosed] " + sample.text


def _options_record(title, genre, config: SamplingConfig) -> dict:
    return {"title": title, "genre": genre, **config.to_dict()}


@click.command("generate")
@click.argument("openings", nargs=-1, metavar="[OPENING]...")
@_model_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the poems to this file (in --format); an existing file only with --overwrite.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (atomically, once the poems are done).")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="text: one poem a line; jsonl: one JSON object a poem "
                   "(prompt, text, options, seed, closed, tokens, seconds).")
@click.option("--eager", is_flag=True,
              help="Use transformers' eager model.generate instead of the compiled sampler (slow; for benchmarks).")
def generate_cmd(openings, run_dir, checkpoint, title, genre, out, overwrite, fmt, eager, **values):
    """Write poems that start with each OPENING.

    \b
    OPENING is one of:
      春眠不觉晓                  the first characters of the body (header from --title/--genre)
      "春晓 唐诗：【春眠不觉晓"     a full prefix in corpus style (recognised by ：【)
      (none)                      --title only: the model writes the body; nothing: it writes everything

    Poems go to stdout one per line in corpus style; one that ran out of characters before
    its closing 】 starts with [unclosed].
    """
    config = _precheck(values, eager)
    _refuse_idle_options(config)
    if out:
        check_out(out, run_dir, overwrite)
    gen = _load(run_dir, checkpoint)
    t0 = time.perf_counter()
    samples = gen.generate(list(openings), title=title, genre=genre, sampling=config,
                           decoder="eager" if eager else "compiled")
    seconds = time.perf_counter() - t0
    options = _options_record(title, genre or gen.genre, config)
    records = [{**s.to_dict(), "options": options, "eager": eager} for s in samples]
    if out:
        lines = [(json.dumps(r, ensure_ascii=False) if fmt == "jsonl" else format_line(s)) + "\n"
                 for s, r in zip(samples, records)]
        try:
            atomic_write_text(out, "".join(lines))
        except OSError as exc:
            raise OptionError(f"--out {out}: cannot write ({exc.strerror or exc}); choose a writable place") from None
    for s, r in zip(samples, records):
        click.echo(json.dumps(r, ensure_ascii=False) if fmt == "jsonl" and not out else format_line(s))
    unclosed = sum(not s.closed for s in samples)
    seeds = f"seed {samples[0].seed}" + (f"–{samples[-1].seed}" if len(samples) > 1 else "")
    click.echo(f"{len(samples)} poem(s) in {seconds:.2f} s ({seeds})"
               + (f", {unclosed} unclosed" if unclosed else "") + (f"; written to {out}" if out else ""), err=True)


CHAT_HELP = """Type an opening line (e.g. 春眠不觉晓) or a full prefix (春晓 唐诗：【春眠) to get a poem.
Commands:
  :title T     a poem with title T (the model writes the body)
  :new         a poem from nothing (the model writes the title too)
  :k N         top-k (1 = greedy)          :p X      top-p in (0, 1]
  :t X         temperature > 0             :r X      repetition penalty > 0
  :m X         min-p in [0, 1) (0 = off)
  :n N         poems per request           :seed S   fixed seed (:seed off = random)
  :form F      五绝/七绝/五律/七律 (:form off)   :acrostic 字字字字 (:acrostic off)
  :rhyme on|off   rhyme clauses (with :form)   :genre G   genre word of prompts
  :rhymebook pingshui|modern   the rhyme book of :rhyme (平水韵 平声 groups or 中华新韵 finals)
  :strict on|off  格律 tones and 平水韵 rhyme (with :form)   :leniency standard|strict
  :show        current settings            :help     this text
  :quit        leave (Ctrl-D / Ctrl-C too)"""

# chat command -> (generate keyword, parser)
_SETTINGS = {
    ":k": ("top_k", int), ":p": ("top_p", float), ":m": ("min_p", float), ":t": ("temperature", float), ":r": ("repetition_penalty", float),
    ":n": ("num_samples", int), ":seed": ("seed", int), ":form": ("form", str), ":acrostic": ("acrostic", str),
    ":genre": ("genre", str), ":rhyme": ("rhyme", lambda v: v.lower() in ("on", "1", "yes", "true")),
    ":strict": ("strict", lambda v: v.lower() in ("on", "1", "yes", "true")), ":leniency": ("leniency", str),
    ":rhymebook": ("rhyme_book", str),
}
_OFF = {"off", "none", "-"}
_NULLABLE = {"seed", "form", "acrostic", "genre"}  # settings that ":x off" resets to their default


@click.command("chat")
@_model_options
def chat_cmd(run_dir, checkpoint, title, genre, **values):
    """Write poems interactively: type an opening line, get a poem; :help lists the commands."""
    from ..errors import PoetryGPTError

    config = _precheck(values)
    gen = _load(run_dir, checkpoint)
    prompt = {"title": title, "genre": genre}  # --title, if given, titles every poem unless :title says otherwise
    click.echo(f"Model {gen.export.path} (context {gen.n_ctx}, genre {gen.genre or '?'}). "
               "Type an opening line, :title T, or :help; :quit or Ctrl-D to leave.")
    while True:
        try:
            line = click.prompt("", prompt_suffix="> ", default="", show_default=False).strip()
        except (click.Abort, EOFError, KeyboardInterrupt):
            click.echo("")
            break
        if not line:
            continue
        command, _, arg = line.partition(" ")
        arg = arg.strip()
        request = None
        if not line.startswith(":"):
            request = {"openings": [line]}
        elif command in (":quit", ":q", ":exit"):
            break
        elif command == ":help":
            click.echo(CHAT_HELP)
        elif command == ":show":
            click.echo(", ".join(f"{k}={v}" for k, v in {**prompt, **config.to_dict()}.items()))
        elif command == ":title":
            request = {"openings": [], "title": arg} if arg else None
            if not arg:
                click.echo("Error: :title needs a title, e.g. :title 春晓")
        elif command == ":new":
            request = {"openings": []}
        elif command in _SETTINGS:
            key, parse = _SETTINGS[command]
            try:
                value = None if key in _NULLABLE and arg.lower() in _OFF else parse(arg)
                if key in prompt:
                    prompt[key] = value
                else:
                    changed = config.replace(**{key: value})
                    if key in ("form", "leniency", "strict") and value is not None:  # a form it cannot write
                        gen.plan(None, form=changed.form, strict=changed.strict, leniency=changed.leniency)
                    config = changed
                click.echo(f"{key} = {value}")
            except ValueError:
                click.echo(f"Error: {command} needs a value, e.g. {command} 3; got {arg!r}")
            except OptionError as exc:
                click.echo(f"Error: {exc}")
        else:
            click.echo(f"Unknown command {command}; :help lists them.")
        if request is None:
            continue
        try:
            for s in gen.generate(sampling=config, **{**prompt, **request}):
                click.echo(format_line(s))
        except PoetryGPTError as exc:
            click.echo(f"Error: {exc}")
        except KeyboardInterrupt:
            click.echo("(interrupted)")
    click.echo("Bye.")
