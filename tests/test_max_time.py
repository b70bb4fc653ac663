"""``train --max-time``: the decay planned to end at the deadline, re-planned continuously, the budget's
final validation/checkpoint/export, resume, and Ctrl-C refreshing export/ (issue 18, part 1).

The training tests run the ``tiny`` preset for real but on a virtual clock (``budget.clock``): each
training step takes 0.1 s of it, the first 2 s (tracing), each epoch end 1 s. What the run does with
the clock is then the same on every machine, and the deadline assertions are exact, not timed.
"""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
from helpers import cli, failure_text, write_raw

import poetry_gpt.train.budget as budget_mod
import poetry_gpt.train.callbacks as callbacks_mod
from poetry_gpt.train.budget import TimeBudget, format_duration, parse_duration
from poetry_gpt.config import DataConfig, config_from_preset
from poetry_gpt.errors import OptionError
from poetry_gpt.data.prepare import prepare
from poetry_gpt.run_dir import RunDir
from poetry_gpt.train.schedule import keras_schedule, lr_at, replan
from poetry_gpt.train.loop import train
from poetry_gpt.generate.epoch import sample_poems

N_CTX = 64
STEP, FIRST_STEP, EPOCH_END = 0.1, 2.0, 1.0  # virtual seconds


def ends_in_time(now: float, budget: float) -> bool:
    """The stated tolerance: a run ends by its deadline, and at most the margin (1% of the budget), one epoch
    end (when the next one would not fit: the decay then ends at an epoch's end) and a step before it."""
    return budget - (budget_mod.MARGIN_SHARE * budget + EPOCH_END + 2 * STEP) <= now <= budget


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("max-time")
    raw = write_raw(root / "raw.txt", 120)
    prepare([raw], root / "data", DataConfig(valid_fraction=0.05), n_ctx=N_CTX)
    return root / "data"


def tiny(**overrides):
    values = dict(precision="fp32", steps_per_epoch=100, epochs=1, samples_per_epoch=1, checkpoint_every=0)
    values.update(overrides)
    return config_from_preset("tiny").replace(train=values)


class VirtualClock:
    """``budget.clock`` for a run: training steps and epoch ends advance it by fixed amounts.

    Records the learning rate each step is taken with (``lrs[step]``, from the optimizer's live schedule).
    """

    def __init__(self, monkeypatch, stop_at: int | None = None, stop_with: type[BaseException] = KeyboardInterrupt):
        self.now, self.lrs = 0.0, {}
        monkeypatch.setattr(budget_mod, "clock", lambda: self.now)
        real = callbacks_mod.RunCallback
        clock = self

        def patched(*args, **kwargs):
            cb = real(*args, **kwargs)
            start = []  # the step this call starts from, once the callback has its model
            batch_end, epoch_end = cb.on_train_batch_end, cb.on_epoch_end

            def on_train_batch_begin(batch, logs=None):
                opt = cb.model.optimizer
                start[:] = start or [cb._step()]
                clock.lrs[cb._step()] = float(opt._learning_rate(opt.iterations))

            def on_train_batch_end(batch, logs=None):
                clock.now += FIRST_STEP if cb._step() == start[0] + 1 else STEP
                batch_end(batch, logs)
                if cb._step() == stop_at:
                    raise stop_with("simulated stop")

            def on_epoch_end(epoch, logs=None):
                clock.now += EPOCH_END
                epoch_end(epoch, logs)

            cb.on_train_batch_begin, cb.on_train_batch_end, cb.on_epoch_end = (
                on_train_batch_begin, on_train_batch_end, on_epoch_end)
            return cb

        monkeypatch.setattr(callbacks_mod, "RunCallback", patched)


def final_lr(config) -> float:
    return config.train.learning_rate * config.train.min_lr_ratio


def export_step(run) -> int:
    from poetry_gpt.fsutil import read_json

    return read_json(run / "export" / "poetry_gpt.json")["global_step"]


# --- durations ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5m", 90), (" 40S ", 40)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text, says", [("0", "more than zero"), ("0s", "more than zero"), ("abc", "not a duration"),
                                        ("-5m", "positive"), ("90", "no unit; write 90s"), ("", "not a duration"), ("1.2.3", "not a duration"), ("0.0", "more than zero")])
def test_bad_durations_are_one_clear_error(text, says):
    with pytest.raises(OptionError) as exc:
        parse_duration(text)
    assert str(exc.value).startswith(f"--max-time {text}") and says in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("command", ["train", "pipeline"])
