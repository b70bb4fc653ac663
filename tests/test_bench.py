"""``scripts/bench.py``: the quick run prints one JSON document of the expected shape, and its goals can fail.

Only the document's shape is checked (keys present, figures positive, ratios there) — never
its speed, which depends on the machine and its load. The judging of goals is checked on fake
figures (``goals`` directly, and ``--judge`` of a fake document with ``--check``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"
TORCH_SKIP = "torch not installed: pip install torch==2.13.0"
TORCH_GOALS = ("train_vs_torch_bf16", "train_vs_nanogpt_bf16", "quality_vs_nanogpt")
RANDOM_WEIGHTS = "random weights (no --run): their fluency means nothing"
PEFT_GOALS = ("peft_lora_adapter_vs_full", "peft_beats_scratch", "peft_checkpoint_share")
PEFT_QUICK = "tiny shapes and a few steps (--quick): the figures mean nothing"
PEFT_METHODS = ("full", "bitfit", "adapter", "prefix", "lora", "scratch")


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


def run_bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def quick_run(shared_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # < 6 min on a quiet 2-core machine (the peft section: about 2 min of CPU, 8 processes); the generous timeout
    # only keeps a busy machine from failing the test
    proc = run_bench("--quick", "--check", "--out", str(out), timeout=1200)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-4000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document on stdout
    assert json.loads(out.read_text(encoding="utf-8")) == doc
    return doc, proc


@pytest.fixture(scope="module")
def quick_doc(quick_run):
    return quick_run[0]


@pytest.mark.slow
def test_quick_document_has_every_section(quick_doc):
    assert quick_doc["mode"] == "quick"
    for section in ("train", "generate", "prepare", "memory", "quality", "metre", "peft"):  # --quick runs all
        assert section in quick_doc and "error" not in quick_doc[section], quick_doc.get(section)
        check_context(quick_doc[section])
    assert quick_doc["machine"]["cores"] >= 1 and quick_doc["versions"]["python"]


@pytest.mark.slow
def test_quick_train_section(quick_doc):
    train = quick_doc["train"]
    positive(train["matmul_peak"], "fp32_gflops", "bf16_gflops")
    systems = train["systems"]
    measured = ["poetry_gpt", "seed_style"]
    for name in ("torch_bf16", "nanogpt_bf16"):
        if "skipped" in systems[name]:
            assert systems[name]["skipped"] == TORCH_SKIP
            assert train["ratios"][f"poetry_gpt_vs_{name}"] is None
        else:
            measured.append(name)
            positive(train["ratios"], f"poetry_gpt_vs_{name}")
    if "nanogpt_bf16" in measured:
        nano = systems["nanogpt_bf16"]
        assert nano["padding_fraction"] == 0.0 and nano["adamw"] in ("fused", "foreach")
        assert nano["shape"] == systems["poetry_gpt"]["shape"]  # same shape, batch, vocabulary
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
    cores = quick_doc["machine"]["cores_usable"]
    assert train["matmul_peak"]["threads"] == cores
    for name in measured:
        assert systems[name]["threads"] == cores, name  # every system on every usable core alike


@pytest.mark.slow
def test_quick_quality_section(quick_doc):
    quality = quick_doc["quality"]
    assert quality["steps"] == 20 and quality["preset"] == "tiny"
    ours, theirs = quality["systems"]["poetry_gpt"], quality["systems"]["nanogpt_bf16"]
    positive(ours, "validation_loss", "validation_tokens", "final_train_loss")
    if "skipped" in theirs:
        assert theirs["skipped"] == TORCH_SKIP and quality["validation_loss_minus_nanogpt"] is None
    else:
        positive(theirs, "validation_loss", "final_train_loss")
        assert theirs["validation_tokens"] == ours["validation_tokens"]  # the same held-out windows
        assert quality["validation_loss_minus_nanogpt"] == round(ours["validation_loss"] - theirs["validation_loss"], 4)
    grads = ours["gradient_error_vs_float32"]  # the numerics of both training steps, at poetry_gpt's trained weights
    if "skipped" in theirs:
        assert grads is None
    else:
        assert grads["float32_agreement"] < 1e-4  # the same function: float32 gradients agree to rounding
        for system in ("poetry_gpt_bf16", "nanogpt_bf16"):  # bf16: a few roundings off, every group present
            assert 1e-4 < grads[system]["all"] < 0.1 and len(grads[system]) == 16 + 1, grads[system]


@pytest.mark.slow
def test_quick_peft_section(quick_doc):
    """Fine-tuning a tiny base the section trains itself: every method trained exactly the steps and was scored on
    the same validation split; the tuned methods train and store less than full fine-tuning; goals unjudged."""
    peft = quick_doc["peft"]
    assert peft["preset"] == "tiny" and peft["steps"] == 3 and "trained here" in peft["base"]
    target = peft["target"]
    assert 0 < target["base_vocab_size"] < target["vocab_size"]  # song-ci's characters the base lacks, appended
    new_rows = (target["vocab_size"] - target["base_vocab_size"]) * 64  # tiny: width 64
    methods = peft["methods"]
    assert tuple(methods) == PEFT_METHODS
    assert len({m["validation_tokens"] for m in methods.values()}) == 1  # one validation split for all
    for name, m in methods.items():
        assert m["global_step"] == 3, name
        positive(m, "validation_loss", "eval_validation_loss", "validation_tokens", "tokens_per_second",
                 "peak_rss_mb", "checkpoint_bytes", "export_bytes", "trainable_parameters", "total_parameters")
        assert m["samples"] == 8 and 0.0 <= m["closed_share"] <= 1.0, name
        assert m["format_accuracy"] is None or 0.0 <= m["format_accuracy"] <= 1.0
        assert m["new_row_parameters"] == new_rows and m["trainable_parameters"] >= new_rows, name
    full, scratch = methods["full"], methods["scratch"]
    assert full["trainable_parameters"] == full["total_parameters"] == full["model_parameters"]
    assert scratch["trainable_parameters"] == scratch["total_parameters"] == full["total_parameters"]
    assert full["trainable_percent"] == 100.0
    embedding_update = (target["vocab_size"] + 64) * 12  # bitfit's only added weights: A and B at rank 12
    assert methods["bitfit"]["total_parameters"] == full["total_parameters"] + embedding_update
    for name in ("bitfit", "adapter", "prefix", "lora"):
        m = methods[name]
        assert m["trainable_percent"] < 100.0 and m["trainable_parameters"] < full["trainable_parameters"], name
        assert m["checkpoint_bytes"] < full["checkpoint_bytes"] / 2, name  # only the tuned part is stored
        assert m["total_parameters"] >= full["total_parameters"] + embedding_update, name  # added weights count
    summary = peft["summary"]
    assert summary["unjudged"] == PEFT_QUICK
    lora = summary["per_method"]["lora"]
    assert lora["val_ce_vs_full"] == round(methods["lora"]["validation_loss"] / full["validation_loss"], 4)
    assert lora["checkpoint_share_of_full"] == round(methods["lora"]["checkpoint_bytes"] / full["checkpoint_bytes"], 4)
    assert summary["checkpoint_share_of_full_worst"] == max(summary["per_method"][n]["checkpoint_share_of_full"]
                                                            for n in ("bitfit", "adapter", "prefix", "lora"))
    for name in PEFT_GOALS:
        assert quick_doc["goals"][name]["status"] == "unjudged" and quick_doc["goals"][name]["why"] == PEFT_QUICK


@pytest.mark.slow
def test_quick_code_path(quick_doc):
    path = quick_doc["code_path"]
    assert path["training_precision"] == quick_doc["train"]["systems"]["poetry_gpt"]["precision"]
    flags = quick_doc["machine"]["cpu_flags"]
    assert path["cpu_amx_bf16"] == ("amx_bf16" in flags) and path["cpu_avx512_bf16"] == ("avx512_bf16" in flags)
    assert path["training_precision"] == ("bf16" if path["cpu_amx_bf16"] or path["cpu_avx512_bf16"] else "fp32")
    assert path["sampler_compute_dtype"] == "float32"
    assert path["threads"] == quick_doc["machine"]["cores_usable"]
    assert "--xla_cpu_experimental_ynn_fusion_type" in path["xla_flags"]  # what the child trained with


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
        positive(poems["forms"][form], "ms_per_poem_batch_1", "tokens_per_poem_batch_1", "poems_per_s_batch_8")
        assert "first_call_seconds_batch_1" not in poems["forms"][form]  # not timed after other compiles
    assert poems["forms"]["五绝"]["closed_fraction"] == 1.0  # the form decoder always closes the poem
    positive(poems["eager"], "ms_per_poem_batch_1")
    positive(poems, "speedup_per_token_batch_1_vs_eager")


@pytest.mark.slow
def test_quick_first_calls_are_timed_in_fresh_processes(quick_doc):
    gen = quick_doc["generate"]
    first = gen["poem_generator"]["first_call_fresh_process"]
    assert set(first) == {"none", "五绝"}
    for form, result in first.items():
        positive(result, "first_call_seconds_batch_1", "load_seconds", "tokens")
        # nothing was compiled before the timed call: it traced its programs once each
        assert result["programs_traced"] == {"prefill": 1, "decode": 1}, (form, result)
    worst = max([gen["summary"]["first_call_seconds"]] + [r["first_call_seconds_batch_1"] for r in first.values()])
    assert gen["summary"]["first_call_seconds_worst"] == worst
    assert quick_doc["goals"]["generate_first_compile"]["value"] == worst


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
def test_quick_metre_section(quick_doc):
    """The strict 格律 section on the random tiny export: every strict poem passes the checker at its leniency,
    the poems differ from the free ones of the same prompts and seeds, the NLLs are real, nothing recompiles."""
    metre = quick_doc["metre"]
    assert metre["trained"] is False and metre["samples_per_form"] == 8 and metre["titles"]
    summary = metre["summary"]
    # the tiny context (64) holds 五律 but not 七律 (65 tokens after the prompt): skipped with the reason
    assert summary["forms_measured"] == summary["forms_timed"] == ["五绝", "七绝", "五律"]
    assert "context" in metre["fluency"]["七律"]["skipped"] and "context" in metre["cost"]["七律"]["skipped"]
    for form in summary["forms_measured"]:
        flu = metre["fluency"][form]
        for mode in ("free", "strict", "strict_leniency"):
            figures = flu[mode]
            assert figures["poems"] == 8 and figures["closed_share"] == 1.0 and figures["nll_finite"], (form, mode)
            body_chars = 8 * {"五绝": 24, "七绝": 32, "五律": 48}[form]  # 】 excluded
            assert figures["chars"] == body_chars
            assert 0.0 < figures["nll_per_char"] < 20.0
        assert flu["strict"]["pass_share_standard"] == 1.0 and flu["strict"]["pass_share_own_leniency"] == 1.0
        assert flu["strict_leniency"]["pass_share_strict"] == 1.0 and flu["strict_leniency"]["pass_share_standard"]\
            == 1.0
        assert flu["free"]["pass_share_standard"] < 1.0  # random weights rarely write 格律 unaided
        assert flu["same_as_free_share"] < 1.0
        assert flu["nll_ratio_strict_vs_free"] == round(flu["strict"]["nll_per_char"] / flu["free"]["nll_per_char"], 4)
        cost = metre["cost"][form]
        for mode in ("unconstrained", "form", "strict"):  # every mode draws the whole form: the same tokens
            positive(cost[mode], "ms_per_token_batch_1", "poems_per_s_batch_8")
            assert cost[mode]["tokens_per_poem_batch_1"] == body_chars / 8 + 1
        assert cost["traced_while_timing"] is False
    assert summary["strict_pass_share_min"] == 1.0
    assert summary["fluency_ratio_worst"] == max(metre["fluency"][f]["nll_ratio_strict_vs_free"]
                                                 for f in summary["forms_measured"])
    assert summary["cost_ratio_worst"] == max(metre["cost"][f]["ms_per_token_ratio_strict_vs_unconstrained"]
                                              for f in summary["forms_timed"])
    compiles = metre["compiles"]
    assert compiles["new_compiles"] is False and compiles["traces_after"] == compiles["traces_before"]
    assert len(compiles["switched"]) >= 6 and all("七律" in name for name in compiles["refused"])
    assert summary["fluency_unjudged"] == RANDOM_WEIGHTS
    assert quick_doc["goals"]["strict_cost_per_token"]["value"] == summary["cost_ratio_worst"]


@pytest.mark.slow
def test_quick_goals_are_judged(quick_run):
    doc, proc = quick_run
    goals, verdict = doc["goals"], doc["verdict"]
    assert set(goals) == set(GOALS)
    for name, goal in goals.items():
        assert goal["target"]
        if name in TORCH_GOALS and goal["value"] is None:
            assert goal["status"] == "unjudged" and goal["why"] == TORCH_SKIP  # torch not installed
        elif name == "strict_fluency_ratio":  # random weights: fluency is not judged
            assert goal["status"] == "unjudged" and goal["why"] == RANDOM_WEIGHTS, goal
        elif name in PEFT_GOALS:  # tiny shapes and a few steps: not judged under --quick
            assert goal["status"] == "unjudged" and goal["why"] == PEFT_QUICK, goal
        else:
            assert goal["status"] in ("pass", "fail") and goal["pass"] is (goal["status"] == "pass"), (name, goal)
    assert sorted(verdict["passed"] + verdict["failed"] + list(verdict["unjudged"])) == sorted(GOALS)
    # --check: exit 1 exactly when a judged goal failed; the goals block on stderr names every goal
    assert proc.returncode == (1 if verdict["failed"] else 0), proc.stderr[-3000:]
    block = proc.stderr[proc.stderr.index("goals (quick mode"):]
    for name in GOALS:
        assert name in block
    assert block.splitlines()[-1].startswith(f"verdict: {len(verdict['passed'])} passed")


# --- fast checks of the parent's pieces (no subprocess) ---------------------------------------

GOALS = ("train_vs_seed_style", "train_vs_torch_bf16", "train_vs_nanogpt_bf16", "quality_vs_nanogpt",
         "generate_batch_1_vs_eager", "generate_first_compile",
         "generate_no_recompile_for_new_opening", "prepare_chars_per_s", "prepare_linear", "train_peak_rss_mb",
         "train_peak_rss_flat", "generate_peak_rss_mb", "serve_32_clients_vs_one_at_a_time",
         "serve_32_clients_p95_vs_single", "serve_errors", "serve_peak_rss_mb", "export_saved_model_vs_generator",
         "strict_fluency_ratio", "strict_cost_per_token", *PEFT_GOALS)


def fake_document(**changes) -> dict:
    """A bench document whose figures meet every goal (``changes`` replaces whole sections)."""
    doc = {"benchmark": "poetry_gpt scripts/bench.py", "mode": "full",
           "train": {"ratios": {"poetry_gpt_vs_seed_style": 5.2, "poetry_gpt_vs_torch_bf16": 1.26,
                                "poetry_gpt_vs_nanogpt_bf16": 1.05}, "systems": {}},
           "quality": {"validation_loss_minus_nanogpt": -0.02, "systems": {}},
           "generate": {"summary": {"batch_1_speedup_vs_eager": 45.0, "first_call_seconds_worst": 6.5,
                                    "recompiled_for_other_opening": False}},
           "prepare": {"runs": [{"chars_per_s": 5_000_000}, {"chars_per_s": 4_900_000}],
                       "default_config_1x": {"chars_per_s": 5_100_000}},
           "memory": {"train": {"runs": [{"peak_rss_mb": 900.0}, {"peak_rss_mb": 950.0}], "growth_ratio": 1.056},
                      "generate": {"peak_rss_mb": 600.0}},
           "serve": {"summary": {"speedup_32": 6.1, "p95_32_over_single": 1.8, "errors": 0,
                                 "server_peak_rss_mb": 1100.0}},
           "export": {"worst_ratio_vs_generator": 1.05},
           "metre": {"trained": True, "summary": {"fluency_ratio_worst": 1.08, "fluency_unjudged": None,
                                                  "cost_ratio_worst": 1.04}},
           "peft": {"summary": peft_summary()}}
    doc.update(changes)
    return doc


def peft_summary(vs_full: float = 1.03, trainable: float = 1.4, vs_scratch: float = 0.8, share: float = 0.02,
                 unjudged: str | None = None) -> dict:
    """The peft section's summary figures the goals read (defaults meet every goal)."""
    return {"lora_adapter_vs_full": {"val_ce_ratio_worst": vs_full, "trainable_percent_worst": trainable},
            "val_ce_vs_scratch_worst": vs_scratch, "checkpoint_share_of_full_worst": share, "unjudged": unjudged}


