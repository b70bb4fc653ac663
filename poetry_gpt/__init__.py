"""poetry_gpt: train your own GPT-2 poet on a raw.txt of classical poems.

transformers' TF models need Keras 2 (``tf_keras``). TensorFlow picks the Keras
version when it is first imported, so the switch is set here, before any module
of this package can import TensorFlow; ``poetry-gpt env`` reports when an import
that happened earlier already chose Keras 3. The other environment change the
package makes is in ``XLA_FLAGS``: XLA:CPU's YNNPACK fusions off, before the first
XLA compile (a crash in TensorFlow 2.21's XLA; ``xla_flags.py``).
"""
import os

from .xla_flags import without_ynn_fusions

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ["XLA_FLAGS"] = without_ynn_fusions(os.environ.get("XLA_FLAGS"))

__version__ = "0.1.0"
