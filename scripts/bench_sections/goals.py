"""Judging a bench document: each goal's figure, target and status (pass, fail, unjudged with the reason)."""
from __future__ import annotations

import json

from .machine import cpu_flags, usable_cores

# the goals of issue 6
GOAL_VS_SEED = 4.4  # the nanoGPT figure: 4.4x the seed-style pipeline
GOAL_VS_TORCH = 1.0
GOAL_VS_NANOGPT = 1.0  # issue 18: useful tokens/s at least the nanoGPT-style PyTorch run's, same run
GOAL_QUALITY_VS_NANOGPT = 0.0  # issue 18: validation loss after the same steps at most the baseline's
GOAL_GEN_SPEEDUP = 40.0
GOAL_FIRST_COMPILE_S = 10.0
GOAL_PREPARE_CHARS_PER_S = 4_000_000
GOAL_PREPARE_LINEAR = 0.8  # 16× throughput at least this share of 1× throughput
GOAL_TRAIN_RSS_MB = 2000.0  # 2 GB (decimal megabytes throughout)
GOAL_TRAIN_RSS_FLAT = 1.10  # large-corpus peak at most 10% above the small-corpus peak
GOAL_GEN_RSS_MB = 1000.0
GOAL_EXPORT_VS_GENERATOR = 1.10  # loaded SavedModel's ms per poem at most 10% above PoemGenerator's
GOAL_SERVE_SPEEDUP = 5.0  # poems/s at 32 clients, batched, over one-at-a-time serving
GOAL_SERVE_P95 = 2.0  # p95 latency at 32 clients at most this many times a single request's
GOAL_SERVE_RSS_MB = 1200.0
# issue 13: --strict poems' NLL per character at most 1.15x free poems' (worst form), a token within 10% of the cost
# of an unconstrained one (worst form)
GOAL_STRICT_FLUENCY = 1.15
GOAL_STRICT_COST = 1.10
# issue 15: LoRA's and Adapter's validation CE at most 5% above full fine-tuning's with at most 2% of the parameters
# trained (the new characters' rows, which every method trains, apart); every method below scratch; a tuned
# checkpoint at most 5% of a full one
GOAL_PEFT_VS_FULL = 1.05
GOAL_PEFT_TRAINABLE_PERCENT = 2.0
GOAL_PEFT_VS_SCRATCH = 1.0
GOAL_PEFT_CHECKPOINT_SHARE = 0.05
#: the peft goals and the summary figure each is judged on
PEFT_FIGURES = {"peft_lora_adapter_vs_full": "lora_adapter_vs_full", "peft_beats_scratch": "val_ce_vs_scratch_worst",
                "peft_checkpoint_share": "checkpoint_share_of_full_worst"}


def _get(doc: dict, *keys):
    """``doc[k1][k2]...``, or None where a key is missing."""
    node = doc
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


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
        "train_vs_nanogpt_bf16": ("train", _get(doc, "train", "ratios", "poetry_gpt_vs_nanogpt_bf16")),
        "quality_vs_nanogpt": ("quality", _get(doc, "quality", "validation_loss_minus_nanogpt")),
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
        # fluency only on a trained run (``fluency_unjudged`` says why not)
        "strict_fluency_ratio": ("metre", None if _get(doc, "metre", "summary", "fluency_unjudged")
                                 else _get(doc, "metre", "summary", "fluency_ratio_worst")),
        "strict_cost_per_token": ("metre", _get(doc, "metre", "summary", "cost_ratio_worst")),
        # judged only at full size (``unjudged`` says why not)
        **{name: ("peft", None if _get(doc, "peft", "summary", "unjudged") else _get(doc, "peft", "summary", key))
           for name, key in PEFT_FIGURES.items()},
    }


def _peft_vs_full(v: dict) -> bool:
    """LoRA and Adapter: validation CE within ``GOAL_PEFT_VS_FULL`` of full's, trainable share within the goal."""
    return (v["val_ce_ratio_worst"] <= GOAL_PEFT_VS_FULL
            and v["trainable_percent_worst"] <= GOAL_PEFT_TRAINABLE_PERCENT)


