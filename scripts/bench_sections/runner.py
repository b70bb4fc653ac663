"""Running one measurement in a fresh process (``bench.py --child KIND``) and collecting its JSON result line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench.py"
RESULT_TAG = "BENCH_RESULT "


def log(message: str) -> None:
    """A progress line on stderr (stdout holds the document)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ChildError(RuntimeError):
    """A benchmark subprocess failed (its stderr tail is in the message)."""


def run_process(cmd: list[str], work: Path, name: str, timeout: float, env_extra: dict | None = None) -> dict:
    """Run ``cmd``; return its stdout, wall seconds, CPU seconds (user + system) and peak RSS (``ru_maxrss`` from
    ``wait4``)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(env_extra or {})
    out_path, err_path = work / f"{name}.stdout", work / f"{name}.stderr"
    start = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = err_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        why = "timed out" if seconds >= timeout else f"exit code {proc.returncode}"
        raise ChildError(f"{name}: {why} after {seconds:.0f} s: " + " | ".join(tail))
    return {"stdout": stdout, "seconds": seconds, "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1)}


def run_child(kind: str, args: dict, work: Path, timeout: float, name: str | None = None,
              env_extra: dict | None = None) -> dict:
    """Run one measurement (``bench.py --child KIND``) in a fresh process and return its JSON result,
    with the process's wall time and peak RSS added."""
    name = name or kind
    log(f"{name} ...")
    proc = run_process([sys.executable, str(SCRIPT), "--child", kind, "--child-args", json.dumps(args)],
                       work, name, timeout, env_extra)
    lines = [ln for ln in proc["stdout"].splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise ChildError(f"{name}: printed no result line")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_seconds"] = round(proc["seconds"], 1)
    result["peak_rss_mb"] = proc["peak_rss_mb"]
    log(f"{name} done in {proc['seconds']:.0f} s")
    return result


def run_many(jobs: list[tuple[str, dict, str]], work: Path, timeout: float, parallel: bool) -> list[dict]:
    """``run_child`` for each ``(kind, args, name)``, one after the other or all at once."""
    if not parallel:
        return [run_child(kind, args, work, timeout, name=name) for kind, args, name in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(run_child, kind, args, work, timeout, name) for kind, args, name in jobs]
        return [f.result() for f in futures]


def emit(result: dict) -> None:
    """A child's one result line."""
    print(RESULT_TAG + json.dumps(result, ensure_ascii=False), flush=True)

