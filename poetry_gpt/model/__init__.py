"""Stage 2, model: GPT-2 built, run fast for training and decoding, and exported."""
