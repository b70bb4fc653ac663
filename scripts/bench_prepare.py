#!/usr/bin/env python
"""Throughput of ``prepare`` (raw.txt -> vocabulary + TFRecords + manifest), in characters per second.

Measures the library call ``poetry_gpt.data.prepare.prepare`` on a corpus repeated 1×, 4× and 16×
(the copies are concatenated into one temporary raw.txt). Python, numpy and TensorFlow start-up
are excluded: TensorFlow is imported and one warm-up ``prepare`` runs before any timing.

Duplicates: the repeated copies have the same bodies, which ``prepare`` would skip as
duplicates by default (so the work per copy would shrink). The repeated runs therefore use
``DataConfig(keep_duplicates=True)``, so every copy is parsed, encoded, reported on and written
like the first, and all runs (1× included) use it so the figures are comparable. The default
configuration (duplicates skipped) is also timed on 1×, since that is what
``poetry-gpt prepare RAW --out DIR`` does.

Characters are those of the raw file as decoded text (newlines included): tang-full has
3,929,633. Each figure is the best of ``--repeats`` rounds; within a round the sizes take
turns, so a busy moment of a shared machine does not favour one size. Wall time is the goal's
measure; CPU time of the process (``time.process_time``) is reported too, since on a machine
shared with other jobs (see the load averages) a long run is preempted more than a short one,
and CPU time shows whether the work itself grows linearly.

Usage::

    python scripts/bench_prepare.py                       # tang-full, 1× 4× 16×
    python scripts/bench_prepare.py --copies 1,4 --repeats 2 --raw ../shared/corpus/tang-4k.raw.txt

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RAW = ROOT.parent / "shared" / "corpus" / "tang-full.raw.txt"
GOAL = 4_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="the corpus to repeat")
    parser.add_argument("--copies", default="1,4,16", help="comma-separated repeat counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the best is reported")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the repeated corpora and outputs")
    args = parser.parse_args()
    copies = [int(c) for c in args.copies.split(",")]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf  # start-up excluded from the timings

    from poetry_gpt.config import DataConfig
    from poetry_gpt.data.prepare import prepare

    text = args.raw.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    work = Path(tempfile.mkdtemp(prefix="bench_prepare-", dir=args.tmp))
    try:
        prepare([args.raw], work / "warmup", DataConfig())  # warm-up: lazy imports, caches, page cache
        shutil.rmtree(work / "warmup")

        keep = DataConfig(keep_duplicates=True)
        raws = {}
        for n in copies:
            raws[n] = work / f"x{n}.raw.txt"
            raws[n].write_text(text * n, encoding="utf-8")
        # the sizes take turns within each round, so a busy moment of a shared machine hits them alike
        best = {n: float("inf") for n in [*copies, "default"]}
        best_cpu = dict(best)
        manifests = {}
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            for n in [*copies, "default"]:
                raw, config = (args.raw, DataConfig()) if n == "default" else (raws[n], keep)
                out = work / "out"
                start, cpu = time.perf_counter(), time.process_time()
                result = prepare([raw], out, config)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
                shutil.rmtree(out)
                manifests[n] = result.manifest
                best[n], best_cpu[n] = min(best[n], seconds), min(best_cpu[n], cpu_seconds)
        load_after = os.getloadavg()
        runs = []
        for n in copies:
            chars, splits = len(text) * n, manifests[n]["splits"]
            runs.append({"copies": n, "characters": chars, "bytes": raws[n].stat().st_size,
                         "poems": splits["train"]["poems"] + splits["valid"]["poems"],
                         "seconds": round(best[n], 4), "chars_per_s": round(chars / best[n]),
                         "cpu_seconds": round(best_cpu[n], 4), "chars_per_cpu_s": round(chars / best_cpu[n])})
        default_seconds, default_manifest = best["default"], manifests["default"]
        default_cpu = best_cpu["default"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = runs[0]["chars_per_s"]
    report = {
        "benchmark": "prepare: raw.txt -> vocabulary + TFRecords + manifest (library call, start-up excluded)",
        "corpus": str(args.raw),
        "config": "keep_duplicates=True for every repeated run (each copy does the same work)",
        "runs": runs,
        "linearity": {f"{r['copies']}x_vs_{runs[0]['copies']}x_throughput": round(r["chars_per_s"] / base, 3)
                      for r in runs[1:]},
        "linearity_cpu_time": {f"{r['copies']}x_vs_{runs[0]['copies']}x_throughput":
                               round(r["chars_per_cpu_s"] / runs[0]["chars_per_cpu_s"], 3) for r in runs[1:]},
        "default_config_1x": {"characters": len(text), "seconds": round(default_seconds, 4),
                              "chars_per_s": round(len(text) / default_seconds),
                              "cpu_seconds": round(default_cpu, 4), "chars_per_cpu_s": round(len(text) / default_cpu),
                              "poems": default_manifest["splits"]["train"]["poems"]
                              + default_manifest["splits"]["valid"]["poems"]},
        "goal_chars_per_s": GOAL,
        "meets_goal": all(r["chars_per_s"] >= GOAL for r in runs) and len(text) / default_seconds >= GOAL,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
