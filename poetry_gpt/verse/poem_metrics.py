"""Figures over poem texts, no model: what `eval` reports for samples and `corpus stats` for a corpus.

The same figures are computed for generated samples (``sample_figures``) and for
a corpus (``corpus_figures``), so reports can show model and corpus side by side.
Shares are floats in [0, 1], or None when there is nothing to measure (e.g. the
rhyme rate of a list without a regular poem).

Definitions:

* closure rate: share of generated texts whose body was closed with 】.
* form rates: share of bodies that are regular (``forms.check``), overall and per form;
  in ``sample_figures`` unclosed samples count as irregular.
* rhyme rate: among regular bodies, the share whose rhyme clauses rhyme
  (modern-final approximation, see ``poetry_gpt.verse.forms``).
* distinct-n: distinct character n-grams / all n-grams, pooled over bodies; n-grams are
  taken inside clauses (punctuation removed, never across a clause mark). It falls as the
  text grows, so a corpus is compared with samples at the samples' size
  (``distinct_n_at_size``).
* copy rate: share of generated clauses of at least ``min_len`` characters that occur
  verbatim as a clause of a training poem, and share of bodies equal to a training body.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from . import forms
from .forms import extract_body

_MARKS_TO_NEWLINE = str.maketrans({m: "\n" for m in forms.CLAUSE_MARKS})


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def closure_rate(samples: Iterable[str | tuple[str, bool]]) -> float | None:
    """Share of generated texts that closed their body with 】.

    Args:
        samples: generated texts, or ``(text, closed)`` pairs when the generator knows
            (e.g. it stopped at a length limit).
    """
    flags = [s[1] if isinstance(s, tuple) else extract_body(s)[1] for s in samples]
    return _share(sum(flags), len(flags))


def form_rates(bodies: Sequence[str]) -> dict[str, float | None]:
    """Share of regular bodies, overall (key ``regular``) and per form (keys of ``forms.FORMS``).

    Args:
        bodies: poem bodies.
    """
    return _form_rates([forms.check(b) for b in bodies])


def _form_rates(reports: Sequence[forms.FormReport]) -> dict[str, float | None]:
    found = Counter(r.form for r in reports)
    rates = {"regular": _share(len(reports) - found[None], len(reports))}
    rates.update({name: _share(found[name], len(reports)) for name in forms.FORMS})
    return rates


def rhyme_rate(bodies: Iterable[str]) -> float | None:
    """Among regular bodies, the share that rhyme.

    Args:
        bodies: poem bodies (irregular ones are ignored).
    """
    return _rhyme_rate([forms.check(b) for b in bodies])


def _rhyme_rate(reports: Sequence[forms.FormReport]) -> float | None:
    regular = [r for r in reports if r.regular]
    return _share(sum(r.rhymes for r in regular), len(regular))


def _clause_texts(body: str) -> list[str]:
    return [c for c in forms.split_clauses(body)[0] if c]


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Distinct character n-grams / all n-grams, inside clauses, pooled over all bodies.

    Args:
        texts: poem bodies.
        n: the n-gram length (1 or 2 in reports).
    """
    kept = _ngrams(texts, n)
    return _share(len(kept), sum(kept.values()))


def _ngrams(texts: Iterable[str], n: int) -> Counter:
    """Character n-grams inside clauses (never across a clause mark or a poem), counted."""
    return Counter(_gram_list("\n".join(texts), n))


def _gram_list(text: str, n: int) -> list[str]:
    """The n-grams of ``text`` in order, inside clauses only."""
    text = text.translate(_MARKS_TO_NEWLINE)  # one line per clause
    return [g for g in map("".join, zip(*(text[i:] for i in range(n)))) if "\n" not in g]


def distinct_n_at_size(bodies: Sequence[str], n: int, grams: int, draws: int = 20,
                       seed: int = 0) -> float | None:
    """distinct-n of ``bodies`` measured on random subsets holding ``grams`` n-grams, averaged.

    distinct-n falls as a text grows (more n-grams, more repeats), so the distinct-n of 100
    short samples cannot be compared with that of 5,000 corpus poems. This takes whole
    poems in a random order until ``grams`` n-grams are pooled (the last poem cut to fit),
    ``draws`` times, and averages: the corpus's figure at the samples' size.

    Args:
        bodies: poem bodies to draw from (e.g. the training poems).
        n: the n-gram length.
        grams: n-grams per subset (e.g. ``ngram_count`` of the samples).
        draws: subsets averaged.
        seed: the draws' seed.

    Returns:
        The mean distinct-n, or None when ``grams`` ≤ 0 or the bodies hold fewer n-grams.
    """
    import random

    if grams <= 0:
        return None
    rng = random.Random(seed)
    values = []
    for _ in range(draws):
        pooled: list[str] = []
        for i in rng.sample(range(len(bodies)), len(bodies)):
            pooled += _gram_list(bodies[i], n)
            if len(pooled) >= grams:
                break
        else:
            return None  # all the bodies together hold fewer n-grams
        values.append(len(set(pooled[:grams])) / grams)
    return sum(values) / len(values)


