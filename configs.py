"""Named presets for ``poetry-gpt train --config NAME``.

Each preset lists only what differs from the dataclass defaults in
``poetry_gpt/config.py`` (which are the ``small`` model), with a comment why.
Command-line options override a preset field by field. Sections: ``model``, ``train`` and ``tune``
(``train --tune`` defaults: ``method``, ``adapter_size``, ``prefix_length``, ``lora_rank``, ``lora_alpha``,
``lora_targets``; see ``TuneSettings`` in ``poetry_gpt/config.py``).
"""

PRESETS = {
    # For tests and the quick start: trains in seconds on 2 CPU cores, learns little.
    "tiny": {
        "model": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_ctx": 64},
        "train": {
            "batch_size": 8,  # small batches keep a test step in milliseconds
            "learning_rate": 3e-3,  # a tiny model tolerates and needs a larger step
            "warmup_steps": 10,  # tests run tens of steps, not thousands
            "checkpoint_every": 0,  # epoch-end checkpoints are enough for short runs
            "samples_per_epoch": 2,
        },
    },
    # The benchmark model of the project's goals (README, Performance): 6 layers, width 384, 6 heads, context 128
    # (~12.7M parameters with a ~5k-character vocabulary). The defaults are exactly this.
    "small": {},
    # GPT-2 small's shape (124M-class): for a GPU; on a 2-core CPU it is ~10x slower than small.
    "base": {
        "model": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_ctx": 256, "dropout": 0.1},
        "train": {
            "batch_size": 32,
            "learning_rate": 6e-4,  # nanoGPT's GPT-2 small rate: larger models need smaller steps
            "warmup_steps": 500,
        },
    },
    # GPT-2 medium's shape (24 layers, width 1024): for GPUs with ≥ 16 GB.
    "medium": {
        "model": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_ctx": 256, "dropout": 0.1},
        "train": {
            "batch_size": 32,
            "learning_rate": 3e-4,  # GPT-2 medium trains stably at about half of small's rate
            "warmup_steps": 1000,
        },
    },
}