@pytest.mark.parametrize("value", ["0", "abc", "-5m"])
def test_cli_bad_max_time(tmp_path, data_dir, command, value):
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    source = [str(write_raw(tmp_path / "raw.txt", 20))] if command == "pipeline" else ["--data", str(data_dir)]
    result = CliRunner().invoke(main, [command, *source, "--run", str(tmp_path / "run"), "--config", "tiny",
                                       "--max-time", value])
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error")]
    assert line.startswith(f"Error: --max-time {value}: ") and "90s, 30m" in line, line
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


# --- the schedule's plan -----------------------------------------------------------------------------

def test_plan_schedule_matches_the_fixed_one_and_replanning_is_continuous():
    import tensorflow as tf

    peak, warmup, total, ratio = 3e-3, 10, 200, 0.1
    plan = tf.Variable([0.0, warmup, total], dtype=tf.float64)
    fixed, planned = (keras_schedule(peak, warmup, total, "cosine", ratio, p) for p in (None, plan))
    for step in (0, 5, 9, 10, 11, 100, 199, 200, 500):
        expected = lr_at(step, peak, warmup, total, "cosine", ratio)
        assert float(fixed(step)) == pytest.approx(expected, rel=1e-6)
        assert float(planned(step)) == float(fixed(step))  # the same float32 arithmetic
        assert lr_at(step, peak, warmup, total, "cosine", ratio, (0.0, warmup, total)) == expected
    # re-planned at step 80 to end at 400 instead of 200: the same rate at 80, then a slower decay, the minimum at 400
    new = replan((0.0, warmup, total), 80, 400, warmup)
    plan.assign(new)
    before = lr_at(80, peak, warmup, total, "cosine", ratio)
    assert lr_at(80, peak, warmup, 0, "cosine", ratio, new) == pytest.approx(before, rel=1e-12)
    assert float(planned(80)) == pytest.approx(before, rel=1e-6)
    assert lr_at(200, peak, warmup, 0, "cosine", ratio, new) > lr_at(200, peak, warmup, total, "cosine", ratio)
    assert float(planned(400)) == pytest.approx(peak * ratio, rel=1e-6)
    # during warm-up a re-plan keeps the decay's start at the end of warm-up
    assert replan((0.0, warmup, total), 3, 50, warmup) == (0.0, warmup, 50)


def test_wsd_holds_the_peak_then_cools_down_linearly_over_the_last_fifth():
    import tensorflow as tf

    peak, warmup, total, ratio = 3e-3, 10, 210, 0.1  # decay span 200 steps: the cool-down is steps 170-210
    plan = tf.Variable([0.0, warmup, total], dtype=tf.float64)
    fixed, planned = (keras_schedule(peak, warmup, total, "wsd", ratio, p) for p in (None, plan))
    expected = {0: peak / warmup, 10: peak, 100: peak, 170: peak, 190: peak * (ratio + (1 - ratio) * 0.5),
                200: peak * (ratio + (1 - ratio) * 0.25), 210: peak * ratio, 400: peak * ratio}
    for step, rate in expected.items():
        assert lr_at(step, peak, warmup, total, "wsd", ratio) == pytest.approx(rate, rel=1e-9), step
        assert float(fixed(step)) == pytest.approx(rate, rel=1e-6), step
        assert float(planned(step)) == pytest.approx(rate, rel=1e-6), step
    # re-planned at step 110 (progress 0.5) to end at 410: still the peak, the cool-down now steps 290-410
    plan.assign(replan((0.0, warmup, total), 110, 410, warmup))
    assert float(planned(280)) == pytest.approx(peak, rel=1e-6)
    assert float(planned(350)) == pytest.approx(peak * (ratio + (1 - ratio) * 0.5), rel=1e-6)
    assert float(planned(410)) == pytest.approx(peak * ratio, rel=1e-6)


def test_a_new_timed_run_decays_with_wsd_unless_schedule_is_given(tmp_path):
    from poetry_gpt.run_dir import resolve_config

    assert resolve_config(tmp_path / "a", "tiny", {}, {}, timed=True).train.schedule == "wsd"
    assert resolve_config(tmp_path / "a", "tiny", {}, {"schedule": "cosine"}, timed=True).train.schedule == "cosine"
    assert resolve_config(tmp_path / "a", "tiny", {}, {}).train.schedule == "cosine"


