"""The ``memory`` section: peak RSS of a short real ``train`` run on a small and a large DATA_DIR, and of generation."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .goals import GOAL_GEN_RSS_MB, GOAL_TRAIN_RSS_MB
from .machine import load_average, section_context
from .runner import run_many


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
    with rhyme), in a process set up as ``poetry-gpt generate`` sets itself up (``USE_TF=1``,
    ``memory.use_sampling_env``)."""
    os.environ.setdefault("USE_TF", "1")  # as poetry_gpt.cli: transformers leaves torch alone
    import poetry_gpt  # noqa: F401
    from poetry_gpt.memory import use_sampling_env

    use_sampling_env()  # as poetry_gpt.cli for generate/chat/serve (before TensorFlow is imported)
    from poetry_gpt.generate.generator import PoemGenerator

    gen = PoemGenerator(a["export"])
    poems = 0
    long_form = "七律" if gen.n_ctx >= 128 else "五律"  # a 七律 needs 65 tokens after 【: more than `tiny` holds
    for options in ({"max_new_tokens": a["max_new_tokens"]}, {"form": "五绝"}, {"form": long_form, "rhyme": True}):
        for n in (1, 8):  # forms write their whole poem (they finish by construction)
            poems += len(gen.generate(title="春晓", num_samples=n, batch_size=n, seed=0, **options))
    return {"poems": poems, "forms": ["五绝", f"{long_form} --rhyme"], "vm_hwm_mb": _vm_hwm_mb(),
            "torch_imported": "torch" in sys.modules, "programs_traced": dict(gen.sampler.traces)}


def section(bench) -> dict:
    load_before = load_average()
    steps = 5 if bench.quick else 30
    export, note = bench.generation_export()
    jobs = [("train_memory", {"data_dir": str(bench.memory_data(c)), "run_dir": str(bench.work / f"run-x{c}"),
                              "preset": bench.preset, "steps": steps}, f"train_memory-x{c}")
            for c in bench.memory_copies()]
    jobs.append(("generate_memory", {"export": export, "max_new_tokens": 32 if bench.quick else 64},
                 "generate_memory"))
    # peak RSS does not depend on CPU contention: --quick runs these side by side to save time
    results = run_many(jobs, bench.work, bench.timeout, parallel=bench.quick)
    runs = []
    for copies, result in zip(bench.memory_copies(), results):
        info = bench.setup_info.get("data", {}).get(str(bench.memory_data(copies)), {})
        runs.append({"copies": copies, "corpus": str(bench.memory_corpus()),
                     "train_poems": info.get("train_poems"), "train_tokens": info.get("train_tokens"), **result})
    gen = results[-1]
    first, last = runs[0], runs[-1]
    return {"what": "peak resident memory (ru_maxrss of the process, decimal MB)",
            "train": {"runs": runs, "what": f"a real `train` run of {steps} steps (preset {bench.preset}, "
                                            "validation, samples, checkpoint and export included)",
                      "growth_mb": round(last["peak_rss_mb"] - first["peak_rss_mb"], 1),
                      "growth_ratio": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3)},
            "generate": {"export": note, **gen},
            "limits_mb": {"train": GOAL_TRAIN_RSS_MB, "generate": GOAL_GEN_RSS_MB},
            **section_context(load_before, bench.command)}
