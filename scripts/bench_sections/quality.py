"""The ``quality`` section: validation loss of poetry_gpt and the nanoGPT-style baseline after the same N steps.

Both train a new model of the preset for N steps (the decay over N) on the same packed rows of the same DATA_DIR
(poetry_gpt through ``trainer.build_training`` + ``fit(trainer.training_data)``; the baseline on those batches,
written by ``nanogpt.child_rows``) and are scored on the same held-out windows the same way: poem-level
cross-entropy per character in float32 (``poetry_gpt.eval.evaluate.validation_loss`` for ours,
``nanogpt.validation_loss`` over the same rows for the baseline). Goal: ours ≤ the baseline's.
"""
from __future__ import annotations

import importlib.util
import time

from .machine import load_average, section_context
from .runner import run_child


def child_quality_poetry(a: dict) -> dict:
    """poetry_gpt trained ``steps`` steps as ``train`` does, then its validation loss (``eval.validation_loss``)."""
    from poetry_gpt.eval.evaluate import validation_loss

    from .train import poetry_fit

    start = time.perf_counter()
    times: list[float] = []
    run = poetry_fit(a["preset"], a["data_dir"], a["steps"], times)
    trained = time.perf_counter() - start
    config = run["config"]
    valid = validation_loss(run["training"].lm, run["manifest"], run["vocab"], config.train.batch_size,
                            config.model.n_ctx)
    return {"system": "poetry_gpt: trainer.build_training + fit(trainer.training_data)", "precision": run["precision"],
            "threads": run["threads"], "steps": a["steps"], "train_seconds": round(trained, 1),
            "final_train_loss": round(float(run["history"].history["loss"][-1]), 4),
            "validation_loss": round(valid["loss"], 4), "validation_tokens": valid["tokens"]}


def child_quality_nanogpt(a: dict) -> dict:
    """The nanoGPT-style baseline trained ``steps`` steps on poetry_gpt's rows, then scored on its validation windows."""
    import numpy as np

    from . import nanogpt
    from .train import TORCH_SKIP

    made = nanogpt.setup(a)
    if made is None:
        return {"skipped": TORCH_SKIP}
    torch, config, model, optimizer, info = made
    rows = torch.from_numpy(np.load(a["rows"]).astype(np.int64))
    start = time.perf_counter()
    _, loss = nanogpt.train_steps(torch, model, optimizer, rows, config.train, a["steps"])
    trained = time.perf_counter() - start
    ids, labels = (torch.from_numpy(np.load(a[k]).astype(np.int64)) for k in ("valid_ids", "valid_labels"))
    valid = nanogpt.validation_loss(torch, model, ids, labels, config.train.batch_size)
    return {**nanogpt.describe(config, info), "steps": a["steps"], "train_seconds": round(trained, 1),
            "final_train_loss": round(loss, 4), "validation_loss": round(valid["loss"], 4),
            "validation_tokens": valid["tokens"]}


def section(bench) -> dict:
    load_before = load_average()
    steps, data_dir = bench.quality_steps, str(bench.quality_data())
    rows_dir = bench.work / "rows-quality"
    systems = {"poetry_gpt": ("quality_poetry", {"data_dir": data_dir, "preset": bench.preset, "steps": steps})}
    from .train import TORCH_SKIP

    if importlib.util.find_spec("torch") is not None:
        rows = run_child("rows", {"data_dir": data_dir, "preset": bench.preset, "out": str(rows_dir), "steps": steps,
                                  "valid": True}, bench.work, bench.timeout, name="rows-quality")
        systems["nanogpt_bf16"] = ("quality_nanogpt", {"data_dir": data_dir, "preset": bench.preset, "steps": steps,
                                                       "rows": rows["train_rows"], "valid_ids": rows["valid_ids"],
                                                       "valid_labels": rows["valid_labels"]})
    results = {name: run_child(kind, args, bench.work, bench.timeout * 4, name=f"{kind}")
               for name, (kind, args) in systems.items()}
    results.setdefault("nanogpt_bf16", {"skipped": TORCH_SKIP})
    ours, theirs = (results[k].get("validation_loss") for k in ("poetry_gpt", "nanogpt_bf16"))
    return {"what": "validation cross-entropy (nats/char, poem-level, held-out poems, float32) after the same "
                    "steps on the same packed rows; lower is better",
            "preset": bench.preset, "steps": steps, "data": str(bench.quality_corpus()), "systems": results,
            "validation_loss_minus_nanogpt": round(ours - theirs, 4) if theirs is not None else None,
            **section_context(load_before, bench.command)}
