"""The ``serve`` section: ``poetry-gpt serve`` under concurrent clients, dynamic batching vs one request at a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .machine import load_average, section_context
from .runner import ROOT, ChildError, log, run_child

SERVE_CLIENTS = (1, 8, 32)
SERVE_REQUEST = {"title": "春", "form": "五绝", "n": 1}  # a form bounds the poem on random weights too


class _ServerProcess:
    """``poetry-gpt serve`` on a free 127.0.0.1 port, started and stopped (Ctrl-C) by the bench."""

    def __init__(self, export: str, max_batch: int, work: Path, name: str):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
        self.log_path = work / f"{name}.stderr"
        self.log = open(self.log_path, "w", encoding="utf-8")
        cmd = [sys.executable, "-c", "from poetry_gpt.cli import main; main()", "serve", "--run", export,
               "--port", "0", "--max-batch", str(max_batch), "--max-queue", "256"]
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env=env, cwd=str(ROOT))
        self.url = None
        while self.url is None:
            if self.proc.poll() is not None or time.perf_counter() - started > 1800:
                self.stop()
                raise ChildError(f"{name}: the server did not start: " + self.log_path.read_text()[-1500:])
            ready = [ln for ln in self.log_path.read_text(encoding="utf-8").splitlines() if ln.startswith("ready: ")]
            self.url = ready[0].split()[1].rstrip("/") if ready else None
            time.sleep(0.2)
        self.start_seconds = round(time.perf_counter() - started, 1)

    def peak_rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        kb = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
        return None if kb is None else round(kb * 1024 / 1e6, 1)

    def served(self) -> str | None:
        """The server's closing summary (``stopped: …``: requests, poems, batch sizes), after ``stop``."""
        lines = [ln for ln in self.log_path.read_text(encoding="utf-8").splitlines() if ln.startswith("stopped: ")]
        return lines[-1][len("stopped: "):].rstrip(".") if lines else None

    def stop(self) -> int | None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _load_level(url: str, clients: int, seconds: float, seed0: int) -> dict:
    """``clients`` threads, each sending one request after the other for ``seconds`` (keep-alive connections)."""
    import http.client
    import threading
    from urllib.parse import urlparse

    where = urlparse(url)
    latencies, errors, poems = [], [], [0]
    lock = threading.Lock()
    start_line = threading.Barrier(clients)
    stop_at = [0.0]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
        start_line.wait()
        i = 0
        while time.perf_counter() < stop_at[0]:
            body = json.dumps({**SERVE_REQUEST, "seed": seed0 + c * 100000 + i}, ensure_ascii=False).encode()
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                answer = json.loads(r.read())
                ok = r.status == 200
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, answer = False, {"error": repr(exc)}
                conn.close()
                conn = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
            took = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(took)
                    poems[0] += len(answer["poems"])
                else:
                    errors.append(answer.get("error", "?"))
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ordered = sorted(latencies)

    def pct(q: float):
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None

    return {"clients": clients, "seconds": round(wall, 2), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / wall, 2), "poems_per_s": round(poems[0] / wall, 2),
            "p50_ms": pct(0.5), "p95_ms": pct(0.95), "errors": len(errors), "first_errors": errors[:3]}


def section(bench) -> dict:
    """The ``serve`` section: the same server batched (``--max-batch 32``) and one at a time (``--max-batch 1``),
    each under 1, 8 and 32 concurrent clients for a bounded time."""
    load_before = load_average()
    if not bench.args.run and not bench.export_dir().exists():
        s = bench.shape
        run_child("setup", {"data": [{"raw": str(bench.args.corpus), "copies": 1, "out": str(bench.train_data()),
                                      "keep_duplicates": False, "valid_fraction": 0.02}],
                            "export": {"data_dir": str(bench.train_data()), "out": str(bench.export_dir()),
                                       "shape": {k: s[k] for k in ("n_layer", "n_embd", "n_head", "n_ctx")}}},
                  bench.work, bench.timeout, name="serve_setup")
    export, note = bench.generation_export()
    seconds = 5.0 if bench.quick else 20.0
    modes = {}
    for mode, max_batch in (("batched", 32), ("one_at_a_time", 1)):
        log(f"serve {mode} (--max-batch {max_batch}) ...")
        server = _ServerProcess(export, max_batch, bench.work, f"serve_{mode}")
        try:
            levels = [_load_level(server.url, n, seconds, seed0=n * 10**7) for n in SERVE_CLIENTS]
            peak = server.peak_rss_mb()
        finally:
            code = server.stop()
        modes[mode] = {"max_batch": max_batch, "start_seconds": server.start_seconds, "levels": levels,
                       "server_peak_rss_mb": peak, "exit_code": code, "served": server.served()}
        log(f"serve {mode} done")
    batched, single = modes["batched"]["levels"], modes["one_at_a_time"]["levels"]
    single_latency = batched[0]["p50_ms"]
    summary = {"single_request_p50_ms": single_latency,
               "poems_per_s_32_batched": batched[-1]["poems_per_s"],
               "poems_per_s_32_one_at_a_time": single[-1]["poems_per_s"],
               "speedup_32": round(batched[-1]["poems_per_s"] / single[-1]["poems_per_s"], 2)
               if single[-1]["poems_per_s"] else None,
               "p95_32_over_single": round(batched[-1]["p95_ms"] / single_latency, 2)
               if batched[-1]["p95_ms"] and single_latency else None,
               "errors": sum(lv["errors"] for m in modes.values() for lv in m["levels"]),
               "server_peak_rss_mb": modes["batched"]["server_peak_rss_mb"]}
    return {"what": f"poetry-gpt serve under 1/8/32 concurrent clients, {seconds:.0f} s each, POST /api/generate "
                    f"{json.dumps(SERVE_REQUEST, ensure_ascii=False)} with a new seed per request; 'batched' is the "
                    "default dynamic batching, 'one_at_a_time' the same server with --max-batch 1",
            "export": note, "summary": summary, **modes, **section_context(load_before, bench.command)}