GOAL_TARGETS = {
    "train_vs_seed_style": (f">= {GOAL_VS_SEED}x", lambda v: v >= GOAL_VS_SEED),
    "train_vs_torch_bf16": (f">= {GOAL_VS_TORCH}x", lambda v: v >= GOAL_VS_TORCH),
    "train_vs_nanogpt_bf16": (f">= {GOAL_VS_NANOGPT}x", lambda v: v >= GOAL_VS_NANOGPT),
    "quality_vs_nanogpt": (f"validation loss minus the nanoGPT-style run's <= {GOAL_QUALITY_VS_NANOGPT} nats/char",
                           lambda v: v <= GOAL_QUALITY_VS_NANOGPT),
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
    "strict_fluency_ratio": (f"NLL/char of --strict poems <= {GOAL_STRICT_FLUENCY}x free poems' (worst form)",
                             lambda v: v <= GOAL_STRICT_FLUENCY),
    "strict_cost_per_token": (f"--strict ms/token <= {GOAL_STRICT_COST}x unconstrained (batch 1, worst form)",
                              lambda v: v <= GOAL_STRICT_COST),
    "peft_lora_adapter_vs_full": (f"LoRA and Adapter validation CE <= {GOAL_PEFT_VS_FULL}x full fine-tuning's, "
                                  f"<= {GOAL_PEFT_TRAINABLE_PERCENT}% of the parameters trained (new characters' "
                                  "rows apart)", _peft_vs_full),
    "peft_beats_scratch": (f"every method's validation CE < {GOAL_PEFT_VS_SCRATCH}x scratch's (worst method)",
                           lambda v: v < GOAL_PEFT_VS_SCRATCH),
    "peft_checkpoint_share": (f"every tuned checkpoint <= {GOAL_PEFT_CHECKPOINT_SHARE:.0%} of the full one's bytes",
                              lambda v: v <= GOAL_PEFT_CHECKPOINT_SHARE),
}


def goals(doc: dict) -> dict:
    """Every goal, judged on the document: ``status`` pass, fail or unjudged (with ``why``).

    Args:
        doc: the benchmark document (sections as ``main`` writes them).
    """
    torch_skips = {"train_vs_torch_bf16": _get(doc, "train", "systems", "torch_bf16", "skipped"),
                   "train_vs_nanogpt_bf16": _get(doc, "train", "systems", "nanogpt_bf16", "skipped"),
                   "quality_vs_nanogpt": _get(doc, "quality", "systems", "nanogpt_bf16", "skipped")}
    metre_skip = _get(doc, "metre", "skipped")  # e.g. no tone data
    details = {**torch_skips, "strict_cost_per_token": metre_skip,
               "strict_fluency_ratio": _get(doc, "metre", "summary", "fluency_unjudged") or metre_skip,
               **{name: _get(doc, "peft", "summary", "unjudged") for name in PEFT_FIGURES}}
    out = {}
    for name, (section, value) in goal_figures(doc).items():
        target, ok = GOAL_TARGETS[name]
        detail = details.get(name)
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


def code_path(doc: dict) -> dict:
    """Which code path the figures come from: the training precision poetry_gpt chose, the CPU
    features that choice rests on, the sampler's compute type and the threads every system used.

    Args:
        doc: the benchmark document with its sections.
    """
    system = _get(doc, "train", "systems", "poetry_gpt") or {}
    first = _get(doc, "generate", "poem_generator", "first_call_fresh_process", "none") or {}
    flags = set(cpu_flags())
    return {"training_precision": system.get("precision") or _why_unjudged(doc, "train"),
            "training_policy": system.get("policy"), "precision_setting": system.get("precision_setting"),
            "precision_rule": "auto: bf16 when the CPU has amx_bf16 or avx512_bf16 (or a GPU of compute "
                              "capability >= 8), else fp32",
            "cpu_amx_bf16": "amx_bf16" in flags, "cpu_avx512_bf16": "avx512_bf16" in flags,
            "sampler_compute_dtype": first.get("compute_dtype"),
            "training_batch_split": system.get("batch_split"),
            "xla_flags": system.get("xla_flags"),
            "xla_flags_rule": "importing poetry_gpt adds --xla_cpu_experimental_ynn_fusion_type= (no YNNPACK "
                              "fusions: a crash in TensorFlow 2.21's XLA; poetry_gpt/xla_flags.py)",
            "threads": usable_cores(), "threads_rule": "every core the process may run on (CPU affinity): "
                                                       "poetry_gpt as train uses them (the batch in one part "
                                                       "per core, one intra-op thread each: train/cores.py), "
                                                       "the other systems' intra-op pool and "
                                                       "torch.set_num_threads with every core"}
