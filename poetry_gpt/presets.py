"""Where the named presets (``--config tiny|small|base|medium``) come from: the project's ``configs.py``.

Users edit the presets in the repository's top-level ``configs.py``. It is read from the file, never
imported as a top-level module named ``configs`` (a name a user's own project may already use):

* from a checkout or an editable install, the ``configs.py`` beside the ``poetry_gpt`` folder, so an
  edit takes effect at once;
* from a wheel, the copy ``setup.py`` ships inside the package as ``poetry_gpt/_configs.py``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

from .errors import EnvironmentProblem, InputError

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED = "_configs.py"  # the name setup.py gives its copy inside the package


def presets_file() -> Path:
    """The ``configs.py`` in use: the checkout's if there is one, else the copy shipped in the wheel."""
    for candidate in (PACKAGE_DIR.parent / "configs.py", PACKAGE_DIR / SHIPPED):
        if candidate.is_file():
            return candidate
    raise EnvironmentProblem(f"no presets: neither {PACKAGE_DIR.parent / 'configs.py'} nor {PACKAGE_DIR / SHIPPED} "
                             "exists; reinstall poetry_gpt (pip install .) or restore configs.py")


def load_presets(path: str | Path | None = None) -> Mapping[str, Mapping[str, Mapping[str, Any]]]:
    """The ``PRESETS`` mapping of a presets file.

    Args:
        path: a ``configs.py``-style file (default: ``presets_file()``).

    Raises:
        InputError: the file does not run (its line is named); EnvironmentProblem: it defines no ``PRESETS``.
    """
    path = Path(path) if path is not None else presets_file()
    spec = importlib.util.spec_from_file_location("poetry_gpt._presets_file", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # not put in sys.modules: no global name is taken
    except SyntaxError as exc:
        raise InputError(f"{path}:{exc.lineno}: {exc.msg}; fix the preset file (see README, train)") from None
    except Exception as exc:  # an edit can raise anything at import
        raise InputError(f"{path}: {type(exc).__name__} while reading the presets ({exc}); fix the file") from None
    presets = getattr(module, "PRESETS", None)
    if not isinstance(presets, Mapping):
        raise EnvironmentProblem(f"{path}: defines no PRESETS mapping; restore it from the repository")
    return presets
