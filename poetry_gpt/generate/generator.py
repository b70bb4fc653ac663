"""Write poems with a trained model: prompts, validation, batching, the compiled sampler.

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
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..verse import forms
from . import constraints
from ..data.corpus import CLOSE, OPEN, prompt_prefix
from ..errors import OptionError, RunDirError
from ..memory import release_freed_memory
from ..data.vocab import PAD_ID, SEP_ID, UNK_ID, CharVocab

FORM_NAMES = tuple(forms.FORMS)
# Default sampling: top-k 64 with min-p 0.05. On tang-full `small` runs it keeps at least as many free samples
# in a regular form as top-k 10 did (80–84% against 76–83%) with much more varied wording (distinct-2 0.70–0.74
# against 0.53–0.64 over 500 samples; README "Form against variety"). 64 is one of the sampler's compile caps
# (``top_k_cap``), so it costs what top-k 10 costs. transformers' TF generate has no min-p: the eager path
# samples without it.
DEFAULT_TOP_K = 64
DEFAULT_MIN_P = 0.05
TABLE_CACHE = 8  # constraint tables kept per generator (free sampling and the last forms used)
SAMPLING_DEFAULTS = {"top_k": DEFAULT_TOP_K, "top_p": 1.0, "min_p": DEFAULT_MIN_P, "temperature": 1.0,
                     "repetition_penalty": 1.0}
UNPENALISED = set("，。？！；：、【】 ")  # a poem repeats its punctuation by design: no repetition penalty


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
class Row:
    """One poem to decode: its prompt text, seed, token budget and form-automaton state after the prompt."""

    prompt: str
    seed: int
    budget: int
    state: tuple = (0, constraints.NO_RHYME)


@dataclass
class Plan:
    """A checked request (``PoemGenerator.plan``): the rows to decode and how.

    Args:
        rows: one ``Row`` per poem, in output order.
        sampling: top_k, top_p, min_p, temperature, repetition_penalty.
        tables: the constraint tables (free sampling or the form).
        key: plans with equal keys can be decoded together in one batch (the sampler takes these
            options and tables once per batch, not per row).
    """

    rows: list
    sampling: dict
    tables: object
    key: tuple


@dataclass
class Export:
    """A loaded export folder.

    Args:
        path: the export folder.
        model: the ``TFGPT2LMHeadModel``.
        vocab: its ``CharVocab``.
        meta: the contents of ``poetry_gpt.json`` ({} when absent).
    """

    path: Path
    model: object
    vocab: CharVocab
    meta: dict

    @property
    def n_ctx(self) -> int:
        return int(self.model.config.n_positions)

    @property
    def genre(self) -> str | None:
        return self.meta.get("genre")


def batch_rows(rows: int, batch_size: int) -> int:
    """Rows of each compiled batch: the next power of two ≥ ``rows``, at most ``batch_size``.

    Rounding up (the extra rows are inactive padding) keeps the number of compiled programs,
    and so the compile time and memory, small when ``-n`` varies, e.g. in ``chat``.

    Args:
        rows: samples asked for.
        batch_size: the most rows run together.
    """
    return min(batch_size, 1 << max(rows - 1, 0).bit_length())


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
    from ..model.export import load_export
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
    return Export(export, model, vocab, meta)


def split_body(text: str) -> str:
    """The body of a (possibly unclosed) corpus line: after the first 【, before 】."""
    return text.partition(OPEN)[2].partition(CLOSE)[0]


#: (argument, CLI option, test, what it must be) of ``check_options``; the tests take numbers or tensors
#: (``poetry_gpt.serve.saved_model`` runs them in the graph). None (``max_new_tokens``) is never checked.
OPTION_RULES = (
    ("top_k", "--top-k", lambda v: v >= 1, "must be ≥ 1 (1 = greedy)"),
    ("top_p", "--top-p", lambda v: (v > 0.0) & (v <= 1.0), "must be in (0, 1] (1 = off)"),
    ("min_p", "--min-p", lambda v: (v >= 0.0) & (v < 1.0), "must be in [0, 1) (0 = off)"),
    ("temperature", "--temperature", lambda v: v > 0.0, "must be > 0"),
    ("repetition_penalty", "--repetition-penalty", lambda v: v > 0.0, "must be > 0 (1 = off)"),
    ("num_samples", "--num-samples", lambda v: v >= 1, "must be ≥ 1"),
    ("batch_size", "--batch-size", lambda v: v >= 1, "must be ≥ 1"),
    ("max_new_tokens", "--max-new-tokens", lambda v: v >= 1, "must be ≥ 1"),
)


def check_options(top_k: int = DEFAULT_TOP_K, top_p: float = 1.0, temperature: float = 1.0,
                  repetition_penalty: float = 1.0, num_samples: int = 1, batch_size: int = 8,
                  max_new_tokens: int | None = None, min_p: float = DEFAULT_MIN_P,
                  **_) -> None:
    """Check the numeric sampling options (the arguments of ``PoemGenerator.generate``).

    Args:
        top_k: ≥ 1.
        top_p: in (0, 1].
        temperature: > 0.
        repetition_penalty: > 0.
        num_samples: ≥ 1.
        batch_size: ≥ 1.
        max_new_tokens: None or ≥ 1.
        min_p: in [0, 1).

    Raises:
        OptionError: naming the first bad option and its valid range.
    """
    values = dict(top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature,
                  repetition_penalty=repetition_penalty, num_samples=num_samples, batch_size=batch_size,
                  max_new_tokens=max_new_tokens)
    for name, option, test, expected in OPTION_RULES:
        value = values[name]
        if value is not None and not test(value):
            raise OptionError(f"{option}: {expected}, got {value}")


def _check_form_fits(constraint, states, room: int, max_new_tokens: int | None, n_ctx: int) -> None:
    """Raise ``OptionError`` when the constrained poem cannot be finished in the tokens it may write.

    Args:
        constraint: the form's ``DecodeConstraint``.
        states: ``(state, rhyme_group)`` of each row after its prompt.
        room: tokens the context leaves after the longest prompt.
        max_new_tokens: the caller's limit, or None.
        n_ctx: the model's context.
    """
    need = max(constraint.tokens_to_finish(state) for state, _ in states)
    name = constraint.layout.name
    if need > room:
        raise OptionError(f"--form {name}: the poem needs {need} more tokens after the prompt but the model's "
                          f"{n_ctx}-token context leaves {room}; shorten the title/opening, choose a shorter form, "
                          f"or train a model with a longer context (the small preset has 128)")
    if max_new_tokens is not None and need > max_new_tokens:
        raise OptionError(f"--max-new-tokens: a {name} needs {need} more tokens after the prompt, "
                          f"got {max_new_tokens}; raise it or leave it out")


def load_checkpoint(path: str | os.PathLike, checkpoint: str) -> Export:
    """Load the model weights of one training checkpoint of a RUN_DIR (not its export).

    The model is built from the run's recorded configuration and vocabulary, then only the
    model part of the checkpoint is restored (the optimizer state is skipped).

    Args:
        path: a RUN_DIR written by ``poetry-gpt train``.
        checkpoint: ``latest``, a step number, or a checkpoint name such as ``ckpt-1200``.

    Raises:
        RunDirError: no run, no such checkpoint (the available ones are listed), or an unreadable one.
    """
    import tensorflow as tf

    from ..config import RunConfig
    from ..model.gpt2 import build_model
    from ..run_dir import RunDir, export_meta

    run = RunDir(Path(path))
    step, prefix = run.checkpoint(checkpoint)
    recorded = run.read_run()
    config = RunConfig.from_dict(recorded["config"])
    vocab = CharVocab.load(run.path)
    model = build_model(config.model, vocab)
    try:
        tf.train.Checkpoint(model=model).restore(str(prefix)).expect_partial().assert_existing_objects_matched()
    except Exception as exc:  # a damaged checkpoint raises several TensorFlow error types
        raise RunDirError(f"--checkpoint ckpt-{step}: unreadable ({type(exc).__name__}); choose another "
                          f"checkpoint ({', '.join(str(s) for s in run.checkpoint_steps())})") from None
    meta = export_meta(recorded.get("data", {}), config.model.n_ctx, step, vocab_hash=vocab.hash)
    return Export(prefix, model, vocab, meta)


class PoemGenerator:
    """Load a model once and sample poems from it with the compiled sampler.

    Programs are compiled on first use: the decode loop once per batch size (a power of two,
    see ``batch_rows``) and top-k cap (16, 64, all), shared by free sampling and every form;
    the prompt pass once per (batch size, prompt bucket of 16 tokens).

    Args:
        path: a RUN_DIR or export folder.
        checkpoint: reserved (see ``load_model``).
        compute_dtype: "float32" (default; bfloat16 was not faster under XLA on CPU here).
    """

    def __init__(self, path: str | os.PathLike, checkpoint: str | None = None, compute_dtype: str = "float32"):
        import tensorflow as tf

        from ..model.cached_gpt2 import CachedGPT2
        from .sampler import Sampler

        self.export = load_model(path, checkpoint)
        self.vocab = self.export.vocab
        self.model = self.export.model
        self.close_id = self.vocab.index.get(CLOSE)
        punctuation = [i for i, t in enumerate(self.vocab.tokens) if t in UNPENALISED]
        self.sampler = Sampler(CachedGPT2(self.model, getattr(tf, compute_dtype)), stop_id=self.close_id,
                               banned_ids=(PAD_ID, UNK_ID, SEP_ID), unpenalised_ids=punctuation)
        self._free = constraints.free_constraint(self.vocab)
        self._table_cache: dict = {}
        #: 词牌 -> its clause pattern (``cipai.learn_patterns``), recorded in the export at train time
        self.cipai: dict = dict(self.export.meta.get("cipai") or {})
        longest = max((constraints.Layout(n, tuple(e["clauses"]), tuple(e["marks"])).body_len
                       for n, e in self.cipai.items()), default=0)
        # every table set is padded to these rows: one decode program for free, forms, leniencies and 词牌
        self._states = max(constraints.max_states(), min(longest, self.n_ctx) + 3)
        release_freed_memory()  # the load's temporary buffers

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

    # prompts --------------------------------------------------------------------------
    def build_prompts(self, openings: str | Sequence[str] | None, title: str | None = None,
                      genre: str | None = None) -> list[str]:
        """The prompt texts for ``openings`` (see the module docstring for the three kinds).

        Args:
            openings: one opening, several, or None/empty.
            title: the title for openings that are not full prefixes.
            genre: the genre word (default: the export's).

        Raises:
            OptionError: characters outside the vocabulary, a prompt that fills the context, a
                full prefix combined with ``title``/``genre``, or a prompt that already has 】.
        """
        if isinstance(openings, str):
            openings = [openings]
        openings = [o.strip() for o in (openings or []) if o.strip()]
        genre_used = genre or self.genre
        if not openings and not title and genre is None:
            return [""]
        prompts = []
        for opening in openings or [""]:
            if "：【" in opening or ":【" in opening:
                if title or genre:
                    raise OptionError(f"opening {opening!r} is a full prefix (title 体裁：【…); "
                                      "drop --title/--genre or give only the first line")
                prompts.append(opening.replace(":【", "：【", 1))
                continue
            if not genre_used:
                raise OptionError("--genre: this export records no genre (no poetry_gpt.json); "
                                  "pass one, e.g. --genre 唐诗")
            prompts.append(prompt_prefix(title or "", genre_used, opening))
        for prompt in prompts:
            self._check_prompt(prompt, title, genre)
        return prompts

    def _check_prompt(self, prompt: str, title: str | None, genre: str | None) -> None:
        if CLOSE in prompt:
            raise OptionError(f"opening {prompt!r} already has the closing 】; give only the start of the poem")
        for option, text in (("--title", title or ""), ("--genre", genre or ""), ("opening", prompt)):
            missing = self.vocab.missing_chars(text)
            if missing:
                chars = "".join(missing)
                raise OptionError(f"{option}: {len(missing)} character(s) not in the model's vocabulary "
                                  f"({self.vocab.size} tokens): {chars!r}; replace them with common (simplified) "
                                  "characters the corpus uses, or leave them out")
        if 1 + len(prompt) >= self.n_ctx:
            raise OptionError(f"opening: the prompt {prompt[:20]!r}… is {1 + len(prompt)} tokens with [SEP], "
                              f"the model's context is {self.n_ctx}, leaving no room to generate; shorten it")

    # sampling -------------------------------------------------------------------------
    def generate(self, openings: str | Sequence[str] | None = None, *, title: str | None = None,
                 genre: str | None = None, num_samples: int = 1, top_k: int = DEFAULT_TOP_K, top_p: float = 1.0,
                 temperature: float = 1.0, repetition_penalty: float = 1.0, max_new_tokens: int | None = None,
                 batch_size: int = 8, seed: int | None = None, form: str | None = None,
                 acrostic: str | None = None, rhyme: bool = False, min_p: float = DEFAULT_MIN_P,
                 strict: bool = False, leniency: str = "standard") -> list[Sample]:
        """Sample ``num_samples`` poems for each opening.

        Args:
            openings: a full prefix (``春晓 唐诗：【春眠不觉晓``), a first line (``春眠不觉晓``),
                a list of them, or None (title only, or nothing at all).
            title: title for openings that are not full prefixes.
            genre: genre word (default: the export's most common genre).
            num_samples: samples per opening.
            top_k: sample among the k most likely characters (1 = greedy; values above the
                vocabulary size mean the whole vocabulary).
            top_p: keep the smallest set of those whose probability reaches p (1 = off).
            min_p: keep only those at least ``min_p`` times as likely as the most likely one
                (0 = off). It prunes hard where the model is sure (a clause end) and little where
                many characters fit: with a wide ``top_k`` it gives varied poems that keep their
                form (see the README's quality figures). Default: ``DEFAULT_MIN_P`` with
                ``DEFAULT_TOP_K``.
            temperature: divide logits by it (< 1 sharper, > 1 flatter).
            repetition_penalty: > 1 makes characters already in the poem (prompt included) less likely
                (as in transformers: positive logits divided by it, negative ones multiplied); punctuation
                is exempt.
            max_new_tokens: token budget per sample (default: all that fits the context after the
                longest prompt).
            batch_size: samples run together; the last batch is padded to this size (at most the
                number of samples) so one compiled program serves every batch.
            seed: seed of the first sample (sample i uses seed + i); None picks a random one.
            form: 五绝, 七绝, 五律 or 七律: constrain the body to that form (``poetry_gpt.verse.forms``); or a
                词牌 the model's corpus recorded (``cipai``): its clause lengths and marks (the title
                defaults to the tune's name).
            acrostic: characters that begin the clauses (with ``form``).
            rhyme: make the rhyme clauses rhyme (with ``form``; 中华新韵 groups).
            strict: follow the form's 格律 too (with one of the four forms): the tone patterns and the
                平水韵 rhyme of ``poetry_gpt.verse.metre``; every poem passes ``metre.check_poem`` at ``leniency``.
            leniency: ``standard`` (一三五不论, 孤平 and 三平尾 still forbidden) or ``strict`` (every position).

        Returns:
            One ``Sample`` per (opening, sample), openings in order.

        Raises:
            OptionError: an option is out of range or the prompt cannot be used.
        """
        plan = self.plan(openings, title=title, genre=genre, num_samples=num_samples, top_k=top_k, top_p=top_p,
                         temperature=temperature, repetition_penalty=repetition_penalty,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, form=form,
                         acrostic=acrostic, rhyme=rhyme, min_p=min_p, strict=strict, leniency=leniency)
        return self.decode(plan.rows, plan.sampling, plan.tables, batch_size)

    def plan(self, openings: str | Sequence[str] | None = None, *, num_samples: int = 1, seed: int | None = None,
             max_new_tokens: int | None = None, title: str | None = None, genre: str | None = None,
             form: str | None = None, acrostic: str | None = None, rhyme: bool = False, batch_size: int = 8,
             strict: bool = False, leniency: str = "standard", **sampling) -> Plan:
        """Check a request and turn it into rows to decode, without decoding (``generate`` = ``plan`` + ``decode``).

        Args:
            openings: as in ``generate``.
            num_samples: as in ``generate``.
            seed: as in ``generate``.
            max_new_tokens: as in ``generate``.
            title: as in ``generate``.
            genre: as in ``generate``.
            form: as in ``generate``.
            acrostic: as in ``generate``.
            rhyme: as in ``generate``.
            batch_size: checked only (``decode`` takes it).
            strict: as in ``generate``.
            leniency: as in ``generate``.
            **sampling: ``top_k``, ``top_p``, ``min_p``, ``temperature``, ``repetition_penalty`` (the
                defaults of ``generate`` where missing).

        Raises:
            OptionError: what ``generate`` raises, before any decoding.
        """
        unknown = set(sampling) - set(SAMPLING_DEFAULTS)
        if unknown:
            raise TypeError(f"plan() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        sampling = {**SAMPLING_DEFAULTS, **sampling}
        check_options(num_samples=num_samples, batch_size=batch_size, max_new_tokens=max_new_tokens, **sampling)
        form = form.strip() if isinstance(form, str) and form.strip() else None
        listed = [openings] if isinstance(openings, str) else list(openings or [])
        if form in self.cipai and title is None and not any("：【" in o or ":【" in o for o in listed):
            title = form  # a 词's title is its tune
        constraint, tables = self._constraint(form, acrostic, rhyme, strict, leniency)
        prompts = self.build_prompts(openings, title, genre)
        room = self.n_ctx - 1 - max(len(p) for p in prompts)
        if max_new_tokens is not None and max_new_tokens > room:
            raise OptionError(f"--max-new-tokens: at most {room} fit the {self.n_ctx}-token context after the "
                              f"longest prompt, got {max_new_tokens}")
        budget = max_new_tokens or room
        base_seed = secrets.randbelow(2**31 - 1) if seed is None else int(seed)
        rows = [Row(prompt, base_seed + i * num_samples + j, budget)
                for i, prompt in enumerate(prompts) for j in range(num_samples)]
        for row in rows:
            row.state = (constraint or self._free).initial_state(row.prompt, option="opening")
        if constraint:
            _check_form_fits(constraint, [r.state for r in rows], room, max_new_tokens, self.n_ctx)
        key = (tuple(sorted(sampling.items())), form, acrostic or "", bool(rhyme), bool(strict), leniency)
        return Plan(rows, sampling, tables, key)

    def decode(self, rows: Sequence[Row], sampling: dict, tables, batch_size: int = 8,
               on_tokens: Callable[[int, list], None] | None = None) -> list[Sample]:
        """Decode planned rows (of one or several ``plan`` calls with the same ``Plan.key``) in batches.

        Rows run ``batch_rows`` at a time in one compiled program for the longest budget; each row
        is cut to its own budget, so its poem is the one it gets alone (its seed decides it).

        Args:
            rows: ``Plan.rows``.
            sampling: ``Plan.sampling``.
            tables: ``Plan.tables``.
            batch_size: the most rows run together.
            on_tokens: streaming: called as ``on_tokens(first_row, ids_per_row)`` every few decode steps
                with the ids each row of the running batch has drawn so far (cut to its budget).

        Returns:
            One ``Sample`` per row, in order.
        """
        B = batch_rows(len(rows), batch_size)
        budget = max(r.budget for r in rows)
        samples, traces = [], dict(self.sampler.traces)
        for start in range(0, len(rows), B):
            chunk = list(rows[start:start + B])
            pad = B - len(chunk)
            chunk = chunk + chunk[:1] * pad
            stream = None if on_tokens is None else functools.partial(self._stream, on_tokens, start, chunk[:B - pad])
            t0 = time.perf_counter()
            result = self.sampler.run(
                [[SEP_ID] + self.vocab.encode(r.prompt) for r in chunk], [r.seed for r in chunk],
                max_new_tokens=budget, top_k=sampling["top_k"], top_p=sampling["top_p"],
                min_p=sampling["min_p"], temperature=sampling["temperature"],
                repetition_penalty=sampling["repetition_penalty"],
                active=[True] * (B - pad) + [False] * pad,
                constraint=constraints, constraint_state=self._constraint_state([r.state for r in chunk], tables),
                on_tokens=stream)
            seconds = time.perf_counter() - t0
            for row, ids in zip(chunk[:B - pad], result.tokens[:B - pad]):
                samples.append(self._sample(row.prompt, ids[:row.budget].tolist(), row.seed, seconds))
        if self.sampler.traces != traces:
            release_freed_memory()  # a new program was compiled: drop the compiler's scratch memory
        return samples

    @staticmethod
    def _stream(on_tokens, first_row: int, rows: Sequence[Row], tokens) -> None:
        on_tokens(first_row, [ids[:row.budget].tolist() for row, ids in zip(rows, tokens)])

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
        return Sample(prompt, text, split_body(text), closed, len(ids), seed, round(seconds, 4))

    # constraints ------------------------------------------------------------------------
    def _constraint(self, form, acrostic, rhyme, strict=False, leniency="standard") -> tuple:
        """``(DecodeConstraint or None for free sampling, its tables as tensors)``, kept for the last
        ``TABLE_CACHE`` settings: building them costs a few ms, a few percent of a short poem."""
        from ..verse.metre import check_leniency

        check_leniency(leniency)
        for option, value in (("--acrostic", acrostic), ("--rhyme", rhyme), ("--strict", strict)):
            if form is None and value:
                raise OptionError(f"{option}: needs --form ({', '.join(self.form_names())})")
        if strict and form in self.cipai:
            raise OptionError(f"--strict: a 词牌's pattern records clause lengths and marks, not tones; "
                              f"drop --strict for --form {form}")
        key = (form, acrostic or "", bool(rhyme), leniency if strict else None)
        if key not in self._table_cache:
            constraint = None if form is None else self._build_constraint(form, acrostic, rhyme, key[3])
            if len(self._table_cache) >= TABLE_CACHE:
                self._table_cache.pop(next(iter(self._table_cache)))
            self._table_cache[key] = (constraint, (constraint or self._free).as_tensors(self._states))
        return self._table_cache[key]

    def _build_constraint(self, form: str, acrostic, rhyme, strict: str | None):
        """The ``DecodeConstraint`` of a regulated form or of one of the model's 词牌."""
        if form not in self.cipai:
            try:
                return constraints.build_constraint(form, self.vocab, acrostic=acrostic, rhyme=rhyme, strict=strict)
            except OptionError as exc:
                if self.cipai and str(exc).startswith("--form: unknown form"):
                    raise OptionError(f"{exc}; or a 词牌 of this model's corpus: {', '.join(list(self.cipai)[:12])}"
                                      + (" …" if len(self.cipai) > 12 else "")) from None
                raise
        if rhyme:
            raise OptionError(f"--rhyme: a 词牌's pattern records no rhyme positions; drop --rhyme for --form {form}")
        entry = self.cipai[form]
        return constraints.layout_constraint(constraints.Layout(form, tuple(entry["clauses"]), tuple(entry["marks"])),
                                       self.vocab, acrostic=acrostic)

    def form_names(self) -> list[str]:
        """The ``form`` values this model takes: the four regulated forms, then its corpus's 词牌."""
        return [*FORM_NAMES, *self.cipai]

    @staticmethod
    def _constraint_state(states, tables) -> tuple:
        import numpy as np
        import tensorflow as tf

        state = tf.constant(np.array([s for s, _ in states], np.int32))
        rhyme = tf.constant(np.array([r for _, r in states], np.int32).reshape(len(states), constraints.RHYME_WIDTH))
        return state, rhyme, tables

    # the slow reference path ---------------------------------------------------------------
    def generate_eager(self, openings=None, *, title=None, genre=None, num_samples=1, top_k=DEFAULT_TOP_K, top_p=1.0,
                       temperature=1.0, repetition_penalty=1.0, max_new_tokens=None, batch_size=8,
                       seed=None, **unsupported) -> list[Sample]:
        """The same sampling through transformers' eager ``model.generate`` (slow; for benchmarks).

        Takes the arguments of ``generate`` except the form options and ``min_p`` (transformers'
        TensorFlow generate has none, so this path samples without it); rows of one prompt run
        together in batches. Sampling streams differ from the compiled path (same seed ≠ same poem).
        The free-sampling rule (no 】 before 【, no second 【 after it) holds here too
        (``FreeRuleProcessor``). Each batch resets TensorFlow's global random seed to its seed.
        """
        import tensorflow as tf
        from transformers import TFLogitsProcessorList

        if any(unsupported.get(k) for k in ("form", "acrostic", "rhyme", "min_p", "strict")):
            raise OptionError("--eager: --form/--acrostic/--rhyme/--strict/--min-p need the compiled sampler (transformers' "
                              "TensorFlow generate has no min-p); drop --eager")
        check_options(top_k, top_p, temperature, repetition_penalty, num_samples, batch_size, max_new_tokens)
        prompts = self.build_prompts(openings, title, genre)
        for prompt in prompts:
            self._free.initial_state(prompt, option="opening")  # refuses a second 【, as ``generate`` does
        rule = TFLogitsProcessorList([FreeRuleProcessor(self._free, self._constraint(None, None, False)[1])])
        base_seed = secrets.randbelow(2**31 - 1) if seed is None else int(seed)
        samples = []
        for i, prompt in enumerate(prompts):
            ids = [SEP_ID] + self.vocab.encode(prompt)
            budget = max_new_tokens or self.n_ctx - len(ids)
            for start in range(0, num_samples, batch_size):
                n = min(batch_size, num_samples - start)
                row_seed = base_seed + i * num_samples + start
                t0 = time.perf_counter()
                # transformers' TF sampling reuses a ``seed`` argument at every step (the same noise for each
                # token: a flat distribution repeats one character); unseeded, it draws each step's seed from
                # TensorFlow's global generator, seeded here so that the batch stays reproducible
                tf.random.set_seed(row_seed)
                out = self.model.generate(
                    tf.constant([ids] * n), attention_mask=tf.ones([n, len(ids)], tf.int32),
                    do_sample=top_k > 1, top_k=top_k, top_p=top_p, temperature=temperature,
                    repetition_penalty=repetition_penalty, max_new_tokens=budget,
                    eos_token_id=self.close_id, pad_token_id=PAD_ID, suppress_tokens=[PAD_ID, UNK_ID, SEP_ID],
                    logits_processor=rule)
                seconds = time.perf_counter() - t0
                for r, row in enumerate(out.numpy()[:, len(ids):]):
                    samples.append(self._sample(prompt, row.tolist(), row_seed + r, seconds))
        return samples


class FreeRuleProcessor:
    """The free-sampling automaton (``constraints.free_constraint``) as a transformers TF logits processor, for
    the eager path: each row's state is walked from the tokens written so far (prompt included), then
    the compiled path's own mask (``constraints.apply_constraint_tf``) is applied to the scores.

    Args:
        constraint: a ``DecodeConstraint`` without rhyme positions (the free one).
        tables: its ``as_tensors()``.
    """

    def __init__(self, constraint, tables):
        self.constraint, self.tables = constraint, tables

    def __call__(self, input_ids, scores, cur_len):
        """Mask ``scores`` [B, V] after the first ``cur_len`` tokens of ``input_ids`` [B, T] (eager tensors)."""
        import numpy as np
        import tensorflow as tf

        written = np.asarray(input_ids)[:, :int(cur_len)]
        state = np.zeros(len(written), np.int32)
        for column in written.T:
            state = self.constraint.next_state[state, column]
        return constraints.apply_constraint_tf(scores, tf.constant(state), tf.fill([len(written), constraints.RHYME_WIDTH], -1),
                                         self.tables)
