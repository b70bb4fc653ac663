"""The ``quality`` section: validation loss of poetry_gpt and the nanoGPT-style baseline after the same N steps.

Both train a new model of the preset for N steps (the decay over N) on the same packed rows of the same DATA_DIR
(poetry_gpt through ``trainer.build_training`` + ``fit(trainer.training_data)``, as ``train`` does by default: each
poem of a row attending only to itself, ``train.attention`` ``poem``; the baseline nanoGPT's way, each row one
sequence, on those batches, written by ``nanogpt.child_rows``) and are scored on the same held-out windows the same way: poem-level
cross-entropy per character in float32 (``poetry_gpt.eval.evaluate.validation_loss`` for ours,
``nanogpt.validation_loss`` over the same rows for the baseline). Goal: ours ≤ the baseline's.
"""
from __future__ import annotations

import importlib.util
import re
import time

from .machine import load_average, section_context
from .runner import run_child


def child_quality_poetry(a: dict) -> dict:
    """poetry_gpt trained ``steps`` steps as ``train`` does (run seed ``a["seed"]`` if given), then its validation
    loss (``eval.validation_loss``) and, with torch, its gradient numerics against the baseline's
    (``gradient_errors``, first two training batches)."""
    from poetry_gpt.eval.evaluate import validation_loss
    from poetry_gpt.train.distribute import make_strategy
    from poetry_gpt.train.trainer import training_data

    from .train import poetry_fit

    start = time.perf_counter()
    times: list[float] = []
    run = poetry_fit(a["preset"], a["data_dir"], a["steps"], times, seed=a.get("seed"))
    trained = time.perf_counter() - start
    config = run["config"]
    valid = validation_loss(run["training"].lm, run["manifest"], run["vocab"], config.train.batch_size,
                            config.model.n_ctx)
    batches = list(training_data(run["manifest"], config, run["vocab"], make_strategy("default")).take(2))
    return {"system": "poetry_gpt: trainer.build_training + fit(trainer.training_data)", "precision": run["precision"],
            "seed": run["config"].train.seed,
            "threads": run["threads"], "steps": a["steps"], "train_seconds": round(trained, 1),
            "final_train_loss": round(float(run["history"].history["loss"][-1]), 4),
            "validation_loss": round(valid["loss"], 4), "validation_tokens": valid["tokens"],
            "gradient_error_vs_float32": gradient_errors(run["training"].lm, batches)}


def gradient_errors(lm, batches) -> dict | None:
    """How far each system's bf16 gradient is from the float32 gradient, at ``lm``'s weights (None without torch).

    Both systems compute the training loss of the same batches from the same weights (the baseline's model loaded
    with ``lm``'s). The float32 gradient is poetry_gpt's; the baseline's float32 gradient agrees with it to
    ``float32_agreement``. Per parameter group (the blocks' layers pooled) and over all parameters (``all``):
    ‖g_bf16 − g_fp32‖ / ‖g_fp32‖ over every batch.

    Args:
        lm: the ``TFGPT2LMHeadModel``.
        batches: training batches (``input_ids``, ``labels``).
    """
    if importlib.util.find_spec("torch") is None:
        return None
    import numpy as np
    import tensorflow as tf
    import torch

    from . import nanogpt
    from .machine import usable_cores

    torch.set_num_threads(usable_cores())
    cfg = lm.config
    model = nanogpt.gpt_model(torch, cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions)
    nanogpt.load_tf_gpt2(torch, model, lm)
    names = [nanogpt.torch_name(v.name) for v in lm.trainable_variables]
    sums = {"poetry_gpt_bf16": {}, "nanogpt_bf16": {}, "float32_agreement": {}}
    for batch in batches:
        reference = _poetry_gradients(lm, names, batch, tf.float32)
        for key, grads in (("poetry_gpt_bf16", _poetry_gradients(lm, names, batch, tf.bfloat16)),
                           ("nanogpt_bf16", _nanogpt_gradients(torch, model, names, batch, True)),
                           ("float32_agreement", _nanogpt_gradients(torch, model, names, batch, False))):
            for name, got, ref in zip(names, grads, reference):
                for group in (re.sub(r"^h\.\d+\.", "", name), "all"):
                    diff, norm = sums[key].get(group, (0.0, 0.0))
                    sums[key][group] = (diff + float(np.sum((got - ref) ** 2)), norm + float(np.sum(ref ** 2)))
    errors = {key: {g: float(f"{(d / n) ** 0.5:.3g}") for g, (d, n) in groups.items()} for key, groups in sums.items()}
    agreement = errors.pop("float32_agreement")["all"]
    return {"what": "relative L2 distance of the bf16 gradient from the float32 one, trained weights, "
                    f"{len(batches)} training batches", **errors, "float32_agreement": agreement}


