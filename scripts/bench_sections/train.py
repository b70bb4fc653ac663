"""The ``train`` section: training tokens/s of poetry_gpt's own path, a seed-style baseline and two PyTorch ones
(transformers' GPT-2 and the nanoGPT-style run of ``nanogpt.py``), with MFU.

Each system runs in its own process (``child_train_*``), ``--rounds`` times in alternating order; the best
round is kept (a shared machine only ever slows a run down) and every round is listed.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

from .machine import load_average, section_context, usable_cores
from .runner import run_child

TORCH_SKIP = "torch not installed: pip install torch==2.13.0"
TORCH_SYSTEMS = ("torch_bf16", "nanogpt_bf16")


def _read_lines(raw: str) -> list[str]:
    text = Path(raw).read_text(encoding="utf-8-sig")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _encoded_poems(raw: str, data_dir: str):
    """The corpus lines as id arrays (``[SEP]`` + characters), with the DATA_DIR's vocabulary (no TensorFlow)."""
    import numpy as np

    from poetry_gpt.data.vocab import CharVocab

    vocab = CharVocab.load(data_dir)
    flat, lengths = vocab.encode_lines(_read_lines(raw))
    flat = np.asarray(flat, np.int64)
    ends = np.cumsum(lengths)
    poems = [np.concatenate([[vocab.sep_id], flat[e - n:e]]) for e, n in zip(ends, lengths)]
    return vocab, poems


def _steady(times: list[float], warmup: int) -> tuple[float, list[float]]:
    """(seconds of the steps after ``warmup``, their individual durations) from step-end times
    (``times[0]`` = the moment before the first step)."""
    steps = [b - a for a, b in zip(times, times[1:])]
    return times[-1] - times[warmup], steps[warmup:]


def _timing_report(window: float, durations: list[float], tokens: int, useful: int, padded: int) -> dict:
    import statistics

    n = len(durations)
    return {"measured_steps": n, "seconds": round(window, 3),
            "tokens_per_s": round(tokens / window, 1), "useful_tokens_per_s": round(useful / window, 1),
            "padding_fraction": round(padded / tokens, 4) if tokens else 0.0,
            "ms_per_step": round(1000 * window / n, 1),
            "median_ms_per_step": round(1000 * statistics.median(durations), 1)}


def _keras_timer(first_time: list):
    import tf_keras

    class StepTimer(tf_keras.callbacks.Callback):
        """Wall-clock time at the end of every training step (the loss is fetched, so the step is done)."""

        def __init__(self):
            super().__init__()
            self.times = first_time

        def on_train_begin(self, logs=None):
            self.times[:] = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            float((logs or {}).get("loss", 0.0))
            self.times.append(time.perf_counter())

    return StepTimer()


def _tf_threads() -> int:
    """Give TensorFlow's op pool every usable core, as the PyTorch child gives torch (call before any op runs)."""
    import tensorflow as tf

    threads = usable_cores()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    return threads


def child_peak(a: dict) -> dict:
    """Matmul peak of TensorFlow on this CPU, fp32 and bf16 (GFLOP/s, best of a few timed runs)."""
    import tensorflow as tf

    n, reps, rounds = a["size"], a["reps"], a["rounds"]
    out = {"size": n, "threads": _tf_threads()}
    for name, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
        x = tf.cast(tf.random.normal([n, n]), dtype)
        y = tf.cast(tf.random.normal([n, n]), dtype)
        mm = tf.function(lambda p, q: tf.matmul(p, q))
        for _ in range(3):
            mm(x, y).numpy()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(reps):
                z = mm(x, y)
            z.numpy()
            best = min(best, (time.perf_counter() - start) / reps)
        out[f"{name}_gflops"] = round(2 * n ** 3 / best / 1e9, 1)
    return out


def preset_config(preset: str, seed: int | None = None):
    """The preset's ``RunConfig``, with ``train.seed`` (weight draw and data order) replaced when ``seed`` is given.

    Args:
        preset: the preset name.
        seed: the run seed, or None for the preset's.
    """
    from poetry_gpt.config import config_from_preset

    config = config_from_preset(preset)
    return config if seed is None else config.replace(train={"seed": int(seed)})


