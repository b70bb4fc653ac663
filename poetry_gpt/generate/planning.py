"""Plan a request: the rows to decode (prompt, seed, budget, form state) and the constraint tables.

``FormTables`` owns the decode constraints of one model (free sampling, the four forms, its 词牌) and
keeps the tables of the last few settings; ``plan_rows`` turns checked prompts and a ``SamplingConfig``
into ``Row``s and refuses a form the context or the budget cannot finish.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..errors import OptionError
from ..sampling import SamplingConfig
from ..verse import forms
from . import constraints

FORM_NAMES = tuple(forms.FORMS)
TABLE_CACHE = 8  # constraint tables kept per generator (free sampling and the last forms used)


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
        config: the request's ``SamplingConfig``.
        tables: the constraint tables (free sampling or the form).
    """

    rows: list
    config: SamplingConfig
    tables: object

    @property
    def key(self) -> SamplingConfig:
        """Plans with equal keys can be decoded together in one batch (the sampler takes the draw
        options and tables once per batch, not per row): the config without its per-request counts."""
        return self.config.replace(num_samples=1, seed=None, max_new_tokens=None, batch_size=1)


class FormTables:
    """The decode constraints of one model: free sampling, the regulated forms and the model's 词牌.

    Args:
        vocab: the model's ``CharVocab``.
        cipai: 词牌 -> its clause pattern (``cipai.learn_patterns``), as the export records it.
        n_ctx: the model's context (bounds the longest 词牌's table).
    """

    def __init__(self, vocab, cipai: dict, n_ctx: int):
        self.vocab, self.cipai = vocab, cipai
        self.free = constraints.free_constraint(vocab)
        self.cache: dict = {}
        longest = max((constraints.Layout(n, tuple(e["clauses"]), tuple(e["marks"])).body_len
                       for n, e in cipai.items()), default=0)
        # every table set is padded to these rows: one decode program for free, forms, leniencies and 词牌
        self.states = max(constraints.max_states(), min(longest, n_ctx) + 3)

    def form_names(self) -> list[str]:
        """The ``form`` values this model takes: the four regulated forms, then its corpus's 词牌."""
        return [*FORM_NAMES, *self.cipai]

    def get(self, form, acrostic, rhyme, strict=False, leniency="standard",
            rhyme_book=constraints.DEFAULT_RHYME_BOOK) -> tuple:
        """``(DecodeConstraint or None for free sampling, its tables as tensors)``, kept for the last
        ``TABLE_CACHE`` settings: building them costs a few ms, a few percent of a short poem.

        Args:
            form: a regulated form or one of the model's 词牌 (None: free sampling).
            acrostic: as in ``constraints.build_constraint``.
            rhyme: as in ``constraints.build_constraint``.
            strict: follow the form's 格律 at ``leniency``.
            leniency: ``standard`` or ``strict``.
            rhyme_book: the book of ``rhyme`` (``pingshui`` or ``modern``).
        """
        from ..verse.metre import check_leniency

        check_leniency(leniency)
        constraints.check_rhyme_book(rhyme_book)
        for option, value in (("--acrostic", acrostic), ("--rhyme", rhyme), ("--strict", strict)):
            if form is None and value:
                raise OptionError(f"{option}: needs --form ({', '.join(self.form_names())})")
        if strict and form in self.cipai:
            raise OptionError(f"--strict: a 词牌's pattern records clause lengths and marks, not tones; "
                              f"drop --strict for --form {form}")
        key = (form, acrostic or "", bool(rhyme), leniency if strict else None, rhyme_book if rhyme or strict else None)
        if key not in self.cache:
            constraint = None if form is None else self._build(form, acrostic, rhyme, key[3], rhyme_book)
            if len(self.cache) >= TABLE_CACHE:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = (constraint, (constraint or self.free).as_tensors(self.states))
        return self.cache[key]

    def _build(self, form: str, acrostic, rhyme, strict: str | None, rhyme_book: str):
        """The ``DecodeConstraint`` of a regulated form or of one of the model's 词牌."""
        if form not in self.cipai:
            try:
                return constraints.build_constraint(form, self.vocab, acrostic=acrostic, rhyme=rhyme, strict=strict,
                                                    rhyme_book=rhyme_book)
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


def plan_rows(prompts: list[str], config: SamplingConfig, constraint, free, n_ctx: int) -> list[Row]:
    """One ``Row`` per (prompt, sample): seed ``seed + i``, the budget, the automaton state after the prompt.

    Args:
        prompts: the checked prompt texts.
        config: the request's options (``num_samples``, ``seed``, ``max_new_tokens``).
        constraint: the form's ``DecodeConstraint``, or None for free sampling.
        free: the free-sampling ``DecodeConstraint``.
        n_ctx: the model's context.

    Raises:
        OptionError: ``max_new_tokens`` does not fit the context, or a prompt cannot begin the form,
            or the form's poem cannot be finished in the tokens left.
    """
    room = n_ctx - 1 - max(len(p) for p in prompts)
    if config.max_new_tokens is not None and config.max_new_tokens > room:
        raise OptionError(f"--max-new-tokens: at most {room} fit the {n_ctx}-token context after the "
                          f"longest prompt, got {config.max_new_tokens}")
    budget = config.max_new_tokens or room
    base_seed = secrets.randbelow(2**31 - 1) if config.seed is None else int(config.seed)
    n = config.num_samples
    rows = [Row(prompt, base_seed + i * n + j, budget) for i, prompt in enumerate(prompts) for j in range(n)]
    for row in rows:
        row.state = (constraint or free).initial_state(row.prompt, option="opening")
    if constraint:
        check_form_fits(constraint, [r.state for r in rows], room, config.max_new_tokens, n_ctx)
    return rows


def check_form_fits(constraint, states, room: int, max_new_tokens: int | None, n_ctx: int) -> None:
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
