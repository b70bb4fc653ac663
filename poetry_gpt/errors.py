"""Exceptions the library raises; ``cli.py`` turns them into one-line messages.

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