def poetry_fit(preset: str, data_dir: str, total: int, times: list[float], seed: int | None = None) -> dict:
    """Train a new model of ``preset`` for ``total`` steps as ``train`` does: ``trainer.build_training`` (decay over
    ``total``) + ``fit(trainer.training_data)`` at the preset's precision, on every usable core as ``train`` uses
    them (``cores.use_cores``: the batch in one part per core, one thread each).

    Args:
        preset: the preset name.
        data_dir: the DATA_DIR.
        total: steps.
        times: filled with the step-end times (``_keras_timer``).
        seed: the run seed (``preset_config``), or None for the preset's.

    Returns:
        ``config``, ``manifest``, ``vocab``, ``precision``, ``threads`` (usable cores), ``cores`` (the
        ``CoreLayout``), ``training`` and ``history``.
    """
    import poetry_gpt  # noqa: F401
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.train.cores import use_cores
    from poetry_gpt.train.distribute import make_strategy
    from poetry_gpt.train.trainer import build_training, resolve_precision, set_precision, training_data

    threads = usable_cores()
    config = preset_config(preset, seed)
    manifest = load_manifest(data_dir)
    vocab = manifest.load_vocab()
    precision = resolve_precision(config.train.precision)
    set_precision(precision)
    strategy = make_strategy(config.train.strategy)
    cores = use_cores(config.train.batch_split, config.train.batch_size, strategy)
    training = build_training(config, vocab, strategy, total, precision, batch_parts=cores.parts)
    history = training.trainer.fit(training_data(manifest, config, vocab, strategy), epochs=1, steps_per_epoch=total,
                                   callbacks=[_keras_timer(times)], verbose=0)
    return {"config": config, "manifest": manifest, "vocab": vocab, "precision": precision, "threads": threads,
            "cores": cores, "training": training, "history": history}


def child_train_poetry(a: dict) -> dict:
    """poetry_gpt's own training path: ``trainer.build_training`` + ``fit(trainer.training_data)``, as ``train`` runs it."""
    import numpy as np

    import tf_keras
    from poetry_gpt.data.datasets import train_dataset
    from poetry_gpt.model.gpt2 import count_parameters

    total = a["warmup"] + a["steps"]
    times: list[float] = []
    run = poetry_fit(a["preset"], a["data_dir"], total, times)
    config, manifest, vocab, precision, threads = (run[k] for k in ("config", "manifest", "vocab", "precision",
                                                                    "threads"))
    training, history = run["training"], run["history"]
    t, m = config.train, config.model
    window, durations = _steady(times, a["warmup"])
    # the batches of the timed window, read again from the same deterministic stream, to count padding
    padded = 0
    for k, batch in enumerate(train_dataset(manifest, t.batch_size, m.n_ctx, seed=t.seed, pad_id=vocab.pad_id,
                                            sep_id=vocab.sep_id).take(total)):
        if k >= a["warmup"]:
            padded += int(np.sum(batch["input_ids"].numpy() == vocab.pad_id))
    tokens = len(durations) * t.batch_size * m.n_ctx
    n_params = count_parameters(training.lm)
    return {"system": "poetry_gpt: trainer.build_training + fit(trainer.training_data), packed rows",
            "preset": a["preset"], "precision": precision, "policy": tf_keras.mixed_precision.global_policy().name,
            "precision_setting": t.precision, "threads": threads,
            "batch_split": {"parts": run["cores"].parts, "threads_per_part": run["cores"].threads},
            "xla_flags": os.environ.get("XLA_FLAGS"),
            "shape": {"n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "n_ctx": m.n_ctx,
                      "batch_size": t.batch_size, "vocab_size": vocab.size, "dropout": m.dropout},
            "optimizer": f"AdamW (lr {t.learning_rate}, warm-up {t.warmup_steps}, {t.schedule}), clip {t.grad_clip}",
            "params": n_params, "flops_per_token": 6 * n_params + 12 * m.n_layer * m.n_ctx * m.n_embd,
            "warmup_steps": a["warmup"], "final_loss": round(float(history.history["loss"][-1]), 4),
            "torch_imported": "torch" in sys.modules,
            **_timing_report(window, durations, tokens, tokens - padded, padded)}


