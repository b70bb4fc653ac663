"""Exceptions the library raises, and the one helper (``require``/``Rule``) that checks an option.

Every message names the file and line (or the option) and says what to do.
"""


class PoetryGPTError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""


class InputError(PoetryGPTError):
    """A raw.txt, JSON or other input file cannot be used as given."""


class OptionError(PoetryGPTError):
    """An option value is invalid (names the option and the valid choices)."""


class DataDirError(PoetryGPTError):
    """A DATA_DIR is missing, incomplete or inconsistent."""


class RunDirError(PoetryGPTError):
    """A RUN_DIR is missing, incomplete or does not match the request."""


class EnvironmentProblem(PoetryGPTError):
    """The installed TensorFlow / Keras / transformers cannot work together."""


def require(ok, option: str, message: str) -> None:
    """Raise ``OptionError("OPTION: MESSAGE")`` unless ``ok``: the one way options are checked.

    Args:
        ok: the condition the value must meet.
        option: the option as the user typed it, e.g. ``--top-k``.
        message: what it must be, and what it was (``must be ≥ 1, got 0``).
    """
    if not ok:
        raise OptionError(f"{option}: {message}")


class Rule:
    """One option's range: ``name`` (argument), ``option`` (CLI spelling), ``test`` (value -> bool, numbers or
    tensors) and ``expected`` (what it must be); ``check`` raises ``"OPTION: EXPECTED, got VALUE"``."""

    __slots__ = ("name", "option", "test", "expected")

    def __init__(self, name: str, option: str, test, expected: str):
        self.name, self.option, self.test, self.expected = name, option, test, expected

    def check(self, value) -> None:
        """Raise ``OptionError`` when ``value`` (None is never checked) breaks the rule."""
        if value is not None:
            require(self.test(value), self.option, f"{self.expected}, got {value}")


def check_rules(rules, values: dict) -> None:
    """Check ``values[rule.name]`` against each rule in order (names missing from ``values`` are skipped).

    Raises:
        OptionError: naming the first bad option and its valid range.
    """
    for rule in rules:
        if rule.name in values:
            rule.check(values[rule.name])
