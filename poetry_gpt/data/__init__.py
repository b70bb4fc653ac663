"""Stage 1, data: raw.txt corpora -> vocabulary, TFRecord shards and a manifest in a DATA_DIR."""