def test_goals_of_an_empty_document_are_unjudged_with_the_reason():
    bench = load_bench_module()
    goals = bench.goals({})
    assert set(goals) == set(GOALS)
    for goal in goals.values():
        assert goal["status"] == "unjudged" and goal["pass"] is None and "not run (--only)" in goal["why"]
    assert goals["prepare_linear"]["why"] == "section prepare not run (--only)"
    verdict = bench.verdict(goals, "full")
    assert verdict["all_judged_pass"] is None and not verdict["failed"] and set(verdict["unjudged"]) == set(GOALS)


def test_goals_pass_and_fail_on_fake_figures():
    bench = load_bench_module()
    goals = bench.goals(fake_document())
    assert all(g["status"] == "pass" for g in goals.values()), goals
    assert goals["prepare_chars_per_s"]["value"] == 4_900_000 and goals["prepare_linear"]["value"] == 0.98
    # just under each target fails it (the seed-style goal is ANCHORS' 4.4x, not 4.0x)
    doc = fake_document(train={"ratios": {"poetry_gpt_vs_seed_style": 4.3, "poetry_gpt_vs_torch_bf16": 0.99,
                                          "poetry_gpt_vs_nanogpt_bf16": 0.99}},
                        quality={"validation_loss_minus_nanogpt": 0.001},
                        generate={"summary": {"batch_1_speedup_vs_eager": 39.9, "first_call_seconds_worst": 10.1,
                                              "recompiled_for_other_opening": True}},
                        memory={"train": {"runs": [{"peak_rss_mb": 900.0}, {"peak_rss_mb": 2001.0}],
                                          "growth_ratio": 2.2}, "generate": {"peak_rss_mb": 1000.1}},
                        serve={"summary": {"speedup_32": 4.99, "p95_32_over_single": 2.0, "errors": 1,
                                           "server_peak_rss_mb": 1200.1}},
                        export={"worst_ratio_vs_generator": 1.11},
                        metre={"summary": {"fluency_ratio_worst": 1.151, "fluency_unjudged": None,
                                           "cost_ratio_worst": 1.101}},
                        peft={"summary": peft_summary(vs_full=1.051, vs_scratch=1.0, share=0.051)})
    goals = bench.goals(doc)
    failed = {n for n, g in goals.items() if g["status"] == "fail"}
    assert failed == set(GOALS) - {"prepare_chars_per_s", "prepare_linear"}
    assert all(goals[n]["pass"] is False for n in failed)
    verdict = bench.verdict(goals, "full")
    assert verdict["all_judged_pass"] is False and set(verdict["failed"]) == failed


