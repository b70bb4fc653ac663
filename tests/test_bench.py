"""``scripts/bench.py``: the quick run prints one JSON document of the expected shape.

Only the document's shape is checked (keys present, figures positive, ratios there) — never
its speed, which depends on the machine and its load.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"
TORCH_SKIP = "torch not installed: pip install torch==2.13.0"


def load_bench_module():
    spec = importlib.util.spec_from_file_location("poetry_gpt_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(node: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(node.get(key), (int, float)) and not isinstance(node[key], bool), (key, node.get(key))
        assert node[key] > 0, (key, node[key])


def check_context(section: dict) -> None:
    machine = section["machine"]
    assert machine["cores"] >= 1
    for key in ("load_average_before", "load_average_after"):
        assert len(machine[key]) == 3 and all(x >= 0 for x in machine[key])
    assert section["versions"]["tensorflow"] and section["versions"]["transformers"]
    assert "scripts/bench.py" in " ".join(section["command"])


@pytest.fixture(scope="module")
def quick_doc(shared_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # < 3 min on a quiet 2-core machine; the generous timeout only keeps a busy machine from failing the test
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=1200, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document on stdout
    assert json.loads(out.read_text(encoding="utf-8")) == doc
    return doc


@pytest.mark.slow
def test_quick_document_has_every_section(quick_doc):
    assert quick_doc["mode"] == "quick"
    for section in ("train", "generate", "prepare", "memory"):
        assert section in quick_doc and "error" not in quick_doc[section], quick_doc.get(section)
        check_context(quick_doc[section])
    assert quick_doc["machine"]["cores"] >= 1 and quick_doc["versions"]["python"]


@pytest.mark.slow
def test_quick_train_section(quick_doc):
    train = quick_doc["train"]
    positive(train["matmul_peak"], "fp32_gflops", "bf16_gflops")
    systems = train["systems"]
    measured = ["poetry_gpt", "seed_style"]
    if "skipped" in systems["torch_bf16"]:
        assert systems["torch_bf16"]["skipped"] == TORCH_SKIP
        assert train["ratios"]["poetry_gpt_vs_torch_bf16"] is None
    else:
        measured.append("torch_bf16")
        positive(train["ratios"], "poetry_gpt_vs_torch_bf16")
    for name in measured:
        system = systems[name]
        positive(system, "tokens_per_s", "useful_tokens_per_s", "ms_per_step", "median_ms_per_step", "mfu",
                 "mfu_vs_bf16_peak", "flops_per_token", "params", "peak_rss_mb", "measured_steps")
        assert 0.0 <= system["padding_fraction"] < 1.0
        assert system["useful_tokens_per_s"] <= system["tokens_per_s"]
        assert system["warmup_steps"] >= 1
    assert systems["poetry_gpt"]["padding_fraction"] == 0.0  # packed rows
    assert systems["seed_style"]["padding_fraction"] > 0.0  # one poem per padded row
    assert systems["seed_style"]["precision"] == "fp32"
    assert systems["poetry_gpt"]["precision"] in ("fp32", "bf16")
    positive(train["ratios"], "poetry_gpt_vs_seed_style")


@pytest.mark.slow
def test_quick_generate_section(quick_doc):
    gen = quick_doc["generate"]
    summary = gen["summary"]
    positive(summary, "batch_1_ms_per_poem_compiled", "batch_1_ms_per_poem_eager", "batch_1_speedup_vs_eager",
             "first_call_seconds", "first_call_seconds_worst", "batch_8_poems_per_s_compiled",
             "batch_8_poems_per_s_eager")
    assert isinstance(summary["recompiled_for_other_opening"], bool)
    poems = gen["poem_generator"]
    for form in ("none", "五绝"):
        positive(poems["forms"][form], "first_call_seconds_batch_1", "ms_per_poem_batch_1", "tokens_per_poem_batch_1",
                 "poems_per_s_batch_8")
    assert poems["forms"]["五绝"]["closed_fraction"] == 1.0  # the form decoder always closes the poem
    positive(poems["eager"], "ms_per_poem_batch_1")
    positive(poems, "speedup_per_token_batch_1_vs_eager")


@pytest.mark.slow
def test_quick_prepare_section(quick_doc):
    prep = quick_doc["prepare"]
    assert len(prep["runs"]) >= 2
    for run in prep["runs"]:
        positive(run, "copies", "characters", "seconds", "chars_per_s")
    positive(prep["default_config_1x"], "chars_per_s")
    assert prep["linearity"]


@pytest.mark.slow
def test_quick_memory_section(quick_doc):
    mem = quick_doc["memory"]
    runs = mem["train"]["runs"]
    assert [r["copies"] for r in runs] == sorted(r["copies"] for r in runs) and len(runs) == 2
    for run in runs:
        positive(run, "peak_rss_mb", "train_tokens", "steps")
    assert runs[1]["train_tokens"] > runs[0]["train_tokens"]
    positive(mem["train"], "growth_ratio")
    positive(mem["generate"], "peak_rss_mb", "poems")


@pytest.mark.slow
def test_quick_goals_are_judged(quick_doc):
    goals = quick_doc["goals"]
    expected = {"train_vs_seed_style", "train_vs_torch_bf16", "generate_batch_1_vs_eager", "generate_first_compile",
                "generate_no_recompile_for_new_opening", "prepare_chars_per_s", "prepare_linear",
                "train_peak_rss_mb", "train_peak_rss_flat", "generate_peak_rss_mb"}
    assert expected <= set(goals)
    for name in expected:
        goal = goals[name]
        assert goal["target"]
        if name == "train_vs_torch_bf16" and goal["value"] is None:
            assert goal["pass"] is None  # torch not installed
        else:
            assert isinstance(goal["pass"], bool), (name, goal)
    assert isinstance(goals["all_judged_pass"], bool)


# --- fast checks of the parent's pieces (no subprocess) ---------------------------------------

def test_goals_of_an_empty_document_are_unjudged():
    bench = load_bench_module()
    goals = bench.goals({})
    assert all(g["pass"] is None for k, g in goals.items() if k != "all_judged_pass")
    assert goals["all_judged_pass"] is None


def test_generation_summary_reads_both_benchmark_layouts():
    bench = load_bench_module()
    nested = {"new_tokens": 64, "batches": {
        "1": {"compiled": {"seconds": 0.2, "first_call_seconds": 5.0}, "eager": {"seconds": 10.0},
              "hf_xla": {"seconds": 0.4, "first_call_seconds": 9.0}, "recompiled_for_other_opening": False},
        "8": {"compiled": {"seconds": 0.4, "first_call_seconds": 4.0}, "eager": {"seconds": 16.0},
              "hf_xla": {"seconds": 0.8, "first_call_seconds": 8.0}}}}
    flat = {"new_tokens": 64, "batches": {
        "1": {"compiled_seconds": 0.2, "first_call_seconds": 5.0, "eager_seconds": 10.0, "hf_xla_seconds": 0.4,
              "hf_xla_first_call_seconds": 9.0, "recompiled_for_other_opening": False},
        "8": {"compiled_seconds": 0.4, "first_call_seconds": 4.0, "eager_seconds": 16.0, "hf_xla_seconds": 0.8,
              "hf_xla_first_call_seconds": 8.0}}}
    for report in (nested, flat):
        s = bench.summarise_generation(report)
        assert s["batch_1_speedup_vs_eager"] == 50.0 and s["batch_1_ms_per_poem_compiled"] == 200.0
        assert s["batch_8_poems_per_s_compiled"] == 20.0 and s["first_call_seconds"] == 5.0
        assert s["recompiled_for_other_opening"] is False


def test_unknown_section_is_refused():
    proc = subprocess.run([sys.executable, str(BENCH), "--only", "train,speed"], capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))
    assert proc.returncode == 2 and "speed" in proc.stderr and "train, generate, prepare, memory" in proc.stderr