def child_train_seed(a: dict) -> dict:
    """The seed-style baseline: one poem per padded row, ``tf.boolean_mask`` loss, Adam 5e-5, fp32, ``fit``."""
    import numpy as np

    import poetry_gpt  # noqa: F401
    import tensorflow as tf
    import tf_keras
    from transformers import GPT2Config, TFGPT2LMHeadModel

    threads = _tf_threads()
    tf_keras.mixed_precision.set_global_policy("float32")
    shape = a["shape"]
    ctx, B = shape["n_ctx"], shape["batch_size"]
    vocab, poems = _encoded_poems(a["raw"], a["data_dir"])
    pad = vocab.pad_id
    rows = np.full((len(poems), ctx), pad, np.int32)
    for i, p in enumerate(poems):
        p = p[:ctx]  # the seed truncates a longer poem
        rows[i, :len(p)] = p
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    n_batches = len(rows) // B
    data = tf.data.Dataset.from_tensor_slices(rows[:n_batches * B]).batch(B, drop_remainder=True).repeat()
    data = data.prefetch(tf.data.AUTOTUNE)

    tf_keras.utils.set_random_seed(0)
    config = GPT2Config(vocab_size=vocab.size, n_positions=ctx, n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                        n_head=shape["n_head"], pad_token_id=pad)  # transformers' default dropout 0.1, as the seed
    lm = TFGPT2LMHeadModel(config)
    lm(tf.zeros([1, 2], tf.int32))

    class SeedStyleLM(tf_keras.Model):
        """The seed's training step: HF forward, shifted logits, pads dropped by ``tf.boolean_mask``."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def call(self, input_ids, training=False):
            return self.lm(input_ids=input_ids, attention_mask=tf.cast(input_ids != pad, tf.int32),
                           training=training).logits

        def train_step(self, input_ids):
            with tf.GradientTape() as tape:
                logits = self(input_ids, training=True)[:, :-1]
                labels = input_ids[:, 1:]
                keep = labels != pad
                loss = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(
                    tf.boolean_mask(labels, keep), tf.boolean_mask(logits, keep), from_logits=True))
            variables = self.lm.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return {"loss": loss}

    model = SeedStyleLM(lm)
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=5e-5))
    total = a["warmup"] + a["steps"]
    times: list[float] = []
    history = model.fit(data, epochs=1, steps_per_epoch=total, callbacks=[_keras_timer(times)], verbose=0)
    window, durations = _steady(times, a["warmup"])
    useful = sum(int(np.sum(rows[(k % n_batches) * B:(k % n_batches + 1) * B] != pad))
                 for k in range(a["warmup"], total))
    tokens = len(durations) * B * ctx
    n_params = int(sum(np.prod(v.shape) for v in lm.trainable_variables))
    return {"system": "seed-style: one poem per row padded (truncated) to the context, tf.boolean_mask loss, "
                      "tf_keras Adam 5e-5, fp32, fit of a Keras wrapper around TFGPT2LMHeadModel",
            "precision": "fp32", "threads": threads,
            "shape": {**shape, "vocab_size": vocab.size, "dropout": config.resid_pdrop},
            "params": n_params, "flops_per_token": 6 * n_params + 12 * shape["n_layer"] * ctx * shape["n_embd"],
            "poems": len(rows), "poems_truncated": int(sum(len(p) > ctx for p in poems)),
            "warmup_steps": a["warmup"], "final_loss": round(float(history.history["loss"][-1]), 4),
            **_timing_report(window, durations, tokens, useful, tokens - useful)}


def child_train_torch(a: dict) -> dict:
    """transformers' PyTorch ``GPT2LMHeadModel``: packed rows, bf16 autocast, AdamW, every usable core."""
    try:
        import torch
    except ImportError:
        return {"skipped": TORCH_SKIP}
    threads = usable_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = a["shape"]
    ctx, B = shape["n_ctx"], shape["batch_size"]
    vocab, poems = _encoded_poems(a["raw"], a["data_dir"])
    order = np.random.default_rng(0).permutation(len(poems))
    stream = np.concatenate([poems[i] for i in order])
    rows = stream[:len(stream) // ctx * ctx].reshape(-1, ctx)
    n_batches = len(rows) // B
    batches = torch.from_numpy(rows[:n_batches * B].reshape(n_batches, B, ctx).astype(np.int64))

    config = GPT2Config(vocab_size=vocab.size, n_positions=ctx, n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                        n_head=shape["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    total = a["warmup"] + a["steps"]
    times = [time.perf_counter()]
    loss = None
    for step in range(total):
        x = batches[step % n_batches]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss)
        times.append(time.perf_counter())
    window, durations = _steady(times, a["warmup"])
    tokens = len(durations) * B * ctx
    padded = sum(int((batches[k % n_batches] == vocab.pad_id).sum()) for k in range(a["warmup"], total))
    n_params = sum(p.numel() for p in model.parameters())

    # torch's own matmul peak, for reference (the MFU uses TensorFlow's, the same hardware limit)
    peak = {}
    n = a.get("peak_size", 2048)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        p, q = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        for _ in range(3):
            torch.mm(p, q)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(5):
                torch.mm(p, q)
            best = min(best, (time.perf_counter() - start) / 5)
        peak[f"{name}_gflops"] = round(2 * n ** 3 / best / 1e9, 1)
    return {"system": "transformers PyTorch GPT2LMHeadModel, packed rows, torch.autocast('cpu', bfloat16), "
                      "AdamW 1e-3, clip 1.0, torch.set_num_threads(every usable core)",
            "precision": "bf16 autocast", "threads": threads, "attention": getattr(config, "_attn_implementation", None),
            "shape": {**shape, "vocab_size": vocab.size, "dropout": 0.0}, "params": n_params,
            "flops_per_token": 6 * n_params + 12 * shape["n_layer"] * ctx * shape["n_embd"],
            "warmup_steps": a["warmup"], "final_loss": round(loss_value, 4), "torch_matmul_peak": peak,
            **_timing_report(window, durations, tokens, tokens - padded, padded)}


def section(bench) -> dict:
    load_before = load_average()
    peak = run_child("peak", {"size": 1024 if bench.quick else 2048, "reps": 3 if bench.quick else 10,
                              "rounds": 2 if bench.quick else 3}, bench.work, bench.timeout)
    common = {"data_dir": str(bench.train_data()), "raw": str(bench.args.corpus), "warmup": bench.warmup,
              "steps": bench.steps, "shape": bench.shape}
    systems = {"poetry_gpt": ("train_poetry", {**common, "preset": bench.preset}),
               "seed_style": ("train_seed", common),
               "torch_bf16": ("train_torch", {**common, "peak_size": 1024 if bench.quick else 2048}),
               "nanogpt_bf16": ("train_nanogpt", {"data_dir": common["data_dir"], "preset": bench.preset,
                                                  "rows": str(bench.work / "rows-train" / "train_rows.npy"),
                                                  "warmup": bench.warmup, "steps": bench.steps})}
    have_torch = importlib.util.find_spec("torch") is not None
    if have_torch:  # the nanoGPT baseline reads poetry_gpt's own packed rows, written once by a TF child
        run_child("rows", {"data_dir": common["data_dir"], "preset": bench.preset, "out": str(bench.work / "rows-train"),
                           "steps": bench.warmup + bench.steps}, bench.work, bench.timeout, name="rows-train")
    rounds: dict[str, list] = {name: [] for name in systems}
    order = list(systems)
    for r in range(bench.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            kind, child_args = systems[name]
            if name in TORCH_SYSTEMS and not have_torch:
                continue
            result = run_child(kind, child_args, bench.work, bench.timeout, name=f"{kind}-round{r + 1}")
            result["load_average_after"] = load_average()
            rounds[name].append(result)
    out_systems = {}
    for name, results in rounds.items():
        ran = [x for x in results if "skipped" not in x]
        if not ran:
            out_systems[name] = {"skipped": results[0]["skipped"] if results else TORCH_SKIP}
            continue
        best = dict(max(ran, key=lambda x: x["useful_tokens_per_s"]))
        precision_peak = peak["bf16_gflops"] if "bf16" in best["precision"] else peak["fp32_gflops"]
        flops = best["useful_tokens_per_s"] * best["flops_per_token"]
        best["model_gflops"] = round(flops / 1e9, 1)
        best["mfu"] = round(flops / (precision_peak * 1e9), 4)
        best["mfu_vs_bf16_peak"] = round(flops / (peak["bf16_gflops"] * 1e9), 4)
        best["rounds_useful_tokens_per_s"] = [x["useful_tokens_per_s"] for x in ran]
        best["rounds_peak_rss_mb"] = [x["peak_rss_mb"] for x in ran]
        out_systems[name] = best
    mine = out_systems["poetry_gpt"]["useful_tokens_per_s"]

    def ratio(other):
        o = out_systems[other]
        return round(mine / o["useful_tokens_per_s"], 2) if "useful_tokens_per_s" in o else None

    cores = os.cpu_count() or 1
    busiest = max([load_before[0]] + [x.get("load_average_after", [0])[0] for r in rounds.values() for x in r])
    warning = None
    if busiest > 0.75 * cores:
        warning = (f"the machine was busy (1-minute load average up to {busiest} on {cores} cores): absolute "
                   "figures are low and the ratios are unreliable, PyTorch's OpenMP threads most of all "
                   "(they spin-wait on each other when a core is taken); rerun on a quiet machine")
    return {"what": "useful (non-pad) training tokens/s, steady state; best of the rounds",
            "warning": warning,
            "preset": bench.preset, "shape": bench.shape, "corpus": str(bench.args.corpus),
            "warmup_steps": bench.warmup, "measured_steps": bench.steps, "rounds": bench.rounds,
            "matmul_peak": {**peak, "note": "tf.matmul of two square matrices, best of timed runs"},
            "mfu_formula": "useful tokens/s × (6·N + 12·L·T·D) / matmul peak of the system's compute precision",
            "systems": out_systems,
            "ratios": {"poetry_gpt_vs_seed_style": ratio("seed_style"),
                       "poetry_gpt_vs_torch_bf16": ratio("torch_bf16"),
                       "poetry_gpt_vs_nanogpt_bf16": ratio("nanogpt_bf16")},
            **section_context(load_before, bench.command)}