def test_unjudged_goals_name_why():
    bench = load_bench_module()
    skipped = {"skipped": TORCH_SKIP}
    doc = fake_document(train={"ratios": {"poetry_gpt_vs_seed_style": 5.0, "poetry_gpt_vs_torch_bf16": None,
                                          "poetry_gpt_vs_nanogpt_bf16": None},
                               "systems": {"torch_bf16": skipped, "nanogpt_bf16": skipped}},
                        quality={"validation_loss_minus_nanogpt": None, "systems": {"nanogpt_bf16": skipped}},
                        generate={"error": "ChildError: generate: exit code 1 after 3 s: boom"})
    del doc["prepare"]
    goals = bench.goals(doc)
    for name in TORCH_GOALS:
        assert goals[name]["status"] == "unjudged" and goals[name]["why"] == TORCH_SKIP, name
    assert goals["generate_first_compile"]["why"] == "section generate failed: ChildError: generate: exit code 1 " \
                                                     "after 3 s: boom"
    assert goals["prepare_chars_per_s"]["why"] == "section prepare not run (--only)"
    assert goals["train_vs_seed_style"]["status"] == "pass"
    unjudged = bench.verdict(goals, "full")["unjudged"]
    assert set(unjudged) == {*TORCH_GOALS, "generate_batch_1_vs_eager", "generate_first_compile",
                             "generate_no_recompile_for_new_opening", "prepare_chars_per_s", "prepare_linear"}
    text = bench.goals_text(goals, bench.verdict(goals, "full"))
    assert f"UNJUDGED  train_vs_torch_bf16" in text and f"({TORCH_SKIP})" in text
    assert f"UNJUDGED  quality_vs_nanogpt" in text
    assert text.splitlines()[-1] == "verdict: 14 passed, 0 failed, 8 unjudged"


