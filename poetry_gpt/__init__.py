"""poetry_gpt: train your own GPT-2 poet on a raw.txt of classical poems.

transformers' TF models need Keras 2 (``tf_keras``). TensorFlow picks the Keras
version when it is first imported, so the switch is set here, before any module
of this package can import TensorFlow. It is the one environment change the
package makes; ``poetry-gpt env`` reports when an import that happened earlier
already chose Keras 3.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
