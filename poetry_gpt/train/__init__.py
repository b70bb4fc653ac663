"""Stage 3, train: Keras fit of the model on a DATA_DIR into a RUN_DIR, with exact resume."""