def test_strict_fluency_is_unjudged_on_random_weights():
    """Without --run the metre section still runs (its cost is judged), but fluency of random weights is not."""
    bench = load_bench_module()
    doc = fake_document(metre={"trained": False, "summary": {"fluency_ratio_worst": 2.0, "cost_ratio_worst": 1.2,
                                                             "fluency_unjudged": RANDOM_WEIGHTS}})
    goals = bench.goals(doc)
    assert goals["strict_fluency_ratio"] == {"value": None, "target": goals["strict_fluency_ratio"]["target"],
                                             "status": "unjudged", "pass": None, "why": RANDOM_WEIGHTS}
    assert goals["strict_cost_per_token"]["status"] == "fail" and goals["strict_cost_per_token"]["value"] == 1.2
    skipped = bench.goals(fake_document(metre={"skipped": "no 平水韵 tone data", "summary": {}}))
    assert {skipped[n]["why"] for n in ("strict_fluency_ratio", "strict_cost_per_token")} == {"no 平水韵 tone data"}


def test_peft_goals_need_both_val_ce_and_trainable_share_and_are_unjudged_under_quick():
    bench = load_bench_module()
    goals = bench.goals(fake_document(peft={"summary": peft_summary(vs_full=1.05, trainable=2.0, vs_scratch=0.999,
                                                                    share=0.05)}))
    assert [goals[n]["status"] for n in PEFT_GOALS] == ["pass"] * 3  # the targets themselves pass
    assert goals["peft_lora_adapter_vs_full"]["value"] == {"val_ce_ratio_worst": 1.05, "trainable_percent_worst": 2.0}
    # within 5% of full's CE but training more than 2% of the parameters fails
    goals = bench.goals(fake_document(peft={"summary": peft_summary(trainable=2.01)}))
    assert goals["peft_lora_adapter_vs_full"]["status"] == "fail" and goals["peft_beats_scratch"]["status"] == "pass"
    goals = bench.goals(fake_document(peft={"summary": peft_summary(vs_full=3.0, vs_scratch=2.0, share=0.9,
                                                                    unjudged=PEFT_QUICK)}))
    for name in PEFT_GOALS:
        assert goals[name] == {"value": None, "target": goals[name]["target"], "status": "unjudged", "pass": None,
                               "why": PEFT_QUICK}, name
    goals = bench.goals(fake_document(peft={"error": "ChildError: peft-lora: exit code 1 after 9 s: boom"}))
    assert {goals[n]["why"] for n in PEFT_GOALS} == {"section peft failed: ChildError: peft-lora: exit code 1 after 9 "
                                                     "s: boom"}


