#!/usr/bin/env python
"""Benchmark generation: eager ``model.generate`` vs poetry_gpt's compiled sampler; prints JSON.

``benchmark`` is also the generation section of ``scripts/bench.py``; it is benchmark code, so it lives
here and not in the library.

    python scripts/bench_generate.py                 # small shape, 64 new tokens, top-k 10, batch 1 and 8
    python scripts/bench_generate.py --batches 1 --repeats 10
"""
import argparse
import json
import time
from typing import Sequence

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def benchmark(n_layer: int = 6, n_embd: int = 384, n_head: int = 6, n_ctx: int = 128, vocab_size: int = 5300,
              new_tokens: int = 64, top_k: int = 10, batches: Sequence[int] = (1, 8), repeats: int = 5,
              eager_repeats: int = 2, seed: int = 0) -> dict:
    """Time poetry_gpt's compiled sampler against transformers' eager ``model.generate`` and
    ``tf.function(model.generate, jit_compile=True)`` on a random model of a given shape.

    All three make exactly ``new_tokens`` tokens per row (no stop token) with top-k sampling
    after a 16-token prompt. After one warm-up (compiling) call each, the three are timed in
    turns, round after round, so that a busy machine slows them alike; each reports the best
    and the median wall time and the best CPU time (all threads) of its calls.

    Args:
        n_layer: layers of the random model.
        n_embd: its width.
        n_head: its heads.
        n_ctx: its context.
        vocab_size: its vocabulary size.
        new_tokens: tokens generated per row.
        top_k: sampling top-k.
        batches: batch sizes to time.
        repeats: timed rounds (compiled and XLA ``generate`` run in each).
        eager_repeats: the first rounds that also run the (slow) eager ``generate``.
        seed: weight and sampling seed.

    Returns:
        A JSON-able dict: per batch size and path, seconds per call and tokens/s, the compiled
        path's speed-up over the others, first-call (compile) times, and whether a new opening of
        another length in the same bucket compiled anything.
    """
    import numpy as np
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from poetry_gpt.data.vocab import PAD_ID, SEP_ID, UNK_ID
    from poetry_gpt.generate.sampler import Sampler
    from poetry_gpt.model.cached_gpt2 import CachedGPT2

    hf_logging.set_verbosity_error()  # the XLA generate warns about right-padding while tracing
    tf.keras.utils.set_random_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_ctx, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=SEP_ID, eos_token_id=SEP_ID, pad_token_id=PAD_ID)
    model = TFGPT2LMHeadModel(config)
    model(tf.zeros([1, 2], tf.int32))
    prompt = [SEP_ID] + list(range(10, 25))
    report = {"shape": dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_ctx=n_ctx, vocab_size=vocab_size),
              "new_tokens": new_tokens, "top_k": top_k, "prompt_tokens": len(prompt), "batches": {}}
    hf_xla = tf.function(model.generate, jit_compile=True)
    for B in batches:
        sampler = Sampler(CachedGPT2(model), stop_id=None, banned_ids=(PAD_ID, UNK_ID, SEP_ID))
        ids = tf.constant([prompt] * B)
        hf_kwargs = dict(attention_mask=tf.ones_like(ids), do_sample=True, top_k=top_k, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=PAD_ID)
        paths = {
            "compiled": lambda r: sampler.run([prompt] * B, [seed + r * B + b for b in range(B)],
                                              max_new_tokens=new_tokens, top_k=top_k),
            "hf_xla": lambda r: hf_xla(ids, seed=tf.constant([seed, r]), **hf_kwargs).numpy(),
            "eager": lambda r: model.generate(ids, seed=[seed, r], **hf_kwargs).numpy(),
        }
        first, wall, cpu = {}, {k: [] for k in paths}, {k: [] for k in paths}
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn(-1)
            first[name] = time.perf_counter() - t0
        traces = dict(sampler.traces)
        sampler.run([prompt[:9]] * B, list(range(B)), max_new_tokens=new_tokens, top_k=top_k)  # another opening
        recompiled = sampler.traces != traces
        for r in range(repeats):
            for name, fn in paths.items():
                if name == "eager" and r >= eager_repeats:
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                fn(r)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        row = {}
        for name in paths:
            best = min(wall[name])
            row[name] = {"seconds": round(best, 4), "median_seconds": round(float(np.median(wall[name])), 4),
                         "cpu_seconds": round(min(cpu[name]), 4), "tokens_per_s": round(B * new_tokens / best, 1),
                         "first_call_seconds": round(first[name], 2)}
        fast = row["compiled"]["seconds"]
        row["speedup_vs_eager"] = round(row["eager"]["seconds"] / fast, 1)
        row["speedup_vs_hf_xla"] = round(row["hf_xla"]["seconds"] / fast, 2)
        row["recompiled_for_other_opening"] = recompiled
        report["batches"][str(B)] = row
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--vocab", type=int, default=5300)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eager-repeats", type=int, default=2)
    a = p.parse_args()
    print(json.dumps(benchmark(a.layers, a.width, a.heads, a.ctx, a.vocab, a.new_tokens, a.top_k, a.batches,
                               a.repeats, a.eager_repeats), indent=2))


if __name__ == "__main__":
    main()
