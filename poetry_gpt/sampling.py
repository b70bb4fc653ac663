"""How to sample poems: ``SamplingConfig``, the one frozen set of sampling and form options, checked once.

The CLI (``generate``, ``chat``, ``eval``), the API (``PoemGenerator.generate``/``plan``), the web server,
the SavedModel's defaults and the per-epoch samples of ``train`` all build one ``SamplingConfig`` instead
of passing each option along. Its numeric rules (``RULES``) are also run on tensors inside the
SavedModel, so a bad value gets the same words everywhere; its word choices (``CHOICE_RULES``: the 格律
leniency, the rhyme book) are checked with them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import Rule, check_rules

# Default sampling: top-k 64 with min-p 0.05 keeps at least as many free samples in a regular form as
# top-k 10 did, with much more varied wording (README "Form against variety"). 64 is one of the sampler's
# compile caps (``sampler.top_k_cap``), so it costs what top-k 10 costs.
DEFAULT_TOP_K = 64
DEFAULT_MIN_P = 0.05
DEFAULT_BATCH_SIZE = 8

#: the numeric rules, in the order they are checked; the tests take numbers or tensors
#: (``poetry_gpt.serve.saved_model`` runs them in the graph). None (``max_new_tokens``, ``seed``) is never checked.
RULES = (
    Rule("top_k", "--top-k", lambda v: v >= 1, "must be ≥ 1 (1 = greedy)"),
    Rule("top_p", "--top-p", lambda v: (v > 0.0) & (v <= 1.0), "must be in (0, 1] (1 = off)"),
    Rule("min_p", "--min-p", lambda v: (v >= 0.0) & (v < 1.0), "must be in [0, 1) (0 = off)"),
    Rule("temperature", "--temperature", lambda v: v > 0.0, "must be > 0"),
    Rule("repetition_penalty", "--repetition-penalty", lambda v: v > 0.0, "must be > 0 (1 = off)"),
    Rule("num_samples", "--num-samples", lambda v: v >= 1, "must be ≥ 1"),
    Rule("batch_size", "--batch-size", lambda v: v >= 1, "must be ≥ 1"),
    Rule("max_new_tokens", "--max-new-tokens", lambda v: v >= 1, "must be ≥ 1"),
)
#: 格律 leniencies (``verse.metre`` reads them from here): ``standard`` (一三五不论) or ``strict`` (every position)
LENIENCIES = ("standard", "strict")
#: the rhyme books ``--rhyme`` can follow: the 平水韵 平声 groups (the default: every corpus we read is classical
#: verse) or the modern 中华新韵 finals
RHYME_BOOKS = ("pingshui", "modern")
DEFAULT_RHYME_BOOK = "pingshui"
#: the word options, checked after ``RULES``
CHOICE_RULES = (
    Rule("leniency", "--leniency", lambda v: v in LENIENCIES, "must be standard or strict"),
    Rule("rhyme_book", "--rhyme-book", lambda v: v in RHYME_BOOKS,
         "must be pingshui (平水韵 平声 groups) or modern (中华新韵 finals)"),
)
#: the options that shape each decode step (``Sampler.run`` takes them), as opposed to how many poems,
#: their seeds, budget and form
DRAW_OPTIONS = ("top_k", "top_p", "min_p", "temperature", "repetition_penalty")


@dataclass(frozen=True)
class SamplingConfig:
    """The sampling and form options of a request (the prompt itself, title and genre, is not part of it).

    Args:
        top_k: sample among the k most likely characters (1 = greedy; above the vocabulary size: all of it).
        top_p: keep the smallest set of those whose probability reaches p (1 = off).
        min_p: keep only those at least ``min_p`` times as likely as the most likely one (0 = off). It prunes
            hard where the model is sure (a clause end) and little where many characters fit: with a wide
            ``top_k`` it gives varied poems that keep their form.
        temperature: divide the logits by it (< 1 sharper, > 1 flatter).
        repetition_penalty: > 1 makes characters already in the poem (prompt included) less likely (as in
            transformers: positive logits divided by it, negative ones multiplied); punctuation is exempt.
        max_new_tokens: token budget per poem (None: all that fits the context after the longest prompt).
        num_samples: poems per opening.
        batch_size: poems run together.
        seed: seed of the first poem (poem i uses seed + i); None picks a random one.
        form: 五绝, 七绝, 五律 or 七律, or a 词牌 the model's corpus recorded (None: free sampling).
        acrostic: characters that begin the clauses (with ``form``).
        rhyme: make the rhyme clauses rhyme (with ``form``), in ``rhyme_book``.
        rhyme_book: ``pingshui`` (平水韵 平声 groups, no rhyme character twice) or ``modern`` (中华新韵 finals).
        strict: follow the form's 格律 too (tone patterns and 平水韵 rhyme).
        leniency: ``standard`` or ``strict`` (with ``strict``).

    Raises:
        OptionError: a numeric option out of range (``RULES``) or an unknown word (``CHOICE_RULES``), naming
            the CLI option.
    """

    top_k: int = DEFAULT_TOP_K
    top_p: float = 1.0
    min_p: float = DEFAULT_MIN_P
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int | None = None
    num_samples: int = 1
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int | None = None
    form: str | None = None
    acrostic: str | None = None
    rhyme: bool = False
    rhyme_book: str = DEFAULT_RHYME_BOOK
    strict: bool = False
    leniency: str = "standard"

    def __post_init__(self):
        values = dataclasses.asdict(self)
        check_rules(RULES, values)
        check_rules(CHOICE_RULES, values)

    @classmethod
    def of(cls, config: "SamplingConfig | None" = None, **options) -> "SamplingConfig":
        """``config`` (default: the defaults) with ``options`` replaced; an unknown name is a ``TypeError``."""
        return dataclasses.replace(config or cls(), **options) if options else (config or cls())

    def replace(self, **options) -> "SamplingConfig":
        """A checked copy with some options changed."""
        return dataclasses.replace(self, **options)

    def draw(self) -> dict:
        """The per-step options (``DRAW_OPTIONS``) as keyword arguments of ``Sampler.run``."""
        return {name: getattr(self, name) for name in DRAW_OPTIONS}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_names() -> tuple[str, ...]:
    """The option names ``SamplingConfig`` takes."""
    return tuple(f.name for f in dataclasses.fields(SamplingConfig))