def fake_method(val: float, trainable: int, total: int, new_rows: int, ckpt: int) -> dict:
    """One method's figures as the peft section collects them (before ``complete``)."""
    return {"validation_loss": val, "trainable_parameters": trainable, "total_parameters": total,
            "new_row_parameters": new_rows, "checkpoint_bytes": ckpt, "model_parameters": total}


def test_peft_summary_ratios():
    """Ratios to full and to scratch per method, and the worst of each the goals read; scratch trains everything."""
    peft = load_bench_module().peft
    figures = {"full": fake_method(2.0, 1000, 1000, 50, 12000), "bitfit": fake_method(2.3, 80, 1000, 50, 600),
               "adapter": fake_method(2.08, 70, 1040, 50, 900), "prefix": fake_method(2.4, 60, 1030, 50, 700),
               "lora": fake_method(2.04, 60, 1010, 50, 480),
               "scratch": {"validation_loss": 2.5, "new_row_parameters": 50, "checkpoint_bytes": 12000,
                           "model_parameters": 1000}}
    peft.complete(figures)
    assert figures["scratch"]["trainable_parameters"] == figures["scratch"]["total_parameters"] == 1000
    assert figures["scratch"]["trainable_percent"] == 100.0
    adapter = figures["adapter"]
    assert adapter["trainable_percent"] == 6.731 and adapter["trainable_percent_without_new_rows"] == 1.923
    summary = peft.summarise(figures, quick=False)
    assert summary["lora_adapter_vs_full"] == {"val_ce_ratio_worst": 1.04, "trainable_percent_worst": 1.923}
    assert summary["val_ce_vs_scratch_worst"] == 0.96  # prefix: 2.4 / 2.5
    assert summary["checkpoint_share_of_full_worst"] == 0.075  # adapter: 900 / 12000 (full itself not counted)
    assert summary["per_method"]["lora"] == {"val_ce_vs_full": 1.02, "val_ce_vs_scratch": 0.816,
                                             "checkpoint_share_of_full": 0.04,
                                             "trainable_percent_without_new_rows": 0.99}
    assert summary["unjudged"] is None and peft.summarise(figures, quick=True)["unjudged"] == PEFT_QUICK
    figures["lora"]["validation_loss"] = None  # a run without validation: no figure, not a crash
    assert peft.summarise(figures, quick=False)["lora_adapter_vs_full"] is None


