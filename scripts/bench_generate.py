#!/usr/bin/env python
"""Benchmark generation: eager ``model.generate`` vs poetry_gpt's compiled sampler; prints JSON.

    python scripts/bench_generate.py                 # small shape, 64 new tokens, top-k 10, batch 1 and 8
    python scripts/bench_generate.py --batches 1 --repeats 10
"""
import argparse
import json

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from poetry_gpt.generate import benchmark


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
