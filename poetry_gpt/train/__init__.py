"""Stage 3, train: Keras fit of the model on a DATA_DIR into a RUN_DIR, with exact resume.

``from poetry_gpt.train import train`` is the public entry point (importing it loads no TensorFlow).
"""
from .loop import train

__all__ = ["train"]