def test_peft_runs_only_when_named_and_needs_a_base(tmp_path, capsys):
    """Not in a full run; --only peft needs --peft-base (a trained RUN_DIR) unless --quick trains its own."""
    bench = load_bench_module()
    corpus = tmp_path / "raw.txt"
    corpus.write_text("春晓 唐诗：【春眠不觉晓，处处闻啼鸟。】\n", encoding="utf-8")
    base = ["--corpus", str(corpus), "--full-corpus", str(corpus), "--peft-corpus", str(corpus)]
    assert "peft" not in bench.parse_args(base).sections
    assert "peft" in bench.parse_args(base + ["--quick"]).sections
    for extra, message in (([], "--peft-base: the peft section needs a base run"),
                           (["--peft-base", str(tmp_path)], f"--peft-base: {tmp_path} is not a trained RUN_DIR"),
                           (["--peft-base", str(tmp_path), "--peft-corpus", str(tmp_path / "no.txt")],
                            "--peft-corpus: no such file")):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(base + ["--only", "peft"] + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "run.json").write_text("{}", encoding="utf-8")
    args = bench.parse_args(base + ["--only", "peft", "--peft-base", str(tmp_path), "--peft-steps", "50"])
    assert args.sections == ["peft"] and args.peft_steps == 50


def test_metre_runs_by_default_only_with_a_run(tmp_path):
    """The metre section is in a full run only with --run (or when --only names it); --quick runs it."""
    bench = load_bench_module()
    corpus = tmp_path / "raw.txt"
    corpus.write_text("春晓 唐诗：【春眠不觉晓，处处闻啼鸟。】\n", encoding="utf-8")
    base = ["--corpus", str(corpus), "--full-corpus", str(corpus)]
    assert "metre" not in bench.parse_args(base).sections
    assert bench.parse_args(base + ["--run", str(tmp_path)]).sections[-1] == "metre"
    assert bench.parse_args(base + ["--only", "metre"]).sections == ["metre"]
    assert {"metre", "quality"} <= set(bench.parse_args(base + ["--quick"]).sections)


