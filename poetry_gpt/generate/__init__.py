"""Stage 4, generate: poems from a trained model through one compiled sampler.

``from poetry_gpt.generate import PoemGenerator`` is the public entry point (importing it loads no TensorFlow).
"""
from .generator import PoemGenerator

__all__ = ["PoemGenerator"]