def test_budget_plans_from_the_training_rate_and_the_epoch_end_cost():
    budget = TimeBudget(100.0, started=0.0, start_step=0, steps_per_epoch=50, val_batches=2)
    budget.begin(0.0)
    now, planned = 0.0, []
    for step in range(1, 2000):
        now += 5.0 if step == 1 else 0.1
        if step % 50 == 1 and step > 1:
            now += 3.0  # the epoch end before this step
        end = budget.after_step(step, now)
        if end:
            planned.append(end)
        if step % 50 == 0:
            budget.epoch_ended()
        if budget.should_stop(step, now):
            break
    assert budget.rate == pytest.approx(10.0) and budget.wrap_seconds == pytest.approx(3.0)
    assert budget.stopped_by == "decay" and step == budget.planned_end
    # the time left after the last step is one epoch end (the final one) and the margin, to a step
    assert 100.0 - now - 3.0 == pytest.approx(100.0 * budget_mod.MARGIN_SHARE, abs=0.1)


# --- runs ----------------------------------------------------------------------------------------------

@pytest.mark.slow  # a real tiny training run: 10-25 s on 2 shared cores
def test_max_time_ends_at_the_deadline_decayed_with_a_loadable_export(tmp_path, monkeypatch, data_dir):
    from transformers import TFGPT2LMHeadModel

    clock = VirtualClock(monkeypatch)
    config = tiny()
    lines: list[str] = []
    result = train(data_dir, tmp_path / "run", config, echo=lines.append, verbose=0, max_time=40.0,
                   sample_poems=sample_poems)
    # ended within the tolerance of the deadline, never after it, by the decay's end
    assert ends_in_time(clock.now, 40.0), clock.now
    state = RunDir(tmp_path / "run").read_state()
    budget = state["time_budget"]
    assert result.budget["stopped_by"] == budget["stopped_by"] == "decay"
    assert budget["max_time"] == "40s" and budget["planned_steps"] == budget["reached_steps"] == result.global_step
    assert state["global_step"] == result.global_step and state["latest_checkpoint"] == f"ckpt-{result.global_step}"
    assert state["learning_rate"] == pytest.approx(final_lr(config), rel=1e-6)
    last_taken = clock.lrs[result.global_step - 1]
    assert last_taken == pytest.approx(final_lr(config), rel=0.01)
    lrs = [clock.lrs[s] for s in sorted(clock.lrs) if s >= config.train.warmup_steps]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(lrs, lrs[1:])), "the rate rose after warm-up"
    # more than 3 epochs of 100 steps fit: epochs ends were timed and planned for; the last one is partial
    assert result.global_step > 300 and result.global_step % 100
    record = state["history"][-1]
    assert record["partial"] and record["global_step"] == result.global_step and record["val_loss"] is not None
    assert state["epoch"] == result.global_step // 100 == result.epoch
    assert (tmp_path / "run" / "samples" / f"epoch-{record['epoch']:03d}-step-{result.global_step}.txt").is_file()
    assert any(x.startswith(f"time budget reached in epoch {record['epoch']}: step {result.global_step},")
               for x in lines), lines
    assert export_step(tmp_path / "run") == result.global_step
    model = TFGPT2LMHeadModel.from_pretrained(str(tmp_path / "run" / "export"))
    assert model(np.array([[2, 5, 6]])).logits.shape[-1] == model.config.vocab_size


@pytest.mark.slow  # a real tiny training run: 10-25 s on 2 shared cores
@pytest.mark.parametrize("stop_with, resumed_at", [(RuntimeError, 250), (KeyboardInterrupt, 262)],
                         ids=["kill-resumes-from-interval-ckpt", "ctrl-c-saves-and-exports"])