def write_doc(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def test_check_exits_1_when_a_goal_fails(tmp_path):
    doc = fake_document()
    doc["generate"]["summary"]["first_call_seconds_worst"] = 12.0
    saved = write_doc(tmp_path / "bench.json", doc)
    checked = run_bench("--judge", saved, "--check")
    assert checked.returncode == 1, checked.stderr
    assert json.loads(checked.stdout)["verdict"]["failed"] == ["generate_first_compile"]
    assert "FAIL      generate_first_compile" in checked.stderr
    assert checked.stderr.splitlines()[-1] == "verdict: 21 passed, 1 failed (generate_first_compile), 0 unjudged"
    assert run_bench("--judge", saved).returncode == 0  # without --check the figures are only reported


def test_check_passes_with_unjudged_goals_listed(tmp_path):
    skipped = {"skipped": TORCH_SKIP}
    doc = fake_document(train={"ratios": {"poetry_gpt_vs_seed_style": 5.0, "poetry_gpt_vs_torch_bf16": None,
                                          "poetry_gpt_vs_nanogpt_bf16": None},
                               "systems": {"torch_bf16": skipped, "nanogpt_bf16": skipped}},
                        quality={"validation_loss_minus_nanogpt": None, "systems": {"nanogpt_bf16": skipped}})
    checked = run_bench("--judge", write_doc(tmp_path / "bench.json", doc), "--check")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["verdict"]["unjudged"] == {name: TORCH_SKIP for name in TORCH_GOALS}
    for name in TORCH_GOALS:
        line = next(ln for ln in checked.stderr.splitlines() if f" {name} " in ln)
        assert line.split()[0] == "UNJUDGED" and line.endswith(f"({TORCH_SKIP})")


def test_judge_refuses_a_file_that_is_not_a_bench_document(tmp_path):
    proc = run_bench("--judge", write_doc(tmp_path / "other.json", {"goals": {}}), "--check")
    assert proc.returncode == 2 and "is not a document written by scripts/bench.py --out" in proc.stderr


class StopAtSeed(Exception):
    """Raised by the fake torch's ``manual_seed``: the child has set its threads and chosen its seed."""


def fake_torch(monkeypatch) -> dict:
    """Install a torch that records ``set_num_threads`` and ``manual_seed`` calls (then stops the child)."""
    calls = {"threads": [], "seeds": []}

    def manual_seed(seed):
        calls["seeds"].append(seed)
        raise StopAtSeed

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(set_num_threads=calls["threads"].append,
                                                                    manual_seed=manual_seed))
    return calls


def test_torch_child_uses_every_usable_core(monkeypatch):
    """The PyTorch baseline takes every core of the process's affinity, not a fixed 2."""
    bench = load_bench_module()
    calls = fake_torch(monkeypatch)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5}, raising=False)
    with pytest.raises(StopAtSeed):
        bench.child_train_torch({})
    assert calls["threads"] == [5]
    with pytest.raises(StopAtSeed):
        bench.child_train_nanogpt({"preset": "tiny"})
    assert calls["threads"] == [5, 5]


def test_torch_child_draws_its_weights_from_the_run_seed(monkeypatch):
    """The baseline seeds torch with the given run seed (``--quality-seeds``), else the preset's."""
    from poetry_gpt.config import config_from_preset

    bench = load_bench_module()
    calls = fake_torch(monkeypatch)
    for args in ({"preset": "tiny", "seed": 7}, {"preset": "tiny"}):
        with pytest.raises(StopAtSeed):
            bench.child_train_nanogpt(args)
    assert calls["seeds"] == [7, config_from_preset("tiny").train.seed]


def test_quality_rows_follow_the_run_seed(tmp_path):
    """``child_rows`` writes the batches of the given seed's data order: poetry_gpt's own ``training_data`` of that
    seed, and another order for another seed."""
    import numpy as np
    from helpers import write_raw

    from poetry_gpt.config import DataConfig
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.prepare import prepare
    from poetry_gpt.train.distribute import make_strategy
    from poetry_gpt.train.trainer import training_data

    bench = load_bench_module()
    prepare([write_raw(tmp_path / "raw.txt", 80)], tmp_path / "data", DataConfig(valid_fraction=0.1))
    rows = {}
    for seed in (3, 4):
        done = bench.nanogpt.child_rows({"data_dir": str(tmp_path / "data"), "preset": "tiny", "steps": 3,
                                         "out": str(tmp_path / f"rows{seed}"), "seed": seed})
        rows[seed] = np.load(done["train_rows"])
    assert not np.array_equal(rows[3], rows[4])
    manifest = load_manifest(tmp_path / "data")
    config = bench.train.preset_config("tiny", 3)
    assert config.train.seed == 3 and bench.train.preset_config("tiny").train.seed != 3
    ours = training_data(manifest, config, manifest.load_vocab(), make_strategy("default"))
    assert np.array_equal(np.stack([b["input_ids"].numpy() for b in ours.take(3)]), rows[3])