def _poetry_gradients(lm, names: list[str], batch, dtype) -> list:
    """poetry_gpt's gradient of the training loss (``lm_loss_terms`` with ``dtype`` matmuls), in the baseline's layout:
    with the whole row visible (no ``boundary_id``), the function the baseline computes, whatever ``train.attention``
    the model was trained with."""
    import tensorflow as tf

    from poetry_gpt.model.fast_forward import lm_loss_terms

    from . import nanogpt

    with tf.GradientTape() as tape:
        total, count = lm_loss_terms(lm, batch["input_ids"], batch["labels"], compute_dtype=dtype)
        loss = total / count
    grads = tape.gradient(loss, lm.trainable_variables)
    return [nanogpt.as_torch_layout(n, tf.convert_to_tensor(g).numpy()) for n, g in zip(names, grads)]


def _nanogpt_gradients(torch, model, names: list[str], batch, bf16: bool) -> list:
    """The baseline's gradient of the same loss (``torch.autocast`` bf16 when ``bf16``), parameters in ``names``' order."""
    import numpy as np

    from . import nanogpt

    ids, labels = (torch.from_numpy(batch[k].numpy().astype(np.int64)) for k in ("input_ids", "labels"))
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = nanogpt.next_token_loss(torch, model(ids), labels)
    loss.backward()
    params = dict(model.named_parameters())
    return [params[n].grad.numpy().copy() for n in names]


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
    return {**nanogpt.describe(config, info), "seed": config.train.seed, "steps": a["steps"],
            "train_seconds": round(trained, 1),
            "final_train_loss": round(loss, 4), "validation_loss": round(valid["loss"], 4),
            "validation_tokens": valid["tokens"]}


def section(bench) -> dict:
    """Both systems for each of ``bench.quality_seeds`` (default: the preset's seed): per seed, the same packed rows
    (that seed's data order) and each system's own draw of the weights from that seed. With several seeds the
    difference judged is that of the two means, the spread of each system beside it."""
    load_before = load_average()
    seeds = bench.quality_seeds or [None]
    runs = [_seed_run(bench, seed) for seed in seeds]
    first = runs[0]
    doc = {"what": "validation cross-entropy (nats/char, poem-level, held-out poems, float32) after the same "
                   "steps on the same packed rows; lower is better",
           "preset": bench.preset, "steps": bench.quality_steps, "data": str(bench.quality_corpus()),
           "systems": first["systems"], "validation_loss_minus_nanogpt": first["validation_loss_minus_nanogpt"]}
    if len(runs) > 1:
        doc.update(seeds_summary(runs))
    return {**doc, **section_context(load_before, bench.command)}


def _seed_run(bench, seed: int | None) -> dict:
    """Both systems trained with run seed ``seed`` (None: the preset's) on that seed's packed rows."""
    from .train import TORCH_SKIP

    steps, data_dir = bench.quality_steps, str(bench.quality_data())
    tag = "" if seed is None else f"-seed{seed}"
    common = {"data_dir": data_dir, "preset": bench.preset, "steps": steps, **({} if seed is None else {"seed": seed})}
    systems = {"poetry_gpt": ("quality_poetry", common)}
    if importlib.util.find_spec("torch") is not None:
        rows = run_child("rows", {**common, "out": str(bench.work / f"rows-quality{tag}"), "valid": True}, bench.work,
                         bench.timeout, name=f"rows-quality{tag}")
        systems["nanogpt_bf16"] = ("quality_nanogpt", {**common, "rows": rows["train_rows"],
                                                       "valid_ids": rows["valid_ids"],
                                                       "valid_labels": rows["valid_labels"]})
    results = {name: run_child(kind, args, bench.work, bench.timeout * 4, name=f"{kind}{tag}")
               for name, (kind, args) in systems.items()}
    results.setdefault("nanogpt_bf16", {"skipped": TORCH_SKIP})
    ours, theirs = (results[k].get("validation_loss") for k in ("poetry_gpt", "nanogpt_bf16"))
    return {"seed": seed, "systems": results, "validation_loss_minus_nanogpt": _minus(ours, theirs)}


def _minus(ours: float, theirs: float | None) -> float | None:
    """The judged figure: our validation loss minus the baseline's (None when the baseline did not run)."""
    return round(ours - theirs, 4) if theirs is not None else None


def seeds_summary(runs: list[dict]) -> dict:
    """Several seeds' runs in one figure: each system's validation losses, mean and spread (max − min), and the
    difference of the means, which replaces the first seed's as the judged ``validation_loss_minus_nanogpt``.

    Args:
        runs: ``_seed_run`` results, one per seed.
    """
    losses = {name: [r["systems"][name].get("validation_loss") for r in runs] for name in runs[0]["systems"]}
    means = {name: (round(sum(v) / len(v), 4) if None not in v else None) for name, v in losses.items()}
    ours, theirs = means["poetry_gpt"], means.get("nanogpt_bf16")
    return {"seeds": [r["seed"] for r in runs], "by_seed": runs,
            "validation_loss_by_seed": losses, "validation_loss_mean": means,
            "validation_loss_spread": {name: (round(max(v) - min(v), 4) if None not in v else None)
                                       for name, v in losses.items()},
            "validation_loss_minus_nanogpt": _minus(ours, theirs)}
