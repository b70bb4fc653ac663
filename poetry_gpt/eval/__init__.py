"""Stage 5, eval: validation loss and poem-quality figures of a trained run."""
