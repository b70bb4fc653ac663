"""Stage 4, generate: poems from a trained model through one compiled sampler."""
