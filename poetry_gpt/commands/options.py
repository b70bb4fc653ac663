"""The sampling options of every command that samples (``generate``, ``chat``, ``eval``), declared once.

Each option's default is ``SamplingConfig``'s and its help text is written here only; a command picks the
options it takes and may change a default or add to a help text (``eval``'s batch also runs the
validation loss). The values reach the library as one ``SamplingConfig`` (``sampling_config``).
"""
from __future__ import annotations

import click

from ..sampling import SamplingConfig, field_names

FORMS_METAVAR = "[五绝|七绝|五律|七律|词牌]"
_D = SamplingConfig()

#: SamplingConfig field -> (its click parameter declarations, keyword arguments), in --help order
SAMPLING_OPTIONS = {
    "top_k": (("--top-k",), dict(type=int, default=_D.top_k, show_default=True,
                                 help="Sample among the k most likely characters (≥ 1; 1 = greedy).")),
    "top_p": (("--top-p",), dict(type=float, default=_D.top_p, show_default=True,
                                 help="Nucleus: keep the most likely characters up to this probability mass, "
                                      "in (0, 1].")),
    "min_p": (("--min-p",), dict(type=float, default=_D.min_p, show_default=True,
                                 help="Drop characters less likely than this fraction of the most likely one, "
                                      "in [0, 1) (0 = off; top-k 10 with min-p 0 is the old, more repetitive "
                                      "default).")),
    "temperature": (("--temperature",), dict(type=float, default=_D.temperature, show_default=True,
                                             help="> 0; divides the logits: below 1 is more conservative, "
                                                  "above 1 more adventurous.")),
    "repetition_penalty": (("--repetition-penalty",), dict(
        type=float, default=_D.repetition_penalty, show_default=True,
        help="> 0; above 1 discourages characters already in the poem (1 = off).")),
    "max_new_tokens": (("--max-new-tokens",), dict(type=int, default=_D.max_new_tokens,
                                                   help="Characters to generate at most  "
                                                        "[default: all that fit the context]")),
    "num_samples": (("-n", "--num-samples"), dict(type=int, default=_D.num_samples, show_default=True,
                                                  help="Poems per opening (≥ 1).")),
    "batch_size": (("--batch-size",), dict(type=int, default=_D.batch_size, show_default=True,
                                           help="Poems generated together (≥ 1).")),
    "seed": (("--seed",), dict(type=int, default=_D.seed,
                               help="Seed of the first poem (poem i uses seed+i)  "
                                    "[default: random, reported on stderr]")),
    "form": (("--form",), dict(default=_D.form, metavar=FORMS_METAVAR,
                               help="Constrain the body to a regulated form: 五绝, 七绝, 五律 or 七律 (or 五言绝句 … "
                                    "七言律诗); or to a 词牌 the model's corpus recorded (e.g. 浣溪沙: its clause "
                                    "lengths and marks; the title defaults to it).")),
    "strict": (("--strict",), dict(is_flag=True,
                                   help="With a regulated --form: also follow its 格律, the tone pattern (平仄, 粘 "
                                        "and 对) and the 平水韵 rhyme; every poem passes `poetry-gpt check` at "
                                        "--leniency.")),
    "leniency": (("--leniency",), dict(type=click.Choice(["standard", "strict"]), default=_D.leniency,
                                       show_default=True,
                                       help="With --strict: standard frees the 1st/3rd(/5th) characters (一三五不论) "
                                            "but still forbids 孤平 and 三平尾; strict fixes every position.")),
    "acrostic": (("--acrostic",), dict(default=_D.acrostic,
                                       help="Characters that begin the clauses (藏头; needs --form).")),
    "rhyme": (("--rhyme",), dict(is_flag=True, help="Make the rhyme clauses rhyme (needs --form), in "
                                                    "--rhyme-book.")),
    "rhyme_book": (("--rhyme-book",), dict(default=_D.rhyme_book, show_default=True, metavar="[pingshui|modern]",
                                           help="The rhyme book of --rhyme: pingshui (平水韵 平声 groups, no rhyme "
                                                "character twice; the default, as our corpora are classical) or "
                                                "modern (中华新韵 finals).")),
}
assert set(SAMPLING_OPTIONS) == set(field_names()), "every SamplingConfig field has its option"


def sampling_options(names=tuple(SAMPLING_OPTIONS), **changes):
    """Decorator adding the sampling options ``names`` (``SamplingConfig`` fields) to a command.

    Args:
        names: the fields to offer, in ``SAMPLING_OPTIONS`` order.
        **changes: field -> click keyword arguments that replace the shared ones; ``help_suffix`` is
            appended to the shared help text.
    """
    def decorate(f):
        for name in reversed([n for n in SAMPLING_OPTIONS if n in names]):
            decls, kwargs = SAMPLING_OPTIONS[name]
            kwargs = {**kwargs, **changes.get(name, {})}
            kwargs["help"] += kwargs.pop("help_suffix", "")
            f = click.option(*decls, name, **kwargs)(f)
        return f
    return decorate


def sampling_config(values: dict, **defaults) -> SamplingConfig:
    """Take the ``SamplingConfig`` fields out of a command's ``values`` and check them (before any model loads).

    Args:
        values: the command's keyword arguments; the sampling ones are removed.
        **defaults: values for fields the command does not offer, or whose option was left at None.

    Raises:
        OptionError: a value out of range, naming the option.
    """
    given = {name: values.pop(name) for name in field_names() if name in values}
    return SamplingConfig(**{**defaults, **{k: v for k, v in given.items() if v is not None or k not in defaults}})
