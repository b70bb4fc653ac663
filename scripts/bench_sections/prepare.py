"""The ``prepare`` section: characters/s of ``prepare`` on a corpus repeated 1×, 4×, 16× (``scripts/bench_prepare.py``)."""
from __future__ import annotations

import json
import sys

from .machine import load_average, section_context
from .runner import ROOT, log, run_process


def section(bench) -> dict:
    load_before = load_average()
    if bench.quick:
        cmd_args = ["--raw", str(bench.args.corpus), "--copies", "1,4", "--repeats", "1"]
    else:
        cmd_args = ["--raw", str(bench.args.full_corpus), "--copies", "1,4,16", "--repeats", "2"]
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_prepare.py"), *cmd_args, "--tmp", str(bench.work)]
    log("prepare (scripts/bench_prepare.py) ...")
    proc = run_process(cmd, bench.work, "bench_prepare", bench.timeout)
    log(f"prepare done in {proc['seconds']:.0f} s")
    result = json.loads(proc["stdout"])
    result["process_peak_rss_mb"] = proc["peak_rss_mb"]
    result["script"] = "scripts/bench_prepare.py " + " ".join(cmd_args)
    return {"what": "characters/s of prepare(): raw.txt -> vocabulary + TFRecords + manifest", **result,
            **section_context(load_before, bench.command)}
