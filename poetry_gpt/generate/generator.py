"""Write poems with a trained model: ``PoemGenerator`` loads it, plans a request, decodes it, returns ``Sample``s.

A prompt is ``[SEP]`` followed by the start of a corpus line, ``title 体裁：【opening``.
What ``PoemGenerator.generate`` accepts as an *opening*:

* a full prefix in corpus style, recognised by ``：【`` (or ``:【``): used as it is,
  e.g. ``春晓 唐诗：【春眠不觉晓`` (then ``title``/``genre`` must not be given);
* anything else is the first characters of the body, e.g. ``春眠不觉晓``; the
  header is ``title`` (default none) and ``genre`` (default: the export's genre);
* no openings at all: with a ``title``, the model starts the body after
  ``title 体裁：【``; without one, it starts from ``[SEP]`` and writes the title,
  the genre and the poem itself.

Every sample stops at its first 】 and is cut there; one that reaches
``max_new_tokens`` first is *unclosed*. Sample *i* (counting over all prompts)
uses seed ``seed + i`` and depends only on that seed and the options, not on its
batch mates, so ``--seed S -n 1`` reproduces the sample reported with seed S.

Example:
    >>> gen = PoemGenerator("runs/small")
    >>> [s.text for s in gen.generate(["春眠不觉晓"], title="春晓", seed=1)]
    ['春晓 唐诗：【春眠不觉晓，…】']
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..data.vocab import PAD_ID, CharVocab
from ..errors import OptionError, RunDirError
from ..memory import release_freed_memory
from ..sampling import DEFAULT_BATCH_SIZE, SamplingConfig
from ..verse import forms
from ..verse.forms import CLOSE, OPEN, extract_body
from .planning import FormTables, Plan, Row, plan_rows
from .prompts import build_prompts, is_full_prefix


@dataclass
class Sample:
    """One generated poem.

    Args:
        prompt: the prompt text the model continued (``[SEP]`` not shown; "" when it started from nothing).
        text: the whole corpus-style line, prompt included, cut after the first 】.
        body: the text between 【 and 】 (up to the end when unclosed).
        closed: the model wrote 】 within the token budget.
        tokens: characters generated (】 included).
        seed: the seed of this sample (repeat it with ``seed=...`` and ``num_samples=1``).
        seconds: wall time of the batch the sample was generated in.
    """

    prompt: str
    text: str
    body: str
    closed: bool
    tokens: int
    seed: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Export:
    """A loaded export folder.

    Args:
        path: the export folder.
        model: the ``TFGPT2LMHeadModel``.
        vocab: its ``CharVocab``.
        meta: the contents of ``poetry_gpt.json`` ({} when absent).
        tuning: the ``model.peft.Tuning`` the model is sampled with (an adapter/prefix export, or a
            ``--tune`` run's checkpoint), or None.
    """

    path: Path
    model: object
    vocab: CharVocab
    meta: dict
    tuning: object = None

    @property
    def n_ctx(self) -> int:
        return int(self.model.config.n_positions)

    @property
    def genre(self) -> str | None:
        return self.meta.get("genre")


def load_model(path: str | os.PathLike, checkpoint: str | None = None) -> Export:
    """Load a model for generation from a RUN_DIR (its ``export/``) or an export folder.

    Args:
        path: a RUN_DIR or an export folder (``save_pretrained`` files + vocabulary + ``poetry_gpt.json``).
        checkpoint: load the weights of this checkpoint of ``RUN_DIR/checkpoints`` instead of the export:
            ``latest``, a step number (``1200``) or a name (``ckpt-1200``); see ``RunDir.checkpoint``.

    Raises:
        RunDirError: the folder is missing, holds no export, is not a GPT-2 export, or its vocabulary
            does not match the model.
    """
    from ..envcheck import require_compatible
    from ..model.export import load_export, load_tuning
    from ..run_dir import resolve_export

    require_compatible()
    if checkpoint is not None:
        return load_checkpoint(path, checkpoint)
    export = resolve_export(path)
    try:
        model_type = json.loads((export / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        raise RunDirError(f"{export / 'config.json'}: unreadable; re-export the run") from None
    if model_type != "gpt2":
        raise RunDirError(f"{export}: not a GPT-2 export (model_type {model_type!r}); "
                          "pass a poetry_gpt RUN_DIR or its export/")
    if not (export / "tf_model.h5").is_file():
        raise RunDirError(f"{export}: no tf_model.h5 (TensorFlow weights); re-export the run with `poetry-gpt train`")
    model, vocab, meta = load_export(export)
    if meta.get("vocab_hash") not in (None, vocab.hash):
        raise RunDirError(f"{export}: vocab.txt is not the vocabulary the model was exported with "
                          "(vocab_hash differs); restore the export's files or re-export")
    return Export(export, model, vocab, meta, load_tuning(export, model, meta))


def load_checkpoint(path: str | os.PathLike, checkpoint: str) -> Export:
    """Load the model weights of one training checkpoint of a RUN_DIR (not its export).

    The model is built from the run's recorded configuration and vocabulary, then only the
    model part of the checkpoint is restored (the optimizer state is skipped). A ``--tune`` run's
    checkpoint holds only the tuned variables: the recorded base is loaded (its content checked,
    ``run_dir.check_base``) and the tuning restored over it.

    Args:
        path: a RUN_DIR written by ``poetry-gpt train``.
        checkpoint: ``latest``, a step number, or a checkpoint name such as ``ckpt-1200``.

    Raises:
        RunDirError: no run, no such checkpoint (the available ones are listed), or an unreadable one.
    """
    import tensorflow as tf

    from ..config import RunConfig
    from ..run_dir import RunDir, export_meta

    run = RunDir(Path(path))
    step, prefix = run.checkpoint(checkpoint)
    recorded = run.read_run()
    config = RunConfig.from_dict(recorded["config"])
    vocab = CharVocab.load(run.path)
    model, tuning, weights = _checkpoint_model(run, recorded, config, vocab)
    try:
        tf.train.Checkpoint(**weights).restore(str(prefix)).expect_partial().assert_existing_objects_matched()
    except Exception as exc:  # a damaged checkpoint raises several TensorFlow error types
        raise RunDirError(f"--checkpoint ckpt-{step}: unreadable ({type(exc).__name__}); choose another "
                          f"checkpoint ({', '.join(str(s) for s in run.checkpoint_steps())})") from None
    meta = export_meta(recorded.get("data", {}), config.model.n_ctx, step, vocab_hash=vocab.hash)
    return Export(prefix, model, vocab, meta, tuning)


def _checkpoint_model(run, recorded: dict, config, vocab: CharVocab) -> tuple:
    """``(model, tuning, what the checkpoint restores into)`` for a run's checkpoint: a new model of the run's
    shape, or for a ``--tune`` run its base (checked) and a fresh tuning whose variables the checkpoint sets.

    Args:
        run: the RUN_DIR.
        recorded: its ``run.json``.
        config: its configuration.
        vocab: its vocabulary.
    """
    from ..model.gpt2 import build_model

    if config.tune.method == "full":
        model = build_model(config.model, vocab)
        return model, None, {"model": model}
    from ..data.manifest import load_manifest
    from ..run_dir import check_base
    from ..model.init_from import load_init
    from ..train.trainer import make_tuning

    base = recorded.get("base") or {}
    check_base(run, base, base.get("path", "?"))
    model = load_init(base["path"], vocab, config)
    base_size = load_manifest(recorded["data"]["path"]).base_vocab_size
    tuning = make_tuning(model, config, base_size)
    return model, tuning, {"tuned": tuning.tuned_state(model)}


class PoemGenerator:
    """Load a model once and sample poems from it: prompts, a plan, a decoder, ``Sample`` results.

    The work is split into units: ``prompts`` (build and check the prompt texts), ``planning`` (the
    rows to decode and the form tables), ``decoders`` (the compiled sampler by default, transformers'
    eager ``generate`` with ``decoder="eager"``) and ``_sample`` (ids back to a ``Sample``).

    Args:
        path: a RUN_DIR or export folder.
        checkpoint: use this training checkpoint of the RUN_DIR (see ``load_model``).
        compute_dtype: "float32" (default; bfloat16 was not faster under XLA on CPU).
    """

    def __init__(self, path: str | os.PathLike, checkpoint: str | None = None, compute_dtype: str = "float32"):
        release_freed_memory()  # in a sampling process: TensorFlow's import-time pages, before the load adds its own
        self._setup(load_model(path, checkpoint), compute_dtype)
        release_freed_memory()  # the load's temporary buffers

    @classmethod
    def from_export(cls, export: Export, compute_dtype: str = "float32", jit_compile: bool = True) -> "PoemGenerator":
        """A generator over a model already in memory (e.g. one in training; its current weights are used).

        Args:
            export: the model, its vocabulary and its metadata (``genre``, ``cipai``).
            compute_dtype: as in ``PoemGenerator``.
            jit_compile: XLA-compile the sampler's programs (False: plain graphs, quicker to build for a
                few poems).
        """
        gen = cls.__new__(cls)
        gen._setup(export, compute_dtype, jit_compile)
        return gen

    def _setup(self, export: Export, compute_dtype: str, jit_compile: bool = True) -> None:
        from .decoders import CompiledDecoder, EagerDecoder

        self.export, self.vocab, self.model = export, export.vocab, export.model
        self.close_id = self.vocab.index.get(CLOSE)
        #: 词牌 -> its clause pattern (``cipai.learn_patterns``), recorded in the export at train time
        self.cipai: dict = dict(export.meta.get("cipai") or {})
        self.tables = FormTables(self.vocab, self.cipai, self.n_ctx)
        compiled = CompiledDecoder(self.model, self.vocab, self.close_id, compute_dtype, jit_compile,
                                   tuning=export.tuning)
        self.sampler = compiled.sampler
        self.decoders = {"compiled": compiled, "eager": EagerDecoder(self.model, self.vocab, self.close_id,
                                                                     self.tables.free)}

    @property
    def n_ctx(self) -> int:
        return self.export.n_ctx

    @property
    def genre(self) -> str | None:
        return self.export.genre

    @functools.cached_property
    def strict_supported(self) -> bool:
        """Whether ``strict`` has tone data to work with: the 平水韵 table is installed and knows characters of
        the vocabulary (whether a given form can be written with them, ``plan`` tells)."""
        from ..verse.tones import ToneDataMissing, detect_script, table

        chars = [t for t in self.vocab.tokens[3:] if forms.is_hanzi(t)]
        try:
            known = table(detect_script("".join(chars))).groups
        except ToneDataMissing:
            return False
        return any(c in known for c in chars)

    def form_names(self) -> list[str]:
        """The ``form`` values this model takes: the four regulated forms, then its corpus's 词牌."""
        return self.tables.form_names()

    # prompts --------------------------------------------------------------------------
    def build_prompts(self, openings: str | Sequence[str] | None, title: str | None = None,
                      genre: str | None = None) -> list[str]:
        """The prompt texts for ``openings`` (see the module docstring and ``prompts.build_prompts``)."""
        return build_prompts(openings, title, genre, default_genre=self.genre, vocab=self.vocab, n_ctx=self.n_ctx)

    # sampling -------------------------------------------------------------------------
    def generate(self, openings: str | Sequence[str] | None = None, *, title: str | None = None,
                 genre: str | None = None, sampling: SamplingConfig | None = None, decoder: str = "compiled",
                 **options) -> list[Sample]:
        """Sample ``num_samples`` poems for each opening.

        Args:
            openings: a full prefix (``春晓 唐诗：【春眠不觉晓``), a first line (``春眠不觉晓``),
                a list of them, or None (title only, or nothing at all).
            title: title for openings that are not full prefixes.
            genre: genre word (default: the export's most common genre).
            sampling: the sampling and form options (default: ``SamplingConfig()``).
            decoder: "compiled" (the XLA sampler) or "eager" (transformers' ``generate``: free sampling
                without min-p only; slow, for benchmarks).
            **options: ``SamplingConfig`` fields that replace those of ``sampling`` (``top_k=1``,
                ``form="五绝"``, ``seed=3``, …; see ``poetry_gpt.sampling.SamplingConfig``).

        Returns:
            One ``Sample`` per (opening, sample), openings in order.

        Raises:
            OptionError: an option is out of range or the prompt cannot be used.
        """
        config = SamplingConfig.of(sampling, **options)
        if decoder == "eager" and self.export.tuning is not None:
            raise OptionError(f"decoder eager: transformers' generate cannot compute this model's --tune "
                              f"{self.export.tuning.method}; use the compiled decoder")
        self.decoders[decoder].check(config)
        plan = self.plan(openings, title=title, genre=genre, sampling=config)
        return self.decode(plan.rows, plan.config, plan.tables, config.batch_size, decoder=decoder)

    def generate_eager(self, openings: str | Sequence[str] | None = None, *, sampling: SamplingConfig | None = None,
                       **options) -> list[Sample]:
        """``generate`` through transformers' eager ``model.generate`` (``decoders.EagerDecoder``: no form
        options, no min-p, so min-p defaults to 0 when no ``sampling`` is given)."""
        if sampling is None:
            options.setdefault("min_p", 0.0)
        return self.generate(openings, sampling=sampling, decoder="eager", **options)

    def plan(self, openings: str | Sequence[str] | None = None, *, title: str | None = None,
             genre: str | None = None, sampling: SamplingConfig | None = None, **options) -> Plan:
        """Check a request and turn it into rows to decode, without decoding (``generate`` = ``plan`` + ``decode``).

        Args:
            openings: as in ``generate``.
            title: as in ``generate``.
            genre: as in ``generate``.
            sampling: as in ``generate``.
            **options: as in ``generate``.

        Raises:
            OptionError: what ``generate`` raises, before any decoding.
        """
        config = SamplingConfig.of(sampling, **options)
        form = config.form.strip() if isinstance(config.form, str) and config.form.strip() else None
        config = config.replace(form=form) if form != config.form else config
        listed = [openings] if isinstance(openings, str) else list(openings or [])
        if form in self.cipai and title is None and not any(is_full_prefix(o) for o in listed):
            title = form  # a 词's title is its tune
        constraint, tables = self.tables.get(form, config.acrostic, config.rhyme, config.strict, config.leniency,
                                             config.rhyme_book)
        prompts = self.build_prompts(openings, title, genre)
        return Plan(plan_rows(prompts, config, constraint, self.tables.free, self.n_ctx), config, tables)

    def decode(self, rows: Sequence[Row], sampling: SamplingConfig, tables, batch_size: int = DEFAULT_BATCH_SIZE,
               on_tokens: Callable[[int, list], None] | None = None, decoder: str = "compiled") -> list[Sample]:
        """Decode planned rows (of one or several ``plan`` calls with the same ``Plan.key``).

        Args:
            rows: ``Plan.rows``.
            sampling: ``Plan.config``.
            tables: ``Plan.tables``.
            batch_size: the most rows run together.
            on_tokens: streaming: called as ``on_tokens(first_row, ids_per_row)`` every few decode steps
                with the ids each row of the running batch has drawn so far (cut to its budget).
            decoder: "compiled" or "eager" (see ``generate``).

        Returns:
            One ``Sample`` per row, in order.
        """
        drawn = self.decoders[decoder].decode(rows, sampling, tables, batch_size, on_tokens)
        return [self._sample(row.prompt, d.ids, row.seed, d.seconds) for row, d in zip(rows, drawn)]

    # results --------------------------------------------------------------------------
    def text_of(self, prompt: str, ids: list[int]) -> str:
        """The corpus-style text of a row so far: ``prompt`` + its ids, cut after 】 (streaming)."""
        return self._sample(prompt, ids, 0, 0.0).text

    def _sample(self, prompt: str, ids: list[int], seed: int, seconds: float) -> Sample:
        closed = self.close_id is not None and self.close_id in ids
        if closed:
            ids = ids[:ids.index(self.close_id) + 1]
        else:
            ids = [i for i in ids if i != PAD_ID]
        text = prompt + self.vocab.decode(ids)
        return Sample(prompt, text, extract_body(text)[0] if OPEN in text else "", closed, len(ids), seed, round(seconds, 4))

    def _constraint(self, form, acrostic, rhyme, strict=False, leniency="standard") -> tuple:
        """``FormTables.get`` (kept for callers of the old name)."""
        return self.tables.get(form, acrostic, rhyme, strict, leniency)
