"""The ``peft`` section: parameter-efficient fine-tuning of one base on a new corpus, method against method (issue 15).

Base: ``--peft-base RUN_DIR`` (e.g. the ``small`` preset trained on tang-full; with ``--quick`` and no base, a
``tiny`` base the section trains itself for a few steps on a slice of ``--corpus``). Target: ``--peft-corpus``
(song-ci), prepared once with ``prepare --vocab BASE/export --extend-vocab`` (the characters the base lacks are
appended; every run below trains on this one DATA_DIR, so all are scored on the same validation split).

Six runs of ``poetry-gpt train`` in turn, each in its own process (its peak RSS from ``wait4``), each exactly
``--peft-steps`` N steps (``--epochs 1 --steps-per-epoch N``: the preset's batch, warm-up and decay over N; no
interval checkpoints, no epoch-end samples): ``--init-from BASE/export --tune M`` for M in full, bitfit, adapter,
prefix, lora (default sizes and each method's default learning rate: the preset's times
``config.TUNE_LR_SCALES``), and ``scratch``: a new model of the same preset on the same data. Per method:

* trainable and total parameters, as the run prints them (``trainable P / total T``; scratch: every parameter of
  its model), also without the new characters' embedding rows, which every method trains (``new_row_parameters``);
* tokens/s: the run's epoch record (``trainer_state.json``: the epoch's tokens over its wall time, the first
  step's compile and the validation pass included, alike for every method); the process's wall and CPU seconds;
* peak RSS of the ``train`` process; bytes of the newest checkpoint's files and of ``export/``;
* validation cross-entropy: the run's final ``val_loss`` (training's validation, at the training precision), and
  ``poetry-gpt eval``'s float32 one on the same split;
* from ``poetry_gpt.eval.evaluate.evaluate`` (one process for all six): ``--peft-samples`` free samples prompted
  with the titles (词牌) of held-out poems: the share closed with 】 and the format accuracy (the share of the
  samples titled with a recorded 词牌 that follow its clause pattern), and the held-out poems' own format accuracy.

Goals (judged only on a full-size run: under ``--quick`` tiny shapes and a few steps mean nothing): LoRA's and
Adapter's validation CE within 5% of full fine-tuning's, each training ≤ 2% of the parameters (the new rows apart);
every method's validation CE below scratch's; every tuned (non-full) checkpoint ≤ 5% of the full one.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .machine import load_average, section_context
from .runner import log, run_child, run_process

METHODS = ("full", "bitfit", "adapter", "prefix", "lora")
SCRATCH = "scratch"
TUNED = ("bitfit", "adapter", "prefix", "lora")  # the methods whose checkpoints hold only the tuned part
#: --quick: a slice of each corpus (tiny shapes: the figures only show that the section runs)
QUICK_BASE_POEMS = 400
QUICK_TARGET_POEMS = 600
QUICK_BASE_STEPS = 3
#: eval's corpus block is not used here: a small sample keeps it cheap
EVAL_CORPUS_POEMS = 200
QUICK_UNJUDGED = "tiny shapes and a few steps (--quick): the figures mean nothing"
CLI = "from poetry_gpt.cli import main; main()"
PARAMS_LINE = re.compile(r"trainable ([\d,]+) / total ([\d,]+) parameters")


def cli(*args: str) -> list[str]:
    """The command line of ``poetry-gpt ARGS`` run by this interpreter (the bench's checkout first on the path)."""
    return [sys.executable, "-c", CLI, *args]


def head_lines(src: Path, dst: Path, n: int) -> Path:
    """Write the first ``n`` non-empty lines of ``src`` to ``dst`` (a quick run's corpus slice).

    Args:
        src: a raw.txt.
        dst: the slice to write.
        n: how many lines.
    """
    lines = []
    with open(src, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\n"))
                if len(lines) == n:
                    break
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def quick_base(bench) -> Path:
    """A ``tiny`` base run trained ``QUICK_BASE_STEPS`` steps on a slice of ``--corpus`` (``pipeline``)."""
    raw = head_lines(bench.args.corpus, bench.work / "peft-base.raw.txt", QUICK_BASE_POEMS)
    run = bench.work / "peft-base"
    log("peft-base (a tiny base run) ...")
    run_process(cli("pipeline", str(raw), "--run", str(run), "--config", "tiny", "--epochs", "1",
                    "--steps-per-epoch", str(QUICK_BASE_STEPS), "--samples", "0", "--samples-per-epoch", "0",
                    "--quiet"), bench.work, "peft-base", bench.timeout)
    return run


def base_preset(base: Path) -> str:
    """The preset the base run was trained with (its ``run.json``): every run here uses it.

    Args:
        base: the base RUN_DIR.
    """
    return json.loads((base / "run.json").read_text(encoding="utf-8"))["config"]["preset"]


def prepare_target(bench, export: Path) -> tuple[Path, dict]:
    """``prepare --peft-corpus --vocab BASE/export --extend-vocab`` (a slice under --quick); the DATA_DIR and its
    facts (poems per split, vocabulary sizes).

    Args:
        bench: the run (options, work folder).
        export: the base's export.
    """
    from poetry_gpt.data.manifest import load_manifest

    corpus = bench.args.peft_corpus
    if bench.quick:
        corpus = head_lines(corpus, bench.work / "peft-target.raw.txt", QUICK_TARGET_POEMS)
    data = bench.work / "peft-data"
    log("peft-prepare ...")
    run_process(cli("prepare", str(corpus), "--out", str(data), "--vocab", str(export), "--extend-vocab"),
                bench.work, "peft-prepare", bench.timeout)
    manifest = load_manifest(data)
    return data, {"corpus": str(bench.args.peft_corpus) + (f" (first {QUICK_TARGET_POEMS} poems)" if bench.quick
                                                           else ""),
                  "train_poems": manifest.poems("train"), "valid_poems": manifest.poems("valid"),
                  "vocab_size": manifest.vocab_size, "base_vocab_size": manifest.base_vocab_size}


def train_command(method: str, data: Path, run: Path, export: Path, preset: str, steps: int) -> list[str]:
    """``poetry-gpt train`` of one method: exactly ``steps`` steps in one epoch, the preset's batch and schedule.

    Args:
        method: one of ``METHODS`` or ``SCRATCH``.
        data: the target DATA_DIR.
        run: the RUN_DIR to create.
        export: the base's export (``--init-from``).
        preset: the base's preset.
        steps: steps to train.
    """
    args = ["train", "--data", str(data), "--run", str(run), "--config", preset, "--epochs", "1",
            "--steps-per-epoch", str(steps), "--checkpoint-every", "0", "--samples-per-epoch", "0", "--quiet"]
    if method != SCRATCH:
        args += ["--init-from", str(export), "--tune", method]
    return cli(*args)


def files_bytes(paths) -> int:
    """Total size of the files among ``paths`` (folders walked)."""
    total = 0
    for p in paths:
        if p.is_dir():
            total += files_bytes(p.iterdir())
        elif p.is_file():
            total += p.stat().st_size
    return total


def run_figures(run: Path, stdout: str, new_rows: int, n_embd: int) -> dict:
    """What a finished run records: steps, val loss, tokens/s, parameters, checkpoint and export bytes.

    Args:
        run: the RUN_DIR.
        stdout: what ``train`` printed (the ``trainable P / total T parameters`` line of a fine-tuning).
        new_rows: the new characters' rows (vocabulary minus the base's).
        n_embd: the model width.
    """
    state = json.loads((run / "trainer_state.json").read_text(encoding="utf-8"))
    last = state["history"][-1]
    ckpt = state["latest_checkpoint"]
    found = PARAMS_LINE.search(stdout)
    out = {"global_step": state["global_step"], "validation_loss": last["val_loss"], "final_train_loss": last["loss"],
           "tokens_per_second": last["tokens_per_second"], "epoch_seconds": last["seconds"],
           "precision": json.loads((run / "run.json").read_text(encoding="utf-8")).get("precision"),
           "checkpoint": ckpt, "checkpoint_bytes": files_bytes((run / "checkpoints").glob(f"{ckpt}.*")),
           "export_bytes": files_bytes([run / "export"]), "new_row_parameters": new_rows * n_embd}
    if found:
        out["trainable_parameters"], out["total_parameters"] = (int(g.replace(",", "")) for g in found.groups())
    return out


def child_peft_eval(a: dict) -> dict:
    """``poetry_gpt.eval.evaluate.evaluate`` of each run: float32 validation loss, the samples' closed share and
    format accuracy, the held-out poems' format accuracy, the model's parameters, an example."""
    import poetry_gpt  # noqa: F401
    from poetry_gpt.eval.evaluate import evaluate
    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.model.gpt2 import count_parameters

    out = {}
    for name, run in a["runs"].items():
        gen = PoemGenerator(run)
        report = evaluate(run, samples=a["samples"], corpus_poems=EVAL_CORPUS_POEMS, examples=1, generator=gen)
        samples, held = report["samples"], report["held_out"]
        fmt = samples["metre"].get("format_accuracy") or {}
        out[name] = {"eval_validation_loss": report["validation"]["loss"],
                     "validation_tokens": report["validation"]["tokens"],
                     "model_parameters": count_parameters(gen.model), "samples": a["samples"],
                     "closed_share": samples["closure_rate"], "format_accuracy": fmt.get("share"),
                     "format_judged_poems": fmt.get("poems"),
                     "held_out_format_accuracy": (held["metre"].get("format_accuracy") or {}).get("share"),
                     "sample_tokens_per_second": samples["tokens_per_second"],
                     "example": report["examples"][0]["text"] if report["examples"] else None}
    return out


def complete(figures: dict) -> None:
    """Fill in scratch's parameters (every one trains) and the trainable shares of each method, in place.

    Args:
        figures: per method, ``run_figures`` merged with ``child_peft_eval``'s figures.

    Raises:
        ValueError: a fine-tuning run did not print its parameter counts.
    """
    for name, f in figures.items():
        if name == SCRATCH:  # a new model, all of it trained
            f["trainable_parameters"] = f["total_parameters"] = f["model_parameters"]
        elif "trainable_parameters" not in f:
            raise ValueError(f"peft-{name}: train printed no 'trainable P / total T parameters' line")
        own = f["trainable_parameters"] - f["new_row_parameters"]
        f["trainable_percent"] = round(100 * f["trainable_parameters"] / f["total_parameters"], 3)
        f["trainable_percent_without_new_rows"] = round(100 * own / f["total_parameters"], 3)


def _ratio(a, b):
    """``a / b`` to 4 decimals; None when either is missing (or b is 0)."""
    return round(a / b, 4) if a is not None and b else None


def summarise(figures: dict, quick: bool) -> dict:
    """The figures the goals read, and per method its ratios to full fine-tuning and to scratch.

    Args:
        figures: per method (``METHODS`` and ``SCRATCH``), the completed figures.
        quick: a --quick run (the goals are then unjudged).
    """
    full, scratch = figures["full"], figures[SCRATCH]
    per = {m: {"val_ce_vs_full": _ratio(f["validation_loss"], full["validation_loss"]),
               "val_ce_vs_scratch": _ratio(f["validation_loss"], scratch["validation_loss"]),
               "checkpoint_share_of_full": _ratio(f["checkpoint_bytes"], full["checkpoint_bytes"]),
               "trainable_percent_without_new_rows": f["trainable_percent_without_new_rows"]}
           for m, f in figures.items()}
    vs_full = [per[m]["val_ce_vs_full"] for m in ("lora", "adapter")]
    vs_scratch = [per[m]["val_ce_vs_scratch"] for m in METHODS]
    shares = [per[m]["checkpoint_share_of_full"] for m in TUNED]
    lora_adapter = {"val_ce_ratio_worst": max(vs_full),
                    "trainable_percent_worst": max(per[m]["trainable_percent_without_new_rows"]
                                                   for m in ("lora", "adapter"))} if None not in vs_full else None
    return {"per_method": per, "lora_adapter_vs_full": lora_adapter,
            "val_ce_vs_scratch_worst": max(vs_scratch) if None not in vs_scratch else None,
            "checkpoint_share_of_full_worst": max(shares) if None not in shares else None,
            "unjudged": QUICK_UNJUDGED if quick else None}


def section(bench) -> dict:
    load_before = load_average()
    base = bench.args.peft_base or quick_base(bench)
    export, preset, steps = base / "export", base_preset(base), bench.peft_steps
    data, target = prepare_target(bench, export)
    n_embd = json.loads((export / "config.json").read_text(encoding="utf-8"))["n_embd"]
    new_rows = target["vocab_size"] - (target["base_vocab_size"] or target["vocab_size"])
    figures, runs = {}, {}
    for method in (*METHODS, SCRATCH):
        run = bench.work / f"peft-{method}"
        log(f"peft-{method} ...")
        proc = run_process(train_command(method, data, run, export, preset, steps), bench.work, f"peft-{method}",
                           bench.timeout * 4)
        log(f"peft-{method} done in {proc['seconds']:.0f} s")
        figures[method] = {**run_figures(run, proc["stdout"], new_rows, n_embd), "peak_rss_mb": proc["peak_rss_mb"],
                           "process_seconds": round(proc["seconds"], 1), "cpu_seconds": proc["cpu_seconds"]}
        runs[method] = str(run)
    evals = run_child("peft_eval", {"runs": runs, "samples": bench.peft_samples}, bench.work, bench.timeout * 2)
    for method in figures:
        figures[method].update(evals[method])
    complete(figures)
    return {"what": "fine-tuning a base on a new corpus (extended vocabulary) with each --tune method and from "
                    "scratch, the same steps, batch and schedule: trainable parameters, tokens/s, peak RSS, "
                    "checkpoint and export bytes, validation cross-entropy, free samples prompted with held-out "
                    "titles (词牌)",
            "base": str(base) + (" (trained here: tiny preset, a few steps)" if bench.args.peft_base is None else ""),
            "preset": preset, "steps": steps, "target": target, "methods": figures,
            "summary": summarise(figures, bench.quick), "eval_process": {k: evals[k] for k in
                                                                         ("process_seconds", "peak_rss_mb")},
            **section_context(load_before, bench.command)}