def _seed_run(seed, ours, theirs):
    systems = {"poetry_gpt": {"validation_loss": ours},
               "nanogpt_bf16": {"validation_loss": theirs} if theirs is not None else {"skipped": TORCH_SKIP}}
    return {"seed": seed, "systems": systems,
            "validation_loss_minus_nanogpt": None if theirs is None else round(ours - theirs, 4)}


def test_quality_seeds_are_judged_on_the_means():
    quality = load_bench_module().quality
    runs = [_seed_run(1234, 4.35, 4.33), _seed_run(1, 4.34, 4.36), _seed_run(2, 4.36, 4.34)]
    summary = quality.seeds_summary(runs)
    assert summary["seeds"] == [1234, 1, 2] and summary["by_seed"] == runs
    assert summary["validation_loss_mean"] == {"poetry_gpt": 4.35, "nanogpt_bf16": pytest.approx(4.3433, abs=1e-4)}
    assert summary["validation_loss_spread"] == {"poetry_gpt": 0.02, "nanogpt_bf16": 0.03}
    assert summary["validation_loss_minus_nanogpt"] == pytest.approx(0.0067, abs=1e-4)  # not the first seed's 0.02
    skipped = quality.seeds_summary([_seed_run(1, 4.34, None), _seed_run(2, 4.36, None)])
    assert skipped["validation_loss_minus_nanogpt"] is None and skipped["validation_loss_mean"]["poetry_gpt"] == 4.35


@pytest.mark.parametrize("value", ["1,1", "x", "-1", "1,,x", ""])
def test_quality_seeds_option_refuses_what_is_not_a_list_of_distinct_seeds(value):
    proc = run_bench("--only", "quality", "--quality-seeds", value)
    assert proc.returncode == 2 and "--quality-seeds" in proc.stderr and "distinct whole numbers" in proc.stderr


def test_quality_seeds_option_reads_a_list():
    bench = load_bench_module()
    base = ["--quick", "--corpus", str(BENCH), "--only", "quality"]  # any file: nothing is read
    assert bench.parse_args(base + ["--quality-seeds", "1234, 1,2"]).quality_seeds == [1234, 1, 2]
    assert bench.parse_args(base).quality_seeds == []


def test_nanogpt_baseline_is_gpt2_and_scores_validation_as_poetry_gpt(tmp_path):
    """With TF GPT-2's weights, the baseline's model gives poetry_gpt's validation loss on the same windows
    (long poems in sliding windows): the same function, the same scoring (float32)."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from helpers import write_raw

    from poetry_gpt.config import DataConfig, ModelConfig
    from poetry_gpt.data.datasets import eval_dataset
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.prepare import prepare
    from poetry_gpt.eval.evaluate import validation_loss
    from poetry_gpt.model.gpt2 import build_model

    nanogpt = load_bench_module().nanogpt
    prepare([write_raw(tmp_path / "raw.txt", 60, width=7)], tmp_path / "data", DataConfig(valid_fraction=0.2))
    manifest = load_manifest(tmp_path / "data")
    vocab = manifest.load_vocab()
    lm = build_model(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_ctx=16), vocab, seed=5)
    for v in lm.weights:  # activations and logits of order 1: GELU's tanh form and the attention matter
        if v.shape.rank == 2:
            v.assign(v * 10.0)
    model = nanogpt.gpt_model(torch, vocab.size, 2, 32, 2, 16)
    nanogpt.load_tf_gpt2(torch, model, lm)
    ours = validation_loss(lm, manifest, vocab, 8, 16)
    batches = list(eval_dataset(manifest, 8, 16, pad_id=vocab.pad_id, sep_id=vocab.sep_id))
    ids, labels = (torch.from_numpy(np.concatenate([b[k].numpy() for b in batches]).astype(np.int64))
                   for k in ("input_ids", "labels"))
    assert ids.size(0) > manifest.poems("valid")  # poems longer than the context: several windows each
    theirs = nanogpt.validation_loss(torch, model, ids, labels, 8)
    assert theirs["tokens"] == ours["tokens"] > 0
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)
    expected = lm(input_ids=ids[:8].numpy().astype(np.int32)).logits.numpy()
    with torch.no_grad():
        np.testing.assert_allclose(model(ids[:8]).numpy(), expected, atol=2e-4 * np.abs(expected).max())


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
