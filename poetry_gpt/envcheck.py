"""Check that the installed TensorFlow / Keras / transformers combination can work.

``environment_report`` collects versions and problems; ``require_compatible`` raises
``EnvironmentProblem`` with the first problem in one line. Commands that need
TensorFlow call it before doing anything else.
"""
from __future__ import annotations

import os
import platform
import re
from importlib import metadata

from . import __version__

TF_SERIES = "2.21"
TRANSFORMERS_MIN, TRANSFORMERS_MAX = (4, 57, 6), (5, 0, 0)
RUN_LIBRARIES = ("tensorflow", "tf-keras", "transformers", "tokenizers")  # what a run records in run.json


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of Python, poetry_gpt and the libraries a run depends on (None: not installed)."""
    return {"python": platform.python_version(), "poetry_gpt": __version__,
            **{name: _version(name) for name in RUN_LIBRARIES}}


def _tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch) from the leading digits of each part: "5.0.0rc1" -> (5, 0, 0)."""
    parts = []
    for p in version.split(".")[:3]:
        digits = re.match(r"\d*", p).group()
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def environment_report(import_tf: bool = True) -> dict:
    """Versions, devices and problems of this installation.

    Args:
        import_tf: also import TensorFlow and transformers' TF GPT-2 to check they load.
    """
    problems: list[str] = []
    versions = {name: _version(name) for name in
                ("tensorflow", "tensorflow-cpu", "tf-keras", "keras", "transformers", "tokenizers", "click")}
    report = {"python": platform.python_version(), "versions": versions,
              "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"), "problems": problems}
    tf_version = versions["tensorflow"] or versions["tensorflow-cpu"]
    if tf_version is None:
        problems.append("TensorFlow is not installed: pip install 'tensorflow==2.21.*'")
    elif not tf_version.startswith(TF_SERIES + "."):
        problems.append(f"TensorFlow {tf_version} is installed; poetry_gpt is tested with {TF_SERIES}.*: "
                        f"pip install 'tensorflow=={TF_SERIES}.*' 'tf-keras=={TF_SERIES}.*'")
    if versions["tf-keras"] is None:
        problems.append(f"tf-keras is not installed (transformers' TF models need Keras 2): pip install 'tf-keras=={TF_SERIES}.*'")
    elif tf_version and versions["tf-keras"].rsplit(".", 1)[0] != tf_version.rsplit(".", 1)[0]:
        problems.append(f"tf-keras {versions['tf-keras']} does not match TensorFlow {tf_version}: "
                        f"pip install 'tf-keras=={tf_version.rsplit('.', 1)[0]}.*'")
    tv = versions["transformers"]
    if tv is None:
        problems.append("transformers is not installed: pip install 'transformers>=4.57.6,<5'")
    elif _tuple(tv) >= TRANSFORMERS_MAX:
        problems.append(f"transformers {tv} is installed, but version 5 removed every TensorFlow model: "
                        "pip install 'transformers>=4.57.6,<5'")
    elif _tuple(tv) < TRANSFORMERS_MIN:
        problems.append(f"transformers {tv} is older than tested: pip install 'transformers>=4.57.6,<5'")
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        problems.append(f"TF_USE_LEGACY_KERAS={os.environ.get('TF_USE_LEGACY_KERAS')!r}: tf.keras would be Keras 3, "
                        "which transformers' TF models cannot use; unset it or set TF_USE_LEGACY_KERAS=1")
    flags = cpu_flags()
    report["cpu"] = {"cores": os.cpu_count(), "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}
    if import_tf and not problems:
        try:
            import tensorflow as tf

            layer_module = type(tf.keras.layers.Layer()).__module__
            report["tf.keras"] = layer_module.split(".")[0]
            if not layer_module.startswith("tf_keras"):
                problems.append(f"tf.keras is {layer_module.split('.')[0]} (Keras 3), not tf_keras: TensorFlow was imported before "
                                "poetry_gpt set TF_USE_LEGACY_KERAS=1; import poetry_gpt first or export TF_USE_LEGACY_KERAS=1")
            report["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
            from transformers import TFGPT2LMHeadModel  # noqa: F401
        except Exception as exc:  # any import failure is the answer here
            problems.append(f"importing TensorFlow / transformers' TFGPT2LMHeadModel failed: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
    return report


def require_compatible() -> None:
    """Raise ``EnvironmentProblem`` when TensorFlow-based commands cannot work here."""
    from .errors import EnvironmentProblem

    problems = environment_report(import_tf=True)["problems"]
    if problems:
        raise EnvironmentProblem(problems[0] + " (run `poetry-gpt env` for the full report)")


