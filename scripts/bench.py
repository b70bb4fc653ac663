#!/usr/bin/env python
"""poetry_gpt's benchmarks in one run: training, generation, data preparation and memory; prints one JSON document.

    python scripts/bench.py                          # everything, full size (about 15-30 minutes on 2 cores)
    python scripts/bench.py --quick                  # tiny shapes, few steps: checks that it all runs (~3-4 min)
    python scripts/bench.py --only train,memory      # some sections (train, generate, prepare, memory, serve, export,
                                                     # quality, metre, peft: not in a full run unless named here;
                                                     # metre also with --run)
    python scripts/bench.py --only quality --quality-steps 3000   # validation loss after N steps (default 1000)
    python scripts/bench.py --only quality --quality-seeds 1234,1,2   # ... for each seed, judged on the means
    python scripts/bench.py --only metre --run runs/small   # --strict 格律: fluency and cost (--metre-samples 64)
    python scripts/bench.py --only peft --peft-base runs/small   # --tune methods on song-ci (--peft-steps 1000)
    python scripts/bench.py --run runs/small         # generation figures on a trained run instead of a random model
    python scripts/bench.py --out bench.json         # also write the document to a file
    python scripts/bench.py --check                  # exit 1 when a judged goal fails
    python scripts/bench.py --judge bench.json --check   # judge a saved document again, measuring nothing

Sections (each measured in fresh subprocesses, back to back, so that memory and thread pools of one
system do not affect another; a subprocess prints one JSON line that this parent collects):

* ``train`` — useful (non-pad) tokens/s of the ``small`` preset shape (6 layers, width 384, 6 heads,
  context 128, batch 16) on ``--corpus`` (tang-4k): (1) poetry_gpt's own training path —
  ``trainer.build_training`` (the setup ``train`` uses) + ``fit`` on ``trainer.training_data`` (packed rows)
  at the preset's default precision; (2) a seed-style baseline written here — one poem per row padded
  to the context, loss masked with ``tf.boolean_mask``, ``tf_keras`` Adam 5e-5, fp32, ``fit`` of a
  Keras wrapper around transformers' ``TFGPT2LMHeadModel`` (its own forward); (3) transformers'
  PyTorch ``GPT2LMHeadModel`` on packed rows with bf16 autocast and AdamW, when torch is installed;
  (4) the nanoGPT-style PyTorch run written in ``bench_sections/nanogpt.py`` (``scaled_dot_product_attention``,
  fused AdamW, bf16 autocast) on poetry_gpt's own packed rows with the preset's optimizer settings, when torch
  is installed.
  Every system uses every core the process may run on (its CPU affinity): TensorFlow's intra-op pool
  and ``torch.set_num_threads`` alike.
  Steady state: the timed window starts after the warm-up steps (a Keras callback / a loop timer).
  Model-FLOPs utilisation = useful tokens/s × (6·N + 12·L·T·D) / the matmul peak measured in this
  run (2048×2048 ``tf.matmul``, fp32 and bf16). Each system runs ``--rounds`` times, alternating the
  order; the best round is reported (a shared machine only ever slows a run down), every round is listed.
* ``generate`` — ``scripts/bench_generate.py``'s ``benchmark`` (compiled sampler vs eager ``model.generate`` vs
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
* ``quality`` — validation cross-entropy of poetry_gpt and the nanoGPT-style baseline after the same
  ``--quality-steps`` (1000) steps of the preset (decay over them) on the same packed rows of tang-full, scored
  on the same held-out windows in float32 (``bench_sections/quality.py``; goal: ours ≤ the baseline's); with
  torch, also each system's bf16 gradient error against the float32 gradient at poetry_gpt's trained weights.
  ``--quality-seeds 1234,1,2``: both systems once per run seed (its data order, each system's own weight draw);
  the goal is then judged on the two means, each system's spread beside them.
  Minutes of training: run only with ``--only quality`` (or ``--quick``, a few steps of the tiny preset).
* ``metre`` — ``--strict`` 格律 decoding (``bench_sections/metre.py``; issue 13): for 五绝, 七绝, 五律 and 七律, the
  same prompts (30 fixed common Tang titles) and seeds give ``--metre-samples`` (64) poems free in form
  (``form=F``) and strict (leniency standard, and strict), default sampling; the model scores each body
  (】 excluded) in float32, unconstrained: mean NLL per character, the ratio strict/free (goal ≤ 1.15, worst
  form; judged only with ``--run``: random weights write nothing fluent) and the checker's pass shares; ms per
  token at batch 1 and poems/s at batch 8 of unconstrained (the form's token count), form and strict decoding
  (goal: strict ≤ 1.10× unconstrained per token, worst form); programs traced before and after switching form,
  leniency, rhyme and acrostic values. Runs in a full run only with ``--run`` (or ``--only metre``).
* ``peft`` — parameter-efficient fine-tuning (``bench_sections/peft.py``; issue 15): the base ``--peft-base RUN_DIR``
  (e.g. ``small`` on tang-full) tuned on ``--peft-corpus`` (song-ci, ``prepare --vocab BASE/export --extend-vocab``,
  once) with ``train --init-from BASE/export --tune M`` for full, bitfit, adapter, prefix and lora (default sizes),
  and from scratch (same preset, same data): exactly ``--peft-steps`` (1000) steps each (``--epochs 1
  --steps-per-epoch N``), each ``train`` in its own process. Per method: trainable parameters (% of total, also
  without the new characters' rows), tokens/s, peak RSS, newest checkpoint's and export's bytes, the run's final
  validation CE (and eval's float32 one, same split for all), and through ``poetry_gpt.eval`` ``--peft-samples``
  (300) free samples prompted with held-out titles (词牌): share closed with 】, format accuracy. Goals: LoRA and
  Adapter within 5% of full's validation CE with ≤ 2% of the parameters trained; every method below scratch;
  every tuned checkpoint ≤ 5% of full's. An hour or more at full size: only with ``--only peft``; ``--quick``
  trains a tiny base itself, a few steps on corpus slices, and leaves the goals unjudged.
* ``memory`` — peak RSS (``wait4`` of the subprocess: its ``ru_maxrss``) of a short real ``train``
  run on 1× and 16× tang-full DATA_DIRs (it must stay flat: the reader streams), and of generation.

Goals: the document's ``goals`` give each goal's figure, target and status — pass, fail
or unjudged, the last with the reason (section not run or failed, torch not installed) — and
``verdict`` lists them; the same block is printed for a human on stderr at the end. ``--check``
exits 1 when a judged goal fails; an unjudged goal is listed, not failed. ``code_path`` records the
training precision chosen, the CPU's bf16 features (amx_bf16, avx512_bf16) and the threads used.

Absolute numbers drift between machines and with the load of a shared machine (each section records
the load average before and after); compare the ratios, which are measured in the same run.

Layout: this file is the entry point (options, the shared work folder, the order of the sections, the
document); each section's children and summary live in ``scripts/bench_sections/<section>.py``, the goals
in ``bench_sections/goals.py``. A child runs as ``python scripts/bench.py --child KIND``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_sections/ and bench_generate.py, also when
# this file is loaded by path (tests/test_bench.py) rather than run as a script

from bench_sections import export, generate, memory, metre, nanogpt, peft, prepare, quality, serve, train  # noqa: E402
from bench_sections.generate import summarise_generation  # noqa: E402,F401  (tests/test_bench.py)
from bench_sections.goals import code_path, goals, goals_text, verdict  # noqa: E402
from bench_sections.inputs import child_setup  # noqa: E402
from bench_sections.machine import load_average, machine_facts, versions  # noqa: E402
from bench_sections.runner import ROOT, ChildError, emit, log, run_child  # noqa: E402
from bench_sections.nanogpt import child_train_nanogpt  # noqa: E402,F401  (tests/test_bench.py)
from bench_sections.train import child_train_torch  # noqa: E402,F401  (tests/test_bench.py)

SHARED = ROOT.parent / "shared" / "corpus"
DEFAULT_CORPUS = SHARED / "tang-4k.raw.txt"
DEFAULT_FULL_CORPUS = SHARED / "tang-full.raw.txt"
DEFAULT_PEFT_CORPUS = SHARED / "song-ci.raw.txt"
SECTIONS = ("train", "generate", "prepare", "memory", "serve", "export", "quality", "metre", "peft")
# quality, peft: minutes (peft: an hour or more) of training; metre: fluency of random weights means nothing. A full
# run measures them only when --only names them, metre also when --run gives a trained model (--quick runs all, tiny)
NOT_BY_DEFAULT = ("quality", "metre", "peft")
WITH_RUN = ("metre",)
SECTION_RUNS = {"train": train.section, "generate": generate.section, "prepare": prepare.section,
                "memory": memory.section, "serve": serve.section, "export": export.section,
                "quality": quality.section, "metre": metre.section, "peft": peft.section}
CHILDREN = {"peak": train.child_peak, "setup": child_setup, "train_poetry": train.child_train_poetry,
            "train_seed": train.child_train_seed, "train_torch": train.child_train_torch,
            "generate": generate.child_generate, "first_call": generate.child_first_call,
            "train_memory": memory.child_train_memory, "generate_memory": memory.child_generate_memory,
            "export": export.child_export, "rows": nanogpt.child_rows, "train_nanogpt": nanogpt.child_train_nanogpt,
            "quality_poetry": quality.child_quality_poetry, "quality_nanogpt": quality.child_quality_nanogpt,
            "metre": metre.child_metre, "peft_eval": peft.child_peft_eval}

SMALL_SHAPE = {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_ctx": 128, "batch_size": 16}
TINY_SHAPE = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_ctx": 64, "batch_size": 8}


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
        self.quality_steps = args.quality_steps if args.quality_steps is not None else (20 if self.quick else 1000)
        self.quality_seeds = args.quality_seeds
        self.peft_steps = args.peft_steps if args.peft_steps is not None else (3 if self.quick else 1000)
        self.peft_samples = args.peft_samples if args.peft_samples is not None else (8 if self.quick else 300)
        self.setup_info: dict = {}

    # -- shared data ----------------------------------------------------------------------
    def train_data(self) -> Path:
        return self.work / "data-train"

    def export_dir(self) -> Path:
        return self.work / "export"

    def quality_corpus(self) -> Path:
        return self.args.corpus if self.quick else self.args.full_corpus

    def quality_data(self) -> Path:
        return self.train_data() if self.quick else self.work / "data-quality"

    def memory_copies(self) -> list[int]:
        return [1, 4] if self.quick else [1, 16]

    def memory_corpus(self) -> Path:
        return self.args.corpus if self.quick else self.args.full_corpus

    def memory_data(self, copies: int) -> Path:
        return self.work / f"data-memory-x{copies}"

    def setup(self, sections: list[str]) -> None:
        """Prepare, in one subprocess, every DATA_DIR and the export the chosen sections need."""
        jobs, export = [], None
        need_train_data = "train" in sections or (bool({"generate", "memory", "export", "metre"} & set(sections))
                                                   and not self.args.run) or ("quality" in sections and self.quick)
        if need_train_data:
            jobs.append({"raw": str(self.args.corpus), "copies": 1, "out": str(self.train_data()),
                         "keep_duplicates": False, "valid_fraction": 0.02})
        if "quality" in sections and not self.quick:
            jobs.append({"raw": str(self.quality_corpus()), "copies": 1, "out": str(self.quality_data()),
                         "keep_duplicates": False, "valid_fraction": 0.02})
        if "memory" in sections:
            raw = self.memory_corpus()
            lines = sum(1 for ln in raw.read_text(encoding="utf-8-sig").splitlines() if ln.strip())
            for copies in self.memory_copies():
                # every copy kept (duplicates too), about 100 validation poems whatever the size
                jobs.append({"raw": str(raw), "copies": copies, "out": str(self.memory_data(copies)),
                             "keep_duplicates": True, "valid_fraction": min(0.5, 100 / (lines * copies))})
        if {"generate", "memory", "export", "metre"} & set(sections) and not self.args.run:
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


def seed_list(text: str) -> list[int]:
    """``--quality-seeds``: distinct integers ≥ 0, comma-separated.

    Args:
        text: the option's value.
    """
    parts = [part.strip() for part in text.split(",") if part.strip()]
    seeds = [int(part) for part in parts if part.isdigit()]
    if not seeds or len(seeds) != len(parts) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct whole numbers >= 0, e.g. 1234,1,2")
    return seeds


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes and few steps: checks that everything runs")
    p.add_argument("--only", default=None, help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all; "
                                                f"{', '.join(NOT_BY_DEFAULT)} only with --quick, "
                                                f"{', '.join(WITH_RUN)} also with --run)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="the training-speed corpus (tang-4k)")
    p.add_argument("--full-corpus", type=Path, default=DEFAULT_FULL_CORPUS,
                   help="the corpus that prepare and memory repeat (tang-full)")
    p.add_argument("--run", type=Path, default=None, help="a trained RUN_DIR for the PoemGenerator figures (and the metre "
                                                                 "section's fluency)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON document here")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5; quick 2)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 20; quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="runs of each training system (default 2; quick 1)")
    p.add_argument("--quality-steps", type=int, default=None,
                   help="training steps of each system in the quality section (default 1000; quick 20)")
    p.add_argument("--quality-seeds", type=seed_list, default=[], metavar="S1,S2,...",
                   help="run seeds of the quality section: both systems once per seed (weight draw and data order), "
                        "judged on the means (default: the preset's seed, once)")
    p.add_argument("--metre-samples", type=int, default=None,
                   help="poems per form and mode in the metre section's fluency figures (default 64; quick 8)")
    p.add_argument("--peft-base", type=Path, default=None, metavar="RUN_DIR",
                   help="the peft section's base run (e.g. the small preset trained on tang-full); needed unless "
                        "--quick, which trains a tiny one")
    p.add_argument("--peft-corpus", type=Path, default=DEFAULT_PEFT_CORPUS,
                   help="the peft section's target corpus (song-ci), prepared with --extend-vocab")
    p.add_argument("--peft-steps", type=int, default=None,
                   help="training steps of each method in the peft section (default 1000; quick 3)")
    p.add_argument("--peft-samples", type=int, default=None,
                   help="free samples per method in the peft section (default 300; quick 8)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (logs of each process)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a judged goal fails (unjudged goals are listed with the reason, not failed)")
    p.add_argument("--judge", type=Path, default=None, metavar="BENCH_JSON",
                   help="measure nothing: judge the goals of a document written earlier by --out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is None:
        default = [s for s in SECTIONS if args.quick or s not in NOT_BY_DEFAULT or (s in WITH_RUN and args.run)]
        only = default if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in only if s not in SECTIONS]
        if bad or not only:
            p.error(f"--only: unknown section(s) {', '.join(bad) or '(none)'}; choose from {', '.join(SECTIONS)}")
        args.sections = [s for s in SECTIONS if s in only]
        counts = (args.warmup, args.steps, args.quality_steps, args.metre_samples, args.peft_steps, args.peft_samples)
        if any(v is not None and v < 1 for v in counts):
            p.error("--warmup, --steps, --quality-steps, --metre-samples, --peft-steps and --peft-samples must be >= 1")
        if args.judge is not None:
            args.judged_doc = read_document(p, args.judge)
            return args
        for path, option in ((args.corpus, "--corpus"), (args.full_corpus, "--full-corpus")):
            needed = option == "--corpus" or {"prepare", "memory", "quality"} & set(args.sections) and not args.quick
            if needed and not path.is_file():
                p.error(f"{option}: no such file {path}; give the corpus's path with {option} PATH")
        if "peft" in args.sections:
            check_peft_options(p, args)
    return args


def check_peft_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The peft section needs its target corpus, and a base run (with ``run.json`` and ``export/``) unless --quick.

    Args:
        parser: reports a usage error (exit 2).
        args: the parsed options.
    """
    if not args.peft_corpus.is_file():
        parser.error(f"--peft-corpus: no such file {args.peft_corpus}; give the target corpus with --peft-corpus PATH")
    base = args.peft_base
    if base is None and not args.quick:
        parser.error("--peft-base: the peft section needs a base run; give a RUN_DIR trained on the large corpus "
                     "(e.g. --config small on tang-full) with --peft-base RUN_DIR")
    if base is not None and not ((base / "run.json").is_file() and (base / "export" / "config.json").is_file()):
        parser.error(f"--peft-base: {base} is not a trained RUN_DIR (it needs run.json and export/); give the base "
                     "run's folder")


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
                    doc[name] = SECTION_RUNS[name](bench)
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