def ngram_count(texts: Iterable[str], n: int) -> int:
    """How many character n-grams (inside clauses) ``texts`` hold: the size ``distinct_n`` divides by.

    Args:
        texts: poem bodies.
        n: the n-gram length.
    """
    return sum(_ngrams(texts, n).values())


class CopyIndex:
    """The clauses and bodies of training poems, for ``copy_rate``; build once, reuse.

    Args:
        training_bodies: bodies of the training poems.
        min_len: only clauses of at least this many characters are kept.
    """

    def __init__(self, training_bodies: Iterable[str], min_len: int = 5):
        self.min_len = min_len
        self.bodies: set[str] = set()
        self.clauses: set[str] = set()
        for body in training_bodies:
            self.bodies.add(body)
            self.clauses.update(c for c in _clause_texts(body) if len(c) >= min_len)


def copy_rate(bodies: Sequence[str], training_bodies: Iterable[str] | CopyIndex,
              min_len: int = 5) -> dict[str, float | int | None]:
    """How much generated text is copied from the training poems.

    Args:
        bodies: generated bodies.
        training_bodies: bodies of the training poems, or a ``CopyIndex`` of them
            (its ``min_len`` is used then).
        min_len: clauses shorter than this are not checked.

    Returns:
        ``clauses`` (generated clauses checked), ``clause_copy`` (share of them found verbatim
        as a training clause) and ``poem_copy`` (share of bodies equal to a training body).
    """
    index = training_bodies if isinstance(training_bodies, CopyIndex) else CopyIndex(training_bodies, min_len)
    clauses = [c for b in bodies for c in _clause_texts(b) if len(c) >= index.min_len]
    return {
        "clauses": len(clauses),
        "clause_copy": _share(sum(c in index.clauses for c in clauses), len(clauses)),
        "poem_copy": _share(sum(b in index.bodies for b in bodies), len(bodies)),
    }


def _figures(form_bodies: Sequence[str], text_bodies: Sequence[str]) -> dict[str, float | int | None]:
    reports = [forms.check(b) for b in form_bodies]
    figures: dict[str, float | int | None] = {"poems": len(reports)}
    figures.update(_form_rates(reports))
    figures["rhyme_rate"] = _rhyme_rate(reports)
    figures["distinct_1"] = distinct_n(text_bodies, 1)
    figures["distinct_2"] = distinct_n(text_bodies, 2)
    return figures


def corpus_figures(bodies: Sequence[str]) -> dict[str, float | int | None]:
    """Form, rhyme and distinct-n figures of a list of bodies (a corpus, or any bodies).

    Args:
        bodies: poem bodies.

    Returns:
        ``poems``, ``regular``, one key per form, ``rhyme_rate``, ``distinct_1``, ``distinct_2``.
    """
    return _figures(bodies, bodies)


def sample_figures(samples: Sequence[str | tuple[str, bool]],
                   training_bodies: Iterable[str] | CopyIndex | None = None,
                   min_len: int = 5) -> dict[str, float | int | None]:
    """The ``corpus_figures`` of generated samples plus ``closure_rate`` and the copy rates.

    Form rates count unclosed samples as irregular; distinct-n and copy rates use the
    bodies of all samples.

    Args:
        samples: generated texts, or ``(text, closed)`` pairs (see ``closure_rate``).
        training_bodies: training bodies (or a ``CopyIndex``) for the copy rates; None skips them.
        min_len: clause length from which copies are counted.
    """
    pairs = [(extract_body(s[0])[0], s[1]) if isinstance(s, tuple) else extract_body(s) for s in samples]
    bodies = [b for b, _ in pairs]
    figures = _figures([b if closed else "" for b, closed in pairs], bodies)
    figures["closure_rate"] = _share(sum(closed for _, closed in pairs), len(pairs))
    if training_bodies is not None:
        figures.update(copy_rate(bodies, training_bodies, min_len))
    return figures


def metre_block(bodies: Sequence[str], titles: Sequence[str] | None = None, patterns: dict | None = None) -> dict:
    """The 格律 figures of ``eval``: for the regular bodies the 平水韵 rhyme rate and the shares passing the tone
    check (``metre.metre_figures``) with the per-position tone accuracy (``metre.tone_accuracy``); for
    bodies whose title is a recorded 词牌, the format accuracy (``cipai.format_accuracy``).

    Args:
        bodies: poem bodies ("" for an unfinished one).
        titles: their titles (None: no format accuracy).
        patterns: the 词牌 patterns (``cipai.learn_patterns``; None or {}: no format accuracy).

    Returns:
        ``metre.corpus_metre``'s figures (or its ``error``) plus ``tone_accuracy`` and ``format_accuracy``.
    """
    from . import cipai, metre

    block = metre.corpus_metre(list(bodies))
    if "error" not in block:
        block["tone_accuracy"] = metre.tone_accuracy(bodies, block["script"])
    if titles is not None and patterns:
        block["format_accuracy"] = cipai.format_accuracy(zip(titles, bodies), patterns)
    return block
