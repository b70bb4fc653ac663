"""Training to a time budget (``train --max-time``): when to stop, and where the decay should end.

A ``TimeBudget`` is told the global step and the clock after every training step, and of each epoch
end. It measures the training step rate (the first steps, which include tracing, and the epoch ends
left out) and what an epoch end costs (validation, checkpoint, export, samples); from them and the time
left it plans the step at which the learning-rate decay should end, keeping one epoch end's time for
the final validation/checkpoint/export/samples, and re-plans every ``replan_seconds`` and after each
epoch end.
It asks to stop when the planned step is reached (the decay is done) or when the time left is only
the reserve (the deadline). The schedule itself is in ``schedule.py`` (``replan``).
"""
from __future__ import annotations

import math
import re
import time

from ..errors import OptionError

SKIP_STEPS = 2  # steps after a (re)start that are not timed: they include tracing the train step
MARGIN_SHARE = 0.01  # the decay is planned to end this share of the budget before the deadline's reserve
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def clock() -> float:
    """The budget's clock (monotonic seconds; tests replace it)."""
    return time.monotonic()


def parse_duration(text: str, option: str = "--max-time") -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``2h`` or ``1h30m``.

    Args:
        text: the duration as typed.
        option: the option named in the error.

    Raises:
        OptionError: not a duration, or not more than zero.
    """
    value = str(text).strip().lower()
    example = "like 90s, 30m, 2h or 1h30m"
    if value.startswith("-"):
        raise OptionError(f"{option} {text}: must be a positive duration, {example}")
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groups()):
        if re.fullmatch(r"\d+(\.\d+)?", value) and float(value) > 0:
            raise OptionError(f"{option} {text}: no unit; write {value}s, {value}m or {value}h ({example})")
        if not re.fullmatch(r"\d+(\.\d+)?", value):
            raise OptionError(f"{option} {text}: not a duration; write it {example} (a number with the unit s, m or h)")
    seconds = sum(float(n) * _UNITS[u] for n, u in zip(match.groups(), "hms") if n) if match else 0.0
    if seconds <= 0:
        raise OptionError(f"{option} {text}: must be more than zero, {example}")
    return seconds


def format_duration(seconds: float) -> str:
    """``1h30m``, ``40s``, ``2m5s``: the inverse of ``parse_duration`` (to the second).

    Args:
        seconds: the duration.
    """
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


class TimeBudget:
    """When a run with ``--max-time`` stops, and at which step its decay should end.

    The time left is modelled as training steps at the measured training rate, plus an epoch end
    (validation, checkpoint, export, samples, the next epoch's start: measured between an epoch's last
    step and the next one's first) at each multiple of ``steps_per_epoch``, plus a final one at the deadline.

    Args:
        seconds: the budget.
        started: the clock (``clock()``) when the budget began.
        start_step: the global step training starts from.
        steps_per_epoch: steps between epoch ends.
        val_batches: batches of a validation pass (the cost of an epoch end is guessed from them until
            one has been timed).
    """

    def __init__(self, seconds: float, started: float, start_step: int, steps_per_epoch: int, val_batches: int):
        self.seconds, self.started = float(seconds), float(started)
        self.deadline = self.started + self.seconds
        self.deadline_wall = time.time() + (self.deadline - clock())
        self.start_step, self.steps_per_epoch, self.val_batches = start_step, steps_per_epoch, max(1, val_batches)
        self.replan_seconds = max(0.5, self.seconds / 400)
        self.wrap_seconds: float | None = None  # the last epoch end's cost, once timed
        self.planned_end: int | None = None
        self.stopped_by: str | None = None  # "decay" (the planned step was reached) or "deadline"
        self._began: float | None = None
        self._first_step = 0.0  # the first step's time: mostly tracing the training step
        self._prev: tuple[float, int] | None = None  # the last step's (time, step)
        self._crossing = False  # an epoch ended since the last step
        self._train = [0.0, 0]  # seconds and steps of plain training steps (no epoch end among them)
        self._last_plan = -math.inf

    @property
    def rate(self) -> float | None:
        """Training steps per second (epoch ends excluded), once measured."""
        seconds, steps = self._train
        return steps / seconds if steps and seconds > 0 else None

    def begin(self, now: float) -> None:
        """Note that training starts now (the first step's time is then measured).

        Args:
            now: ``clock()``.
        """
        self._began = self._began if self._began is not None else now
        self._prev = self._prev or (now, self.start_step)

    def epoch_ended(self) -> None:
        """Note an epoch end (its cost is timed up to the next step, which also re-plans)."""
        self._crossing = True
        self._last_plan = -math.inf

    def reserve(self) -> float:
        """Seconds an epoch end takes: kept for the final validation, checkpoint, export and samples."""
        if self.wrap_seconds is not None:
            return self.wrap_seconds
        # until one is timed: a validation pass at the training rate (a validation step costs about a third
        # of a training step) plus, for tracing the validation and sampling steps, what the first step took
        return (self.val_batches / self.rate if self.rate else 0.0) + self._first_step

    def after_step(self, step: int, now: float) -> int | None:
        """Take the step and the clock after a training step; return a new planned final step when it
        is time to re-plan (None otherwise).

        Args:
            step: the global step (steps done).
            now: ``clock()``.
        """
        if self._prev is not None and step > self._prev[1]:
            seconds = now - self._prev[0]
            if step == self.start_step + 1:
                self._first_step = seconds
            elif self._crossing:
                step_seconds = 1.0 / self.rate if self.rate else 0.0
                self.wrap_seconds = max(0.0, seconds - step_seconds * (step - self._prev[1]))
            elif step > self.start_step + SKIP_STEPS:
                self._train[0] += seconds
                self._train[1] += step - self._prev[1]
        self._prev, self._crossing = (now, step), False
        if self.rate is None or now - self._last_plan < self.replan_seconds:
            return None
        self._last_plan = now
        self.planned_end = step + max(1, self._steps_that_fit(step, self.deadline - now))
        return self.planned_end

    def _steps_that_fit(self, step: int, left: float) -> int:
        """How many more steps fit in ``left`` seconds with the epoch ends among them, the final epoch end
        and the margin.

        Args:
            step: the global step now.
            left: seconds to the deadline.
        """
        wrap, spe = self.reserve(), max(1, self.steps_per_epoch)
        usable = left - wrap - MARGIN_SHARE * self.seconds

        def needs(steps: int) -> float:  # seconds for ``steps`` more steps and the epoch ends before the last one
            return steps / self.rate + ((step + steps - 1) // spe - step // spe) * wrap

        low, high = 0, max(0, int(usable * self.rate))  # needs() grows with steps: the largest that fits
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if needs(middle) <= usable else (low, middle - 1)
        return low

    def should_stop(self, step: int, now: float) -> bool:
        """Whether to stop after this step: the planned final step is reached, or only the reserve is left.

        Args:
            step: the global step.
            now: ``clock()``.
        """
        if self.planned_end is not None and step >= self.planned_end:
            self.stopped_by = self.stopped_by or "decay"
        elif now >= self.deadline - self.reserve():
            self.stopped_by = self.stopped_by or "deadline"
        return self.stopped_by is not None

    def record(self, step: int) -> dict:
        """What ``trainer_state.json`` keeps of the budget.

        Args:
            step: the global step reached.
        """
        return {"max_time": format_duration(self.seconds), "max_time_seconds": self.seconds,
                "deadline": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.deadline_wall)),
                "started_step": self.start_step, "planned_steps": self.planned_end, "reached_steps": step,
                "elapsed_seconds": round(clock() - self.started, 1), "stopped_by": self.stopped_by,
                "steps_per_second": round(self.rate, 3) if self.rate else None}
