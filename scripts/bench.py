#!/usr/bin/env python
"""poetry_gpt's benchmarks in one run: training, generation, data preparation and memory; prints one JSON document.

    python scripts/bench.py                          # everything, full size (about 15-30 minutes on 2 cores)
    python scripts/bench.py --quick                  # tiny shapes, few steps: checks that it all runs (~2-3 min)
    python scripts/bench.py --only train,memory      # some sections (train, generate, prepare, memory, serve, export)
    python scripts/bench.py --run runs/small         # generation figures on a trained run instead of a random model
    python scripts/bench.py --out bench.json         # also write the document to a file
    python scripts/bench.py --check                  # exit 1 when a judged goal fails
    python scripts/bench.py --judge bench.json --check   # judge a saved document again, measuring nothing

Sections (each measured in fresh subprocesses, back to back, so that memory and thread pools of one
system do not affect another; a subprocess prints one JSON line that this parent collects):

* ``train`` — useful (non-pad) tokens/s of the ``small`` preset shape (6 layers, width 384, 6 heads,
  context 128, batch 16) on ``--corpus`` (tang-4k): (1) poetry_gpt's own training path —
  ``build_lm_trainer`` + ``make_optimizer`` + ``fit`` on ``records.train_dataset`` (packed rows) at
  the preset's default precision; (2) a seed-style baseline written here — one poem per row padded
  to the context, loss masked with ``tf.boolean_mask``, ``tf_keras`` Adam 5e-5, fp32, ``fit`` of a
  Keras wrapper around transformers' ``TFGPT2LMHeadModel`` (its own forward); (3) transformers'
  PyTorch ``GPT2LMHeadModel`` on packed rows with bf16 autocast and AdamW, when torch is installed.
  Every system uses every core the process may run on (its CPU affinity): TensorFlow's intra-op pool
  and ``torch.set_num_threads`` alike.
  Steady state: the timed window starts after the warm-up steps (a Keras callback / a loop timer).
  Model-FLOPs utilisation = useful tokens/s × (6·N + 12·L·T·D) / the matmul peak measured in this
  run (2048×2048 ``tf.matmul``, fp32 and bf16). Each system runs ``--rounds`` times, alternating the
  order; the best round is reported (a shared machine only ever slows a run down), every round is listed.
* ``generate`` — ``poetry_gpt.generate.generator.benchmark`` (compiled sampler vs eager ``model.generate`` vs
  transformers' XLA ``generate``, 64 new tokens, batch 1 and 8, random model of the small shape), and
  ``PoemGenerator`` itself on an export (random weights unless ``--run``) with and without
  ``form='五绝'``, against its eager path. The first call of each (the compile a user waits for) is
  timed in a fresh process of its own, not after other compiles.
* ``prepare`` — ``scripts/bench_prepare.py`` (characters/s of ``prepare`` on tang-full repeated
  1×, 4×, 16×, start-up excluded).
* ``serve`` — ``poetry-gpt serve`` under 1, 8 and 32 concurrent HTTP clients on 127.0.0.1 for a bounded
  time (requests/s, poems/s, p50/p95 latency, errors), with dynamic batching and one request at a time
  (``--max-batch 1``); peak RSS of the server.
* ``export`` — ``poetry-gpt export`` of the generation export: export time, SavedModel size, load time, and ms
  per poem through the loaded SavedModel against ``PoemGenerator`` (batch 1 and 8, free and ``五绝``, timed in
  turns in one process; goal: within 10% of ``PoemGenerator``).
* ``memory`` — peak RSS (``wait4`` of the subprocess: its ``ru_maxrss``) of a short real ``train``
  run on 1× and 16× tang-full DATA_DIRs (it must stay flat: the reader streams), and of generation.

Goals (ANCHORS.md): the document's ``goals`` give each goal's figure, target and status — pass, fail
or unjudged, the last with the reason (section not run or failed, torch not installed) — and
``verdict`` lists them; the same block is printed for a human on stderr at the end. ``--check``
exits 1 when a judged goal fails; an unjudged goal is listed, not failed. ``code_path`` records the
training precision chosen, the CPU's bf16 features (amx_bf16, avx512_bf16) and the threads used.

Absolute numbers drift between machines and with the load of a shared machine (each section records
the load average before and after); compare the ratios, which are measured in the same run.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
SHARED = ROOT.parent / "shared" / "corpus"
DEFAULT_CORPUS = SHARED / "tang-4k.raw.txt"
DEFAULT_FULL_CORPUS = SHARED / "tang-full.raw.txt"
SECTIONS = ("train", "generate", "prepare", "memory", "serve", "export")
RESULT_TAG = "BENCH_RESULT "
TORCH_SKIP = "torch not installed: pip install torch==2.13.0"

# goals of ANCHORS.md / issue 6
GOAL_VS_SEED = 4.4  # the nanoGPT figure of ANCHORS.md: 4.4x the seed-style pipeline
GOAL_VS_TORCH = 1.0
GOAL_GEN_SPEEDUP = 40.0
GOAL_FIRST_COMPILE_S = 10.0
GOAL_PREPARE_CHARS_PER_S = 4_000_000
GOAL_PREPARE_LINEAR = 0.8  # 16× throughput at least this share of 1× throughput
GOAL_TRAIN_RSS_MB = 2000.0  # 2 GB (decimal megabytes throughout)
GOAL_TRAIN_RSS_FLAT = 1.10  # large-corpus peak at most 10% above the small-corpus peak
GOAL_GEN_RSS_MB = 1000.0
GOAL_EXPORT_VS_GENERATOR = 1.10  # loaded SavedModel's ms per poem at most 10% above PoemGenerator's

SMALL_SHAPE = {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_ctx": 128, "batch_size": 16}
TINY_SHAPE = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_ctx": 64, "batch_size": 8}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ======================================================================================
# facts about the machine and the software
# ======================================================================================

def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f.startswith("amx") or f in ("avx512f", "avx512_bf16", "avx512_vnni", "avx2"))
    except OSError:
        pass
    return []


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1e6, 1)
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all of the machine's where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts() -> dict:
    return {"cpu": _cpu_model(), "cores": os.cpu_count(),
            "cores_usable": usable_cores(),
            "cpu_flags": _cpu_flags(), "memory_gb": _mem_total_gb(), "platform": platform.platform()}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("poetry_gpt", "tensorflow", "tf_keras", "transformers", "torch", "numpy", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["git_commit"] = (commit + ("+local-changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def section_context(load_before: list[float], command: list[str]) -> dict:
    """Machine facts, versions and the command line, recorded with every section."""
    return {"machine": {**machine_facts(), "load_average_before": load_before, "load_average_after": load_average()},
            "versions": versions(), "command": command}


# ======================================================================================
# running a measurement in its own process
# ======================================================================================

class ChildError(RuntimeError):
    """A benchmark subprocess failed (its stderr tail is in the message)."""


def run_process(cmd: list[str], work: Path, name: str, timeout: float, env_extra: dict | None = None) -> dict:
    """Run ``cmd``; return its stdout, wall seconds and peak RSS (``ru_maxrss`` from ``wait4``)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(env_extra or {})
    out_path, err_path = work / f"{name}.stdout", work / f"{name}.stderr"
    start = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = err_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        why = "timed out" if seconds >= timeout else f"exit code {proc.returncode}"
        raise ChildError(f"{name}: {why} after {seconds:.0f} s: " + " | ".join(tail))
    return {"stdout": stdout, "seconds": seconds, "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1)}


def run_child(kind: str, args: dict, work: Path, timeout: float, name: str | None = None,
              env_extra: dict | None = None) -> dict:
    """Run one measurement (``bench.py --child KIND``) in a fresh process and return its JSON result,
    with the process's wall time and peak RSS added."""
    name = name or kind
    log(f"{name} ...")
    proc = run_process([sys.executable, str(SCRIPT), "--child", kind, "--child-args", json.dumps(args)],
                       work, name, timeout, env_extra)
    lines = [ln for ln in proc["stdout"].splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise ChildError(f"{name}: printed no result line")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_seconds"] = round(proc["seconds"], 1)
    result["peak_rss_mb"] = proc["peak_rss_mb"]
    log(f"{name} done in {proc['seconds']:.0f} s")
    return result


def run_many(jobs: list[tuple[str, dict, str]], work: Path, timeout: float, parallel: bool) -> list[dict]:
    """``run_child`` for each ``(kind, args, name)``, one after the other or all at once."""
    if not parallel:
        return [run_child(kind, args, work, timeout, name=name) for kind, args, name in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(run_child, kind, args, work, timeout, name) for kind, args, name in jobs]
        return [f.result() for f in futures]


def emit(result: dict) -> None:
    """A child's one result line."""
    print(RESULT_TAG + json.dumps(result, ensure_ascii=False), flush=True)


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (e.g. ``VmHWM``, ``VmRSS``) in decimal MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    return None


def _vm_hwm_mb() -> float | None:
    return _proc_status_mb("VmHWM")


def _rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


# ======================================================================================
# children (each runs in its own process)
# ======================================================================================

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


def child_setup(a: dict) -> dict:
    """Prepare DATA_DIRs (optionally from a corpus repeated N times) and a random-weight export."""
    import poetry_gpt  # noqa: F401
    from poetry_gpt.config import DataConfig
    from poetry_gpt.data.prepare import prepare

    done = {}
    for job in a["data"]:
        raw = Path(job["raw"])
        if job["copies"] > 1:
            text = raw.read_text(encoding="utf-8-sig")
            if not text.endswith("\n"):
                text += "\n"
            raw = Path(job["out"] + ".raw.txt")
            raw.write_text(text * job["copies"], encoding="utf-8")
        start = time.perf_counter()
        config = DataConfig(keep_duplicates=job["keep_duplicates"], valid_fraction=job["valid_fraction"])
        result = prepare([raw], job["out"], config)
        if raw != Path(job["raw"]):
            raw.unlink()
        splits = result.manifest["splits"]
        done[job["out"]] = {"seconds": round(time.perf_counter() - start, 2),
                            "train_poems": splits["train"]["poems"], "train_tokens": splits["train"]["tokens"],
                            "valid_poems": splits["valid"]["poems"], "vocab_size": result.manifest["vocab"]["size"]}
    export = a.get("export")
    if export:
        from poetry_gpt.config import ModelConfig
        from poetry_gpt.model.gpt2 import build_model
        from poetry_gpt.model.export import save_export
        from poetry_gpt.data.records import load_manifest
        from poetry_gpt.data.vocab import CharVocab

        manifest = load_manifest(export["data_dir"])
        vocab = CharVocab.load(manifest.path)
        shape = export["shape"]
        lm = build_model(ModelConfig(n_layer=shape["n_layer"], n_embd=shape["n_embd"], n_head=shape["n_head"],
                                     n_ctx=shape["n_ctx"]), vocab, seed=0)
        save_export(lm, vocab, export["out"], {"genre": manifest.genre, "genres": manifest.data.get("genres", {}),
                                               "n_ctx": shape["n_ctx"], "random_init": True})
    return {"data": done}


def child_train_poetry(a: dict) -> dict:
    """poetry_gpt's own training path: ``build_lm_trainer`` + ``make_optimizer`` + ``fit(train_dataset)``."""
    import numpy as np

    import poetry_gpt  # noqa: F401
    import tf_keras
    from poetry_gpt.config import config_from_preset
    from poetry_gpt.train.distribute import distribute_options, make_strategy
    from poetry_gpt.model.gpt2 import build_model, count_parameters
    from poetry_gpt.data.records import load_manifest, train_dataset
    from poetry_gpt.train.loop import build_lm_trainer, make_optimizer, resolve_precision, set_precision
    from poetry_gpt.data.vocab import CharVocab

    threads = _tf_threads()
    config = config_from_preset(a["preset"])
    t, m = config.train, config.model
    manifest = load_manifest(a["data_dir"])
    vocab = CharVocab.load(manifest.path)
    precision = resolve_precision(t.precision)
    set_precision(precision)
    total = a["warmup"] + a["steps"]
    strategy = make_strategy(t.strategy)
    with strategy.scope():
        lm = build_model(m, vocab, seed=t.seed)
        trainer = build_lm_trainer(lm)
        trainer.compile(optimizer=make_optimizer(config, total, precision))
    data = distribute_options(train_dataset(manifest, t.batch_size, m.n_ctx, seed=t.seed, pad_id=vocab.pad_id,
                                            sep_id=vocab.sep_id), strategy)
    times: list[float] = []
    history = trainer.fit(data, epochs=1, steps_per_epoch=total, callbacks=[_keras_timer(times)], verbose=0)
    window, durations = _steady(times, a["warmup"])
    # the batches of the timed window, read again from the same deterministic stream, to count padding
    padded = 0
    for k, batch in enumerate(train_dataset(manifest, t.batch_size, m.n_ctx, seed=t.seed, pad_id=vocab.pad_id,
                                            sep_id=vocab.sep_id).take(total)):
        if k >= a["warmup"]:
            padded += int(np.sum(batch["input_ids"].numpy() == vocab.pad_id))
    tokens = len(durations) * t.batch_size * m.n_ctx
    n_params = count_parameters(lm)
    return {"system": "poetry_gpt: build_lm_trainer + make_optimizer + fit(records.train_dataset), packed rows",
            "preset": a["preset"], "precision": precision, "policy": tf_keras.mixed_precision.global_policy().name,
            "precision_setting": t.precision, "threads": threads,
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


def child_generate(a: dict) -> dict:
    """``generate.benchmark`` (compiled sampler vs eager / XLA ``model.generate``) and ``PoemGenerator``
    on an export, with and without a form."""
    import statistics

    import poetry_gpt  # noqa: F401
    from bench_generate import benchmark  # scripts/ is on sys.path: this file runs as a script
    from poetry_gpt.generate.generator import PoemGenerator

    b = a["benchmark"]
    report = {"benchmark": benchmark(b["n_layer"], b["n_embd"], b["n_head"], b["n_ctx"], b["vocab_size"],
                                     b["new_tokens"], b["top_k"], tuple(b["batches"]), b["repeats"],
                                     b["eager_repeats"])}

    gen = PoemGenerator(a["export"])
    budget, repeats, title = a["max_new_tokens"], a["repeats"], "春晓"
    forms = {}
    for form in (None, "五绝"):
        def timed(n, seed):
            start = time.perf_counter()
            samples = gen.generate(title=title, num_samples=n, batch_size=n, seed=seed, form=form,
                                   max_new_tokens=budget, top_k=10)
            return time.perf_counter() - start, samples

        timed(1, 0)  # compiles (its first-call time is measured in a fresh process: child_first_call)
        runs1 = [timed(1, 100 + r) for r in range(repeats)]
        timed(8, 0)
        runs8 = [timed(8, 200 + 8 * r) for r in range(repeats)]
        best1 = min(runs1, key=lambda r: r[0])
        best8 = min(runs8, key=lambda r: r[0])
        tokens1 = statistics.mean(s.tokens for _, ss in runs1 for s in ss)
        tokens8 = statistics.mean(s.tokens for _, ss in runs8 for s in ss)
        forms[form or "none"] = {
            "ms_per_poem_batch_1": round(1000 * best1[0], 1),
            "median_ms_per_poem_batch_1": round(1000 * statistics.median(r[0] for r in runs1), 1),
            "tokens_per_poem_batch_1": round(tokens1, 1),
            "ms_per_token_batch_1": round(1000 * statistics.median(r[0] / max(1, r[1][0].tokens) for r in runs1), 2),
            "poems_per_s_batch_8": round(8 / best8[0], 2), "tokens_per_poem_batch_8": round(tokens8, 1),
            "closed_fraction": round(statistics.mean(s.closed for _, ss in runs1 + runs8 for s in ss), 3),
        }
    eager = []
    for r in range(a["eager_repeats"]):
        start = time.perf_counter()
        samples = gen.generate_eager(title=title, num_samples=1, batch_size=1, seed=300 + r, max_new_tokens=budget,
                                     top_k=10)
        eager.append((time.perf_counter() - start, samples[0].tokens))
    eager_ms_per_token = statistics.median(1000 * s / max(1, n) for s, n in eager)
    free = forms["none"]
    report["poem_generator"] = {
        "export": a["export_note"], "title": title, "max_new_tokens": budget, "top_k": 10, "repeats": repeats,
        "forms": forms,
        "eager": {"ms_per_poem_batch_1": round(1000 * min(s for s, _ in eager), 1),
                  "tokens_per_poem_batch_1": round(statistics.mean(n for _, n in eager), 1),
                  "ms_per_token_batch_1": round(eager_ms_per_token, 2)},
        "speedup_per_token_batch_1_vs_eager": round(eager_ms_per_token / free["ms_per_token_batch_1"], 1),
        "programs_traced": dict(gen.sampler.traces),
    }
    return report


def child_first_call(a: dict) -> dict:
    """The first poem of a fresh process, as ``poetry-gpt generate --title 春晓 [--form F]`` writes it:
    load the export, then time one batch-1 ``generate`` call (it compiles the sampler's programs)."""
    os.environ.setdefault("USE_TF", "1")  # as poetry_gpt.cli
    import poetry_gpt  # noqa: F401
    from poetry_gpt.generate.generator import PoemGenerator

    start = time.perf_counter()
    gen = PoemGenerator(a["export"])
    loaded = time.perf_counter()
    samples = gen.generate(title="春晓", num_samples=1, batch_size=1, seed=0, form=a["form"],
                           max_new_tokens=a["max_new_tokens"], top_k=10)
    return {"form": a["form"] or "none", "load_seconds": round(loaded - start, 2),
            "first_call_seconds_batch_1": round(time.perf_counter() - loaded, 2), "tokens": samples[0].tokens,
            "compute_dtype": gen.sampler.net.dtype.name, "programs_traced": dict(gen.sampler.traces)}


def child_train_memory(a: dict) -> dict:
    """A short real ``train`` run (validation, samples, checkpoint and export included)."""
    import poetry_gpt  # noqa: F401
    from poetry_gpt.config import config_from_preset
    from poetry_gpt.generate.epoch import sample_poems
    from poetry_gpt.train.loop import train

    import tensorflow  # noqa: F401  (imports first, to separate their memory from training's)
    import transformers  # noqa: F401

    after_imports = _rss_mb()
    config = config_from_preset(a["preset"]).replace(
        train={"steps_per_epoch": a["steps"], "epochs": 1, "checkpoint_every": 0})
    result = train(a["data_dir"], a["run_dir"], config, echo=lambda line: print(line, file=sys.stderr), verbose=0,
                   sample_poems=sample_poems)
    return {"preset": a["preset"], "steps": result.global_step, "train_seconds": round(result.seconds, 1),
            "tokens_per_s": round(result.tokens_per_second, 1), "rss_after_imports_mb": after_imports,
            "vm_hwm_mb": _vm_hwm_mb(), "torch_imported": "torch" in sys.modules}


def child_generate_memory(a: dict) -> dict:
    """Load an export with ``PoemGenerator`` and write poems (batch 1 and 8; free, a form, a form
    with rhyme), in a process set up as ``poetry-gpt generate`` sets itself up (``USE_TF=1``)."""
    os.environ.setdefault("USE_TF", "1")  # as poetry_gpt.cli: transformers leaves torch alone
    import poetry_gpt  # noqa: F401
    from poetry_gpt.generate.generator import PoemGenerator

    gen = PoemGenerator(a["export"])
    poems = 0
    long_form = "七律" if gen.n_ctx >= 128 else "五律"  # a 七律 needs 65 tokens after 【: more than `tiny` holds
    for options in ({"max_new_tokens": a["max_new_tokens"]}, {"form": "五绝"}, {"form": long_form, "rhyme": True}):
        for n in (1, 8):  # forms write their whole poem (they finish by construction)
            poems += len(gen.generate(title="春晓", num_samples=n, batch_size=n, seed=0, **options))
    return {"poems": poems, "forms": ["五绝", f"{long_form} --rhyme"], "vm_hwm_mb": _vm_hwm_mb(),
            "torch_imported": "torch" in sys.modules, "programs_traced": dict(gen.sampler.traces)}


def child_export(a: dict) -> dict:
    """``poetry-gpt export`` of an export (timed), then the loaded SavedModel against ``PoemGenerator``:
    the same poems (prompts, options, seeds) at batch 1 and 8, timed in turns, best and median of the rounds."""
    import statistics

    import poetry_gpt  # noqa: F401
    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.serve.saved_model import export_saved_model

    import tensorflow as tf

    out = Path(a["out"])
    info = export_saved_model(a["export"], out, batch_sizes="1,8")
    start = time.perf_counter()
    loaded = tf.saved_model.load(str(out))
    load_seconds = time.perf_counter() - start
    gen = PoemGenerator(a["export"])
    budget, title = a["max_new_tokens"], "春晓"
    rows = {}
    for form in ("", "五绝"):
        for n in (1, 8):
            opts = dict(top_k=10, max_new_tokens=budget if not form else 0)
            paths = {
                "poem_generator": lambda seed: [s.text for s in gen.generate(
                    title=title, num_samples=n, batch_size=n, seed=seed, form=form or None, top_k=10,
                    max_new_tokens=opts["max_new_tokens"] or None)],
                "saved_model": lambda seed: [t.decode() for t in loaded.generate(
                    prompt=[""] * n, title=title, seed=seed, form=form, **opts)["poem"].numpy().tolist()],
            }
            first, wall, same = {}, {k: [] for k in paths}, True
            for name, fn in paths.items():
                t0 = time.perf_counter()
                fn(0)
                first[name] = round(time.perf_counter() - t0, 2)
            for r in range(a["repeats"]):
                poems = {}
                for name, fn in (list(paths.items()) if r % 2 == 0 else list(paths.items())[::-1]):
                    t0 = time.perf_counter()
                    poems[name] = fn(100 + 8 * r)
                    wall[name].append(time.perf_counter() - t0)
                same &= poems["poem_generator"] == poems["saved_model"]
            row = {name: {"ms_per_poem": round(1000 * min(wall[name]) / n, 1),
                          "median_ms_per_poem": round(1000 * statistics.median(wall[name]) / n, 1),
                          "first_call_seconds": first[name]} for name in paths}
            row["ratio_saved_model_vs_generator"] = round(min(wall["saved_model"]) / min(wall["poem_generator"]), 3)
            row["median_ratio"] = round(statistics.median(wall["saved_model"]) / statistics.median(wall["poem_generator"]), 3)
            row["same_poems"] = same
            rows[f"{form or 'free'}_batch_{n}"] = row
    return {"export_seconds": info["seconds"], "saved_model_bytes": info["bytes"],
            "load_seconds": round(load_seconds, 2), "title": title, "max_new_tokens_free": budget, "top_k": 10,
            "repeats": a["repeats"], "runs": rows}


CHILDREN = {"peak": child_peak, "setup": child_setup, "train_poetry": child_train_poetry,
            "train_seed": child_train_seed, "train_torch": child_train_torch, "generate": child_generate,
            "first_call": child_first_call,
            "train_memory": child_train_memory, "generate_memory": child_generate_memory,
            "export": child_export}


# ======================================================================================
# the parent: sections
# ======================================================================================

class Bench:
    """The run: options, a work folder, the prepared data it shares between sections."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.quick = args.quick
        self.timeout = 600 if args.quick else 3600
        self.command = [Path(sys.executable).name, *sys.argv]
        self.shape = dict(TINY_SHAPE if self.quick else SMALL_SHAPE)
        self.preset = "tiny" if self.quick else "small"
        self.warmup = args.warmup if args.warmup is not None else (2 if self.quick else 5)
        self.steps = args.steps if args.steps is not None else (3 if self.quick else 20)
        self.rounds = args.rounds if args.rounds is not None else (1 if self.quick else 2)
        self.setup_info: dict = {}

    # -- shared data ----------------------------------------------------------------------
    def train_data(self) -> Path:
        return self.work / "data-train"

    def export_dir(self) -> Path:
        return self.work / "export"

    def memory_copies(self) -> list[int]:
        return [1, 4] if self.quick else [1, 16]

    def memory_corpus(self) -> Path:
        return self.args.corpus if self.quick else self.args.full_corpus

    def memory_data(self, copies: int) -> Path:
        return self.work / f"data-memory-x{copies}"

    def setup(self, sections: list[str]) -> None:
        """Prepare, in one subprocess, every DATA_DIR and the export the chosen sections need."""
        jobs, export = [], None
        need_train_data = "train" in sections or (bool({"generate", "memory", "export"} & set(sections))
                                                   and not self.args.run)
        if need_train_data:
            jobs.append({"raw": str(self.args.corpus), "copies": 1, "out": str(self.train_data()),
                         "keep_duplicates": False, "valid_fraction": 0.02})
        if "memory" in sections:
            raw = self.memory_corpus()
            lines = sum(1 for ln in raw.read_text(encoding="utf-8-sig").splitlines() if ln.strip())
            for copies in self.memory_copies():
                # every copy kept (duplicates too), about 100 validation poems whatever the size
                jobs.append({"raw": str(raw), "copies": copies, "out": str(self.memory_data(copies)),
                             "keep_duplicates": True, "valid_fraction": min(0.5, 100 / (lines * copies))})
        if {"generate", "memory", "export"} & set(sections) and not self.args.run:
            s = self.shape
            export = {"data_dir": str(self.train_data()), "out": str(self.export_dir()),
                      "shape": {k: s[k] for k in ("n_layer", "n_embd", "n_head", "n_ctx")}}
        if jobs or export:
            self.setup_info = run_child("setup", {"data": jobs, "export": export}, self.work, self.timeout)

    def generation_export(self) -> tuple[str, str]:
        if self.args.run:
            return str(self.args.run), f"trained run {self.args.run}"
        s = self.shape
        return (str(self.export_dir()),
                f"random-initialised weights (speed only, no poem quality), {s['n_layer']} layers, width "
                f"{s['n_embd']}, {s['n_head']} heads, context {s['n_ctx']}, vocabulary of {self.args.corpus.name}")

    # -- sections -------------------------------------------------------------------------
    def section_train(self) -> dict:
        load_before = load_average()
        peak = run_child("peak", {"size": 1024 if self.quick else 2048, "reps": 3 if self.quick else 10,
                                  "rounds": 2 if self.quick else 3}, self.work, self.timeout)
        common = {"data_dir": str(self.train_data()), "raw": str(self.args.corpus), "warmup": self.warmup,
                  "steps": self.steps, "shape": self.shape}
        systems = {"poetry_gpt": ("train_poetry", {**common, "preset": self.preset}),
                   "seed_style": ("train_seed", common),
                   "torch_bf16": ("train_torch", {**common, "peak_size": 1024 if self.quick else 2048})}
        have_torch = importlib.util.find_spec("torch") is not None
        rounds: dict[str, list] = {name: [] for name in systems}
        order = list(systems)
        for r in range(self.rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                kind, child_args = systems[name]
                if name == "torch_bf16" and not have_torch:
                    continue
                result = run_child(kind, child_args, self.work, self.timeout, name=f"{kind}-round{r + 1}")
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
                "preset": self.preset, "shape": self.shape, "corpus": str(self.args.corpus),
                "warmup_steps": self.warmup, "measured_steps": self.steps, "rounds": self.rounds,
                "matmul_peak": {**peak, "note": "tf.matmul of two square matrices, best of timed runs"},
                "mfu_formula": "useful tokens/s × (6·N + 12·L·T·D) / matmul peak of the system's compute precision",
                "systems": out_systems,
                "ratios": {"poetry_gpt_vs_seed_style": ratio("seed_style"),
                           "poetry_gpt_vs_torch_bf16": ratio("torch_bf16")},
                **section_context(load_before, self.command)}

    def section_generate(self) -> dict:
        load_before = load_average()
        s = self.shape
        if self.quick:
            bench = {"n_layer": s["n_layer"], "n_embd": s["n_embd"], "n_head": s["n_head"], "n_ctx": s["n_ctx"],
                     "vocab_size": 500, "new_tokens": 16, "top_k": 10, "batches": [1, 8], "repeats": 1,
                     "eager_repeats": 1}
        else:
            bench = {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_ctx": 128, "vocab_size": 5300, "new_tokens": 64,
                     "top_k": 10, "batches": [1, 8], "repeats": 5, "eager_repeats": 2}
        export, note = self.generation_export()
        budget = 32 if self.quick else 64
        result = run_child("generate", {"benchmark": bench, "export": export, "export_note": note,
                                        "max_new_tokens": budget, "repeats": 1 if self.quick else 5,
                                        "eager_repeats": 1}, self.work, self.timeout)
        # a fresh process per form: a first call after other compiles in the same process would be faster
        first = {(form or "none"): run_child("first_call", {"export": export, "form": form, "max_new_tokens": budget},
                                             self.work, self.timeout, name=f"first_call-{form or 'none'}")
                 for form in (None, "五绝")}
        result["poem_generator"]["first_call_fresh_process"] = first
        summary = summarise_generation(result["benchmark"])
        # the first poem a user waits for: the slowest first call of the compiled paths at batch 1
        summary["first_call_seconds_worst"] = max([summary.get("first_call_seconds") or 0.0]
                                                  + [f["first_call_seconds_batch_1"] for f in first.values()])
        return {"what": "poem generation speed: compiled sampler (PoemGenerator) vs transformers' eager and XLA "
                        "model.generate",
                "summary": summary, "benchmark_model": "random-initialised, shape " + json.dumps(
                    {k: bench[k] for k in ("n_layer", "n_embd", "n_head", "n_ctx", "vocab_size")}),
                **result, **section_context(load_before, self.command)}

    def section_prepare(self) -> dict:
        load_before = load_average()
        if self.quick:
            cmd_args = ["--raw", str(self.args.corpus), "--copies", "1,4", "--repeats", "1"]
        else:
            cmd_args = ["--raw", str(self.args.full_corpus), "--copies", "1,4,16", "--repeats", "2"]
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_prepare.py"), *cmd_args, "--tmp", str(self.work)]
        log("prepare (scripts/bench_prepare.py) ...")
        proc = run_process(cmd, self.work, "bench_prepare", self.timeout)
        log(f"prepare done in {proc['seconds']:.0f} s")
        result = json.loads(proc["stdout"])
        result["process_peak_rss_mb"] = proc["peak_rss_mb"]
        result["script"] = "scripts/bench_prepare.py " + " ".join(cmd_args)
        return {"what": "characters/s of prepare(): raw.txt -> vocabulary + TFRecords + manifest", **result,
                **section_context(load_before, self.command)}

    def section_memory(self) -> dict:
        load_before = load_average()
        steps = 5 if self.quick else 30
        export, note = self.generation_export()
        jobs = [("train_memory", {"data_dir": str(self.memory_data(c)), "run_dir": str(self.work / f"run-x{c}"),
                                  "preset": self.preset, "steps": steps}, f"train_memory-x{c}")
                for c in self.memory_copies()]
        jobs.append(("generate_memory", {"export": export, "max_new_tokens": 32 if self.quick else 64},
                     "generate_memory"))
        # peak RSS does not depend on CPU contention: --quick runs these side by side to save time
        results = run_many(jobs, self.work, self.timeout, parallel=self.quick)
        runs = []
        for copies, result in zip(self.memory_copies(), results):
            info = self.setup_info.get("data", {}).get(str(self.memory_data(copies)), {})
            runs.append({"copies": copies, "corpus": str(self.memory_corpus()),
                         "train_poems": info.get("train_poems"), "train_tokens": info.get("train_tokens"), **result})
        gen = results[-1]
        first, last = runs[0], runs[-1]
        return {"what": "peak resident memory (ru_maxrss of the process, decimal MB)",
                "train": {"runs": runs, "what": f"a real `train` run of {steps} steps (preset {self.preset}, "
                                                "validation, samples, checkpoint and export included)",
                          "growth_mb": round(last["peak_rss_mb"] - first["peak_rss_mb"], 1),
                          "growth_ratio": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3)},
                "generate": {"export": note, **gen},
                "limits_mb": {"train": GOAL_TRAIN_RSS_MB, "generate": GOAL_GEN_RSS_MB},
                **section_context(load_before, self.command)}

    def section_export(self) -> dict:
        load_before = load_average()
        export, note = self.generation_export()
        result = run_child("export", {"export": export, "out": str(self.work / "saved_model"),
                                      "max_new_tokens": 32 if self.quick else 64,
                                      "repeats": 2 if self.quick else 5}, self.work, self.timeout)
        ratios = [r["ratio_saved_model_vs_generator"] for r in result["runs"].values()]
        return {"what": "poetry-gpt export: export time, SavedModel size, load time, and ms per poem of the loaded "
                        "signature against PoemGenerator in the same process, in turns, alternating the order (same prompts and seeds)",
                "export": note, **result, "worst_ratio_vs_generator": max(ratios),
                "all_same_poems": all(r["same_poems"] for r in result["runs"].values()),
                **section_context(load_before, self.command)}


def _path_stats(row: dict, name: str) -> dict:
    """Seconds per call and first-call seconds of one path (compiled, eager, hf_xla) of a
    ``generate.benchmark`` batch row (both its nested and its earlier flat layout)."""
    if isinstance(row.get(name), dict):
        return row[name]
    first = row.get(f"{name}_first_call_seconds", row.get("first_call_seconds") if name == "compiled" else None)
    return {"seconds": row[f"{name}_seconds"], "first_call_seconds": first}


def summarise_generation(bench: dict) -> dict:
    """Per-poem figures from ``generate.benchmark``'s report: ms a poem at batch 1, poems/s at batch 8."""
    rows = bench["batches"]
    summary = {"new_tokens": bench["new_tokens"]}
    if "1" in rows:
        row = rows["1"]
        compiled, eager, xla = (_path_stats(row, k) for k in ("compiled", "eager", "hf_xla"))
        summary.update({
            "batch_1_ms_per_poem_compiled": round(1000 * compiled["seconds"], 1),
            "batch_1_ms_per_poem_eager": round(1000 * eager["seconds"], 1),
            "batch_1_ms_per_poem_hf_xla": round(1000 * xla["seconds"], 1),
            "batch_1_speedup_vs_eager": round(eager["seconds"] / compiled["seconds"], 1),
            "first_call_seconds": compiled["first_call_seconds"],
            "hf_xla_first_call_seconds": xla["first_call_seconds"],
            "recompiled_for_other_opening": row.get("recompiled_for_other_opening")})
    if "8" in rows:
        row = rows["8"]
        compiled, eager, xla = (_path_stats(row, k) for k in ("compiled", "eager", "hf_xla"))
        summary.update({
            "batch_8_poems_per_s_compiled": round(8 / compiled["seconds"], 2),
            "batch_8_poems_per_s_eager": round(8 / eager["seconds"], 2),
            "batch_8_poems_per_s_hf_xla": round(8 / xla["seconds"], 2),
            "batch_8_speedup_vs_eager": round(eager["seconds"] / compiled["seconds"], 1),
            "batch_8_first_call_seconds": compiled["first_call_seconds"]})
    return summary


def _get(doc: dict, *keys):
    """``doc[k1][k2]...``, or None where a key is missing."""
    node = doc
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


# ======================================================================================
# serve: `poetry-gpt serve` under concurrent clients (dynamic batching vs one at a time)
# ======================================================================================

GOAL_SERVE_SPEEDUP = 5.0  # poems/s at 32 clients, batched, over one-at-a-time serving
GOAL_SERVE_P95 = 2.0  # p95 latency at 32 clients at most this many times a single request's
GOAL_SERVE_RSS_MB = 1200.0
SERVE_CLIENTS = (1, 8, 32)
SERVE_REQUEST = {"title": "春", "form": "五绝", "n": 1}  # a form bounds the poem on random weights too


class _ServerProcess:
    """``poetry-gpt serve`` on a free 127.0.0.1 port, started and stopped (Ctrl-C) by the bench."""

    def __init__(self, export: str, max_batch: int, work: Path, name: str):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
        self.log_path = work / f"{name}.stderr"
        self.log = open(self.log_path, "w", encoding="utf-8")
        cmd = [sys.executable, "-c", "from poetry_gpt.cli import main; main()", "serve", "--run", export,
               "--port", "0", "--max-batch", str(max_batch), "--max-queue", "256"]
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env=env, cwd=str(ROOT))
        self.url = None
        while self.url is None:
            if self.proc.poll() is not None or time.perf_counter() - started > 1800:
                self.stop()
                raise ChildError(f"{name}: the server did not start: " + self.log_path.read_text()[-1500:])
            ready = [ln for ln in self.log_path.read_text(encoding="utf-8").splitlines() if ln.startswith("ready: ")]
            self.url = ready[0].split()[1].rstrip("/") if ready else None
            time.sleep(0.2)
        self.start_seconds = round(time.perf_counter() - started, 1)

    def peak_rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        kb = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
        return None if kb is None else round(kb * 1024 / 1e6, 1)

    def stop(self) -> int | None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _load_level(url: str, clients: int, seconds: float, seed0: int) -> dict:
    """``clients`` threads, each sending one request after the other for ``seconds`` (keep-alive connections)."""
    import http.client
    import threading
    from urllib.parse import urlparse

    where = urlparse(url)
    latencies, errors, poems = [], [], [0]
    lock = threading.Lock()
    start_line = threading.Barrier(clients)
    stop_at = [0.0]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
        start_line.wait()
        i = 0
        while time.perf_counter() < stop_at[0]:
            body = json.dumps({**SERVE_REQUEST, "seed": seed0 + c * 100000 + i}, ensure_ascii=False).encode()
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                answer = json.loads(r.read())
                ok = r.status == 200
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, answer = False, {"error": repr(exc)}
                conn.close()
                conn = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
            took = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(took)
                    poems[0] += len(answer["poems"])
                else:
                    errors.append(answer.get("error", "?"))
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ordered = sorted(latencies)

    def pct(q: float):
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None

    return {"clients": clients, "seconds": round(wall, 2), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / wall, 2), "poems_per_s": round(poems[0] / wall, 2),
            "p50_ms": pct(0.5), "p95_ms": pct(0.95), "errors": len(errors), "first_errors": errors[:3]}


def bench_serve(bench: "Bench") -> dict:
    """The ``serve`` section: the same server batched (``--max-batch 32``) and one at a time (``--max-batch 1``),
    each under 1, 8 and 32 concurrent clients for a bounded time."""
    load_before = load_average()
    if not bench.args.run and not bench.export_dir().exists():
        s = bench.shape
        run_child("setup", {"data": [{"raw": str(bench.args.corpus), "copies": 1, "out": str(bench.train_data()),
                                      "keep_duplicates": False, "valid_fraction": 0.02}],
                            "export": {"data_dir": str(bench.train_data()), "out": str(bench.export_dir()),
                                       "shape": {k: s[k] for k in ("n_layer", "n_embd", "n_head", "n_ctx")}}},
                  bench.work, bench.timeout, name="serve_setup")
    export, note = bench.generation_export()
    seconds = 5.0 if bench.quick else 20.0
    modes = {}
    for mode, max_batch in (("batched", 32), ("one_at_a_time", 1)):
        log(f"serve {mode} (--max-batch {max_batch}) ...")
        server = _ServerProcess(export, max_batch, bench.work, f"serve_{mode}")
        try:
            levels = [_load_level(server.url, n, seconds, seed0=n * 10**7) for n in SERVE_CLIENTS]
            peak = server.peak_rss_mb()
        finally:
            code = server.stop()
        modes[mode] = {"max_batch": max_batch, "start_seconds": server.start_seconds, "levels": levels,
                       "server_peak_rss_mb": peak, "exit_code": code}
        log(f"serve {mode} done")
    batched, single = modes["batched"]["levels"], modes["one_at_a_time"]["levels"]
    single_latency = batched[0]["p50_ms"]
    summary = {"single_request_p50_ms": single_latency,
               "poems_per_s_32_batched": batched[-1]["poems_per_s"],
               "poems_per_s_32_one_at_a_time": single[-1]["poems_per_s"],
               "speedup_32": round(batched[-1]["poems_per_s"] / single[-1]["poems_per_s"], 2)
               if single[-1]["poems_per_s"] else None,
               "p95_32_over_single": round(batched[-1]["p95_ms"] / single_latency, 2)
               if batched[-1]["p95_ms"] and single_latency else None,
               "errors": sum(lv["errors"] for m in modes.values() for lv in m["levels"]),
               "server_peak_rss_mb": modes["batched"]["server_peak_rss_mb"]}
    return {"what": f"poetry-gpt serve under 1/8/32 concurrent clients, {seconds:.0f} s each, POST /api/generate "
                    f"{json.dumps(SERVE_REQUEST, ensure_ascii=False)} with a new seed per request; 'batched' is the "
                    "default dynamic batching, 'one_at_a_time' the same server with --max-batch 1",
            "export": note, "summary": summary, **modes, **section_context(load_before, bench.command)}


def _why_unjudged(doc: dict, section: str, detail: str | None = None) -> str:
    """Why a goal of ``section`` has no figure: setup failed, section not run, section failed, or ``detail``."""
    if doc.get("setup_error"):
        return "setup failed: " + doc["setup_error"][:200]
    if section not in doc:
        return f"section {section} not run (--only)"
    if isinstance(doc[section], dict) and "error" in doc[section]:
        return f"section {section} failed: " + doc[section]["error"][:200]
    return detail or f"no figure in section {section}"


def _judge(value, target: str, ok, why: str) -> dict:
    """One goal: its figure, target and status (pass / fail / unjudged, with ``why`` when unjudged)."""
    if value is None:
        return {"value": None, "target": target, "status": "unjudged", "pass": None, "why": why}
    passed = bool(ok(value))
    return {"value": value, "target": target, "status": "pass" if passed else "fail", "pass": passed}


def goal_figures(doc: dict) -> dict:
    """The figure each goal is judged on (None where it was not measured) and its section.

    Args:
        doc: the benchmark document (sections as ``main`` writes them).
    """
    prep_runs = _get(doc, "prepare", "runs") or []
    prep_rates = [r["chars_per_s"] for r in prep_runs]
    default_rate = _get(doc, "prepare", "default_config_1x", "chars_per_s")
    prep_min = min(prep_rates + ([default_rate] if default_rate else [])) if prep_rates else None
    linear = round(prep_runs[-1]["chars_per_s"] / prep_runs[0]["chars_per_s"], 3) if len(prep_runs) > 1 else None
    train_runs = _get(doc, "memory", "train", "runs") or []
    gen = ("generate", "summary")
    return {
        "train_vs_seed_style": ("train", _get(doc, "train", "ratios", "poetry_gpt_vs_seed_style")),
        "train_vs_torch_bf16": ("train", _get(doc, "train", "ratios", "poetry_gpt_vs_torch_bf16")),
        "generate_batch_1_vs_eager": ("generate", _get(doc, *gen, "batch_1_speedup_vs_eager")),
        "generate_first_compile": ("generate", _get(doc, *gen, "first_call_seconds_worst")),
        "generate_no_recompile_for_new_opening": ("generate", _get(doc, *gen, "recompiled_for_other_opening")),
        "prepare_chars_per_s": ("prepare", prep_min),
        "prepare_linear": ("prepare", linear),
        "train_peak_rss_mb": ("memory", max(r["peak_rss_mb"] for r in train_runs) if train_runs else None),
        "train_peak_rss_flat": ("memory", _get(doc, "memory", "train", "growth_ratio")),
        "generate_peak_rss_mb": ("memory", _get(doc, "memory", "generate", "peak_rss_mb")),
        "serve_32_clients_vs_one_at_a_time": ("serve", _get(doc, "serve", "summary", "speedup_32")),
        "serve_32_clients_p95_vs_single": ("serve", _get(doc, "serve", "summary", "p95_32_over_single")),
        "serve_errors": ("serve", _get(doc, "serve", "summary", "errors")),
        "serve_peak_rss_mb": ("serve", _get(doc, "serve", "summary", "server_peak_rss_mb")),
        "export_saved_model_vs_generator": ("export", _get(doc, "export", "worst_ratio_vs_generator")),
    }


GOAL_TARGETS = {
    "train_vs_seed_style": (f">= {GOAL_VS_SEED}x", lambda v: v >= GOAL_VS_SEED),
    "train_vs_torch_bf16": (f">= {GOAL_VS_TORCH}x", lambda v: v >= GOAL_VS_TORCH),
    "generate_batch_1_vs_eager": (f">= {GOAL_GEN_SPEEDUP}x", lambda v: v >= GOAL_GEN_SPEEDUP),
    "generate_first_compile": (f"<= {GOAL_FIRST_COMPILE_S} s (first call, fresh process)",
                               lambda v: v <= GOAL_FIRST_COMPILE_S),
    "generate_no_recompile_for_new_opening": ("false", lambda v: v is False),
    "prepare_chars_per_s": (f">= {GOAL_PREPARE_CHARS_PER_S} (slowest size)", lambda v: v >= GOAL_PREPARE_CHARS_PER_S),
    "prepare_linear": (f"largest/smallest throughput >= {GOAL_PREPARE_LINEAR}", lambda v: v >= GOAL_PREPARE_LINEAR),
    "train_peak_rss_mb": (f"<= {GOAL_TRAIN_RSS_MB:.0f} MB", lambda v: v <= GOAL_TRAIN_RSS_MB),
    "train_peak_rss_flat": (f"large/small corpus peak <= {GOAL_TRAIN_RSS_FLAT}", lambda v: v <= GOAL_TRAIN_RSS_FLAT),
    "generate_peak_rss_mb": (f"<= {GOAL_GEN_RSS_MB:.0f} MB", lambda v: v <= GOAL_GEN_RSS_MB),
    "serve_32_clients_vs_one_at_a_time": (f">= {GOAL_SERVE_SPEEDUP}x poems/s", lambda v: v >= GOAL_SERVE_SPEEDUP),
    "serve_32_clients_p95_vs_single": (f"< {GOAL_SERVE_P95}x a single request's latency", lambda v: v < GOAL_SERVE_P95),
    "serve_errors": ("0", lambda v: v == 0),
    "serve_peak_rss_mb": (f"<= {GOAL_SERVE_RSS_MB:.0f} MB", lambda v: v <= GOAL_SERVE_RSS_MB),
    "export_saved_model_vs_generator": (f"loaded SavedModel ms/poem <= {GOAL_EXPORT_VS_GENERATOR}x PoemGenerator's",
                                        lambda v: v <= GOAL_EXPORT_VS_GENERATOR),
}


def goals(doc: dict) -> dict:
    """Every ANCHORS.md goal, judged on the document: ``status`` pass, fail or unjudged (with ``why``).

    Args:
        doc: the benchmark document (sections as ``main`` writes them).
    """
    torch_skip = _get(doc, "train", "systems", "torch_bf16", "skipped")
    out = {}
    for name, (section, value) in goal_figures(doc).items():
        target, ok = GOAL_TARGETS[name]
        detail = torch_skip if name == "train_vs_torch_bf16" else None
        out[name] = _judge(value, target, ok, _why_unjudged(doc, section, detail))
    return out


def verdict(judged: dict, mode: str) -> dict:
    """Names of the passed, failed and unjudged goals (the last with the reason).

    Args:
        judged: ``goals(doc)``.
        mode: the run's mode (``quick`` figures are not representative; they are judged all the same).
    """
    names = {s: [n for n, g in judged.items() if g["status"] == s] for s in ("pass", "fail", "unjudged")}
    return {"passed": names["pass"], "failed": names["fail"],
            "unjudged": {n: judged[n]["why"] for n in names["unjudged"]},
            "all_judged_pass": not names["fail"] if names["pass"] or names["fail"] else None,
            "mode": mode}


def goals_text(judged: dict, result: dict) -> str:
    """The goals block for a human: one line a goal (status, figure, target, why unjudged) and a verdict line.

    Args:
        judged: ``goals(doc)``.
        result: ``verdict(judged, mode)``.
    """
    lines = [f"goals ({result['mode']} mode" + ("; tiny shapes, figures not representative)" if result["mode"] ==
                                                "quick" else ")")]
    for name, g in judged.items():
        value = "-" if g["value"] is None else json.dumps(g["value"])
        line = f"  {g['status'].upper():<9} {name:<38} {value:>12}  target {g['target']}"
        lines.append(line + (f"  ({g['why']})" if g["status"] == "unjudged" else ""))
    lines.append(f"verdict: {len(result['passed'])} passed, {len(result['failed'])} failed"
                 + (f" ({', '.join(result['failed'])})" if result["failed"] else "")
                 + f", {len(result['unjudged'])} unjudged")
    return "\n".join(lines)


Bench.section_serve = bench_serve


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes and few steps: checks that everything runs")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="the training-speed corpus (tang-4k)")
    p.add_argument("--full-corpus", type=Path, default=DEFAULT_FULL_CORPUS,
                   help="the corpus that prepare and memory repeat (tang-full)")
    p.add_argument("--run", type=Path, default=None, help="a trained RUN_DIR for the PoemGenerator figures")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON document here")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5; quick 2)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 20; quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="runs of each training system (default 2; quick 1)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (logs of each process)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a judged goal fails (unjudged goals are listed with the reason, not failed)")
    p.add_argument("--judge", type=Path, default=None, metavar="BENCH_JSON",
                   help="measure nothing: judge the goals of a document written earlier by --out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is None:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in only if s not in SECTIONS]
        if bad or not only:
            p.error(f"--only: unknown section(s) {', '.join(bad) or '(none)'}; choose from {', '.join(SECTIONS)}")
        args.sections = [s for s in SECTIONS if s in only]
        if args.warmup is not None and args.warmup < 1 or args.steps is not None and args.steps < 1:
            p.error("--warmup and --steps must be >= 1")
        if args.judge is not None:
            args.judged_doc = read_document(p, args.judge)
            return args
        for path, option in ((args.corpus, "--corpus"), (args.full_corpus, "--full-corpus")):
            needed = option == "--corpus" or {"prepare", "memory"} & set(args.sections) and not args.quick
            if needed and not path.is_file():
                p.error(f"{option}: no such file {path}; give the corpus's path with {option} PATH")
    return args


def read_document(parser: argparse.ArgumentParser, path: Path) -> dict:
    """The JSON document ``--judge`` names (a usage error, exit 2, when it is not one).

    Args:
        parser: reports the error.
        path: a file written by ``--out``.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        parser.error(f"--judge: cannot read {path}: {exc}")
    if not isinstance(doc, dict) or doc.get("benchmark") != "poetry_gpt scripts/bench.py":
        parser.error(f"--judge: {path} is not a document written by scripts/bench.py --out")
    return doc


def code_path(doc: dict) -> dict:
    """Which code path the figures come from: the training precision poetry_gpt chose, the CPU
    features that choice rests on, the sampler's compute type and the threads every system used.

    Args:
        doc: the benchmark document with its sections.
    """
    system = _get(doc, "train", "systems", "poetry_gpt") or {}
    first = _get(doc, "generate", "poem_generator", "first_call_fresh_process", "none") or {}
    flags = set(_cpu_flags())
    return {"training_precision": system.get("precision") or _why_unjudged(doc, "train"),
            "training_policy": system.get("policy"), "precision_setting": system.get("precision_setting"),
            "precision_rule": "auto: bf16 when the CPU has amx_bf16 or avx512_bf16 (or a GPU of compute "
                              "capability >= 8), else fp32",
            "cpu_amx_bf16": "amx_bf16" in flags, "cpu_avx512_bf16": "avx512_bf16" in flags,
            "sampler_compute_dtype": first.get("compute_dtype"),
            "threads": usable_cores(), "threads_rule": "every core the process may run on (CPU affinity), "
                                                       "TensorFlow's intra-op pool and torch.set_num_threads alike"}


def measure(args: argparse.Namespace) -> tuple[dict, bool]:
    """Run the chosen sections in a temporary work folder.

    Args:
        args: the parsed options.

    Returns:
        The document (without its goals) and whether the setup or a section failed.
    """
    work = Path(tempfile.mkdtemp(prefix="poetry_gpt-bench-"))
    bench = Bench(args, work)
    started = time.time()
    doc = {"benchmark": "poetry_gpt scripts/bench.py", "mode": "quick" if args.quick else "full",
           "note": "ratios are measured back to back in this run; absolute figures drift with the machine and its "
                   "load (see each section's load averages)" + ("; QUICK mode: tiny shapes and few steps, the "
                                                               "figures are not representative" if args.quick else ""),
           "command": bench.command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": {**machine_facts(), "load_average_start": load_average()}, "versions": versions()}
    failed = False
    try:
        try:
            bench.setup(args.sections)
        except ChildError as exc:
            doc["setup_error"] = str(exc)
            failed = True
        else:
            for name in args.sections:
                try:
                    doc[name] = getattr(bench, f"section_{name}")()
                except (ChildError, KeyError, ValueError) as exc:
                    doc[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    failed = True
                    log(f"{name} failed: {exc}")
        doc["code_path"] = code_path(doc)
        doc["seconds"] = round(time.time() - started, 1)
        doc["machine"]["load_average_end"] = load_average()
    finally:
        if args.keep_work:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return doc, failed


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        emit(CHILDREN[args.child](json.loads(args.child_args)))
        return 0
    if args.judge is not None:
        doc, failed = args.judged_doc, False
    else:
        doc, failed = measure(args)
    doc["goals"] = goals(doc)
    doc["verdict"] = verdict(doc["goals"], doc.get("mode", "full"))
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(goals_text(doc["goals"], doc["verdict"]), file=sys.stderr, flush=True)
    return 1 if failed or (args.check and doc["verdict"]["failed"]) else 0


if __name__ == "__main__":
    sys.exit(main())
