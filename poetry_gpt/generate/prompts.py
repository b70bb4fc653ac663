"""Turn openings, a title and a genre into checked prompt texts (``title 体裁：【opening``).

What ``PoemGenerator.generate`` accepts as an *opening* is described in ``generator``'s docstring;
this module builds the prompt of each one and refuses what the model cannot continue.
"""
from __future__ import annotations

from typing import Sequence

from ..data.corpus import prompt_prefix
from ..errors import OptionError
from ..verse.forms import CLOSE


def is_full_prefix(opening: str) -> bool:
    """Whether an opening is a corpus-style prefix (``title 体裁：【…``, recognised by ``：【`` or ``:【``)."""
    return "：【" in opening or ":【" in opening


def build_prompts(openings: str | Sequence[str] | None, title: str | None, genre: str | None, *,
                  default_genre: str | None, vocab, n_ctx: int) -> list[str]:
    """The prompt texts for ``openings``.

    Args:
        openings: one opening, several, or None/empty.
        title: the title for openings that are not full prefixes.
        genre: the genre word (default: ``default_genre``).
        default_genre: the model's genre.
        vocab: the model's ``CharVocab``.
        n_ctx: the model's context.

    Raises:
        OptionError: characters outside the vocabulary, a prompt that fills the context, a
            full prefix combined with ``title``/``genre``, or a prompt that already has 】.
    """
    if isinstance(openings, str):
        openings = [openings]
    openings = [o.strip() for o in (openings or []) if o.strip()]
    genre_used = genre or default_genre
    if not openings and not title and genre is None:
        return [""]
    prompts = []
    for opening in openings or [""]:
        if is_full_prefix(opening):
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
        check_prompt(prompt, title, genre, vocab, n_ctx)
    return prompts


def check_prompt(prompt: str, title: str | None, genre: str | None, vocab, n_ctx: int) -> None:
    """Refuse a prompt with 】, characters outside ``vocab`` (title, genre, then the prompt) or no room left.

    Args:
        prompt: the prompt text.
        title: the ``--title`` it was built with.
        genre: the ``--genre`` it was built with.
        vocab: the model's ``CharVocab``.
        n_ctx: the model's context.
    """
    if CLOSE in prompt:
        raise OptionError(f"opening {prompt!r} already has the closing 】; give only the start of the poem")
    for option, text in (("--title", title or ""), ("--genre", genre or ""), ("opening", prompt)):
        missing = vocab.missing_chars(text)
        if missing:
            chars = "".join(missing)
            raise OptionError(f"{option}: {len(missing)} character(s) not in the model's vocabulary "
                              f"({vocab.size} tokens): {chars!r}; replace them with common (simplified) "
                              "characters the corpus uses, or leave them out")
    if 1 + len(prompt) >= n_ctx:
        raise OptionError(f"opening: the prompt {prompt[:20]!r}… is {1 + len(prompt)} tokens with [SEP], "
                          f"the model's context is {n_ctx}, leaving no room to generate; shorten it")