def test_resume_keeps_the_schedule_continuous(tmp_path, monkeypatch, data_dir, stop_with, resumed_at):
    config = tiny(checkpoint_every=50)
    run = tmp_path / "run"
    first = VirtualClock(monkeypatch, stop_at=262, stop_with=stop_with)
    with pytest.raises(stop_with):
        train(data_dir, run, config, echo=lambda s: None, verbose=0, max_time=40.0)
    monkeypatch.undo()
    state = RunDir(run).read_state()
    assert state["global_step"] == resumed_at
    # the rate the interrupted run takes (or would have taken) step `resumed_at` with, under the plan it had then
    interrupted = first.lrs.get(resumed_at, state["learning_rate"])
    assert interrupted == pytest.approx(state["learning_rate"], rel=1e-6)
    if stop_with is KeyboardInterrupt:
        assert export_step(run) == 262  # Ctrl-C refreshed export/, not only the checkpoint
    assert final_lr(config) * 1.5 < interrupted < config.train.learning_rate * 0.9  # mid-decay

    second = VirtualClock(monkeypatch)
    lines: list[str] = []
    result = train(None, run, config, echo=lines.append, verbose=0, max_time=20.0)
    assert result.restored_step == resumed_at
    resumed = second.lrs[resumed_at]
    assert resumed == pytest.approx(interrupted, rel=1e-6)  # no jump back to warm-up or the peak
    assert any(f"learning rate {interrupted:.3g}." in x for x in lines if x.startswith("Resumed")), lines
    lrs = [second.lrs[s] for s in sorted(second.lrs)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(lrs, lrs[1:]))
    assert RunDir(run).read_state()["learning_rate"] == pytest.approx(final_lr(config), rel=1e-6)
    assert ends_in_time(second.now, 20.0), second.now


@pytest.mark.slow  # a real tiny training run: 10-25 s on 2 shared cores
def test_ctrl_c_refreshes_export_without_max_time_and_checkpoints_hold_no_plan(tmp_path, monkeypatch, data_dir):
    from test_train import checkpoint_tensors

    config = tiny(steps_per_epoch=10, epochs=2, samples_per_epoch=0)
    VirtualClock(monkeypatch, stop_at=14)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train(data_dir, tmp_path / "run", config, echo=lines.append, verbose=0)
    assert RunDir(tmp_path / "run").read_state()["latest_checkpoint"] == "ckpt-14"
    assert export_step(tmp_path / "run") == 14  # was 10: the last epoch end's
    assert "Interrupted at step 14: checkpoint ckpt-14 saved, export/ updated." in lines
    assert not any(k.startswith("lr_plan") for k in checkpoint_tensors(tmp_path / "run"))


@pytest.mark.slow  # a real tiny training run: 10-25 s on 2 shared cores
def test_a_run_without_budget_resumed_with_one_continues_its_decay(tmp_path, monkeypatch, data_dir):
    config = tiny(steps_per_epoch=40)
    VirtualClock(monkeypatch, stop_at=25)
    with pytest.raises(KeyboardInterrupt):
        train(data_dir, tmp_path / "run", config, echo=lambda s: None, verbose=0)
    monkeypatch.undo()
    t = config.train
    interrupted = lr_at(25, t.learning_rate, t.warmup_steps, 40, t.schedule, t.min_lr_ratio)
    assert RunDir(tmp_path / "run").read_state()["learning_rate"] == interrupted < t.learning_rate * 0.9
    second = VirtualClock(monkeypatch)
    train(None, tmp_path / "run", config, echo=lambda s: None, verbose=0, max_time=15.0)
    assert second.lrs[25] == pytest.approx(interrupted, rel=1e-6)
    assert RunDir(tmp_path / "run").read_state()["learning_rate"] == pytest.approx(final_lr(config), rel=1e-6)


@pytest.mark.slow
def test_cli_max_time_for_real(tmp_path, data_dir, native_crash_env):
    """A real clock: `train --max-time 30s` exits 0 by its deadline, decayed, with the summary line."""
    run = tmp_path / "run"
    proc = subprocess.run(cli() + ["train", "--data", str(data_dir), "--run", str(run), "--config", "tiny",
                                   "--steps-per-epoch", "100", "--precision", "fp32", "--max-time", "30s", "--quiet"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **native_crash_env})
    assert proc.returncode == 0, failure_text(proc.stderr)
    state = RunDir(run).read_state()
    budget = state["time_budget"]
    m = re.search(r"^Time budget 30s \(deadline \d\d:\d\d:\d\d\): planned (\d+) steps, reached (\d+) \(", proc.stdout, re.M)
    assert m and int(m.group(2)) == budget["reached_steps"] == state["global_step"], proc.stdout
    # the generous bound allows for other processes on the machine; the virtual-clock tests are the exact ones
    assert budget["elapsed_seconds"] <= 30 + 10, budget
    assert export_step(run) == state["global_step"]
    assert RunDir(run).read_run()["config"]["train"]["schedule"] == "wsd"  # a timed run's default
