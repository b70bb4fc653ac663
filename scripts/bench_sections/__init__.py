"""The sections of ``scripts/bench.py``, one module each, and the pieces they share."""
