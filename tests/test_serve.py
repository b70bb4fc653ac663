"""``poetry-gpt serve``: the HTTP API of a real server process on 127.0.0.1 (``serve_url`` in conftest.py),
and the dynamic batcher on a fake generator.

Every bad request must get a 4xx (or 503) with a JSON message, and the server must answer the next
request; a request's poems must be the same whether it ran alone or shared a batch.
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SERVE_MAX_BATCH, SERVE_MAX_QUEUE
from poetry_gpt.verse import forms, tones


def call(url: str, path: str, body=None, raw: bytes | None = None, timeout: float = 300) -> tuple[int, dict | list]:
    """``(status, JSON answer)`` of a GET (no body) or a POST; NDJSON answers become a list of events."""
    data = raw if raw is not None else (None if body is None else json.dumps(body, ensure_ascii=False).encode())
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, text = r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8")
    if path.endswith("/stream") and status == 200:
        return status, [json.loads(line) for line in text.splitlines()]
    return status, json.loads(text)


def texts(answer: dict) -> list[str]:
    return [p["text"] for p in answer["poems"]]


def test_info_reports_the_model(serve_url, tiny_run):
    status, info = call(serve_url, "/api/info")
    assert status == 200
    run = json.loads((tiny_run / "run.json").read_text(encoding="utf-8"))
    assert info["model"]["preset"] == "tiny" == run["config"]["preset"]
    assert info["model"]["context"] == 64 and info["model"]["genre"] == "唐诗"
    assert info["model"]["vocab_size"] == len((tiny_run / "export" / "vocab.txt").read_text("utf-8").splitlines())
    assert info["model"]["parameters"] > 50_000
    assert info["model"]["training_step"] == 20
    assert info["forms"] == ["五绝", "七绝", "五律", "七律"]
    # the vocabulary has tone data, so strict is offered; the corpus has no 词牌 (no title heads 20 poems)
    assert info["strict"] is True and info["cipai"] == [] and info["tones"] is True
    assert info["defaults"]["top_k"] == 64 and info["defaults"]["min_p"] == 0.05 and info["defaults"]["n"] == 1
    assert info["defaults"]["leniency"] == "standard" and info["defaults"]["rhyme_book"] == "pingshui"


def test_page_is_self_contained(serve_url):
    with urllib.request.urlopen(serve_url + "/", timeout=60) as r:
        page = r.read().decode("utf-8")
        assert r.headers["content-type"].startswith("text/html")
    assert "/api/generate/stream" in page and "/api/info" in page
    for external in ("http://", "https://", "//cdn", "<link"):  # nothing from the network: works offline
        assert external not in page.replace("http://www.w3.org", ""), external


def test_every_field(serve_url):
    body = {"openings": ["春花秋月山"], "title": "春山", "genre": "唐诗", "form": "五绝", "strict": False,
            "leniency": "strict", "acrostic": "春花秋月", "rhyme": True, "rhyme_book": "pingshui", "n": 2, "seed": 5, "top_k": 10, "top_p": 0.9, "min_p": 0.1,
            "temperature": 0.8, "repetition_penalty": 1.2, "max_new_tokens": 30}
    status, answer = call(serve_url, "/api/generate", body)
    assert status == 200, answer
    assert [p["seed"] for p in answer["poems"]] == [5, 6]
    for poem in answer["poems"]:
        assert poem["text"].startswith("春山 唐诗：【春花秋月山，") and poem["closed"], poem
        assert poem["prompt"] == "春山 唐诗：【春花秋月山"
        report = forms.check(poem["body"])
        assert report.form == "五绝", poem
        assert [clause[0] for clause in forms.split_clauses(poem["body"])[0]] == list("春花秋月")
        rhymes = [tones.table().ping_groups(ch) for ch in report.rhyme_chars]  # 平水韵: one 平声 group, none twice
        assert set(rhymes[0]) & set(rhymes[1]) and len(set(report.rhyme_chars)) == 2, poem
        assert poem["tokens"] <= 30
    assert answer["options"] == body
    assert set(answer["timings"]) == {"queued_ms", "decode_ms", "total_ms", "batch_poems"}
    # the same request again: the same poems (the seed decides them)
    assert texts(call(serve_url, "/api/generate", body)[1]) == texts(answer)


def test_defaults_and_unclosed_flag(serve_url):
    status, answer = call(serve_url, "/api/generate", {"title": "春", "seed": 3, "max_new_tokens": 2})
    assert status == 200
    (poem,) = answer["poems"]
    assert poem["text"].startswith("春 唐诗：【") and poem["tokens"] <= 2 and not poem["closed"]
    status, answer = call(serve_url, "/api/generate", {})
    assert status == 200 and len(answer["poems"]) == 1  # nothing at all: the model writes the title too


def _assert_field_error(status, answer, expected_status, field, *fragments):
    assert status == expected_status, answer
    assert answer["field"] == field, answer
    for fragment in fragments:
        assert fragment in answer["error"], answer


BAD = {
    # name: (body or raw bytes, status, field, message fragments)
    "invalid_json": (b'{"openings": [', 400, None, ["not valid JSON"]),
    "not_utf8": ("春".encode("gbk"), 400, None, ["not valid JSON"]),
    "not_an_object": (b"[1, 2]", 400, None, ["JSON object"]),
    "unknown_field": ({"opening": "春"}, 400, "opening", ["unknown field", "openings"]),
    "n_string": ({"n": "2"}, 400, "n", ["integer"]),
    "n_bool": ({"n": True}, 400, "n", ["integer"]),
    "top_k_float": ({"top_k": 1.5}, 400, "top_k", ["integer"]),
    "rhyme_string": ({"rhyme": "yes"}, 400, "rhyme", ["true or false"]),
    "openings_numbers": ({"openings": [1]}, 400, "openings", ["list of strings"]),
    "temperature_string": ({"temperature": "hot"}, 400, "temperature", ["number"]),
    "title_number": ({"title": 3}, 400, "title", ["string"]),
    "top_k_zero": ({"top_k": 0}, 400, "top_k", ["--top-k", "≥ 1"]),
    "top_p_above_one": ({"top_p": 1.5}, 400, "top_p", ["--top-p", "(0, 1]"]),
    "min_p_one": ({"min_p": 1}, 400, "min_p", ["--min-p"]),
    "temperature_zero": ({"temperature": 0}, 400, "temperature", ["--temperature", "> 0"]),
    "penalty_negative": ({"repetition_penalty": -1}, 400, "repetition_penalty", ["--repetition-penalty"]),
    "n_zero": ({"n": 0}, 400, "n", ["between 1 and 16"]),
    "n_over_cap": ({"n": 1000}, 400, "n", ["between 1 and 16"]),
    "too_many_poems": ({"openings": ["春", "花", "秋"], "n": 16}, 400, "openings", ["more than"]),
    "max_new_tokens_zero": ({"max_new_tokens": 0}, 400, "max_new_tokens", ["--max-new-tokens", "≥ 1"]),
    "max_new_tokens_huge": ({"max_new_tokens": 10000}, 400, "max_new_tokens", ["--max-new-tokens", "at most"]),
    "seed_negative": ({"seed": -1}, 400, "seed", ["between 0"]),
    "seed_huge": ({"seed": 10**30}, 400, "seed", ["between 0"]),
    "oov_opening": ({"openings": ["龙飞凤舞"]}, 400, "openings", ["not in the model's vocabulary", "龙"]),
    "oov_title": ({"title": "龙"}, 400, "title", ["--title", "vocabulary"]),
    "oov_acrostic": ({"form": "五绝", "acrostic": "龙虎风云"}, 400, "acrostic", ["--acrostic", "龙"]),
    "acrostic_without_form": ({"acrostic": "春花秋月"}, 400, "acrostic", ["needs --form"]),
    "unknown_form": ({"form": "八绝"}, 400, "form", ["unknown form", "五绝"]),
    "form_too_long_for_context": ({"form": "七律", "title": "春山"}, 400, "form", ["--form 七律", "context"]),
    # strict is offered (tone data), but 18 characters hold no 平水韵 group with the 4 rhyme characters a 五绝 needs
    "strict_vocabulary_too_small": ({"form": "五绝", "strict": True}, 400, "strict", ["--strict", "平水韵", "五绝"]),
    "strict_without_form": ({"strict": True}, 400, "strict", ["--strict", "needs --form"]),
    "leniency_unknown": ({"form": "五绝", "strict": True, "leniency": "loose"}, 400, "leniency",
                         ["--leniency: must be standard or strict, got loose"]),
    "leniency_number": ({"leniency": 1}, 400, "leniency", ["string"]),
    "rhyme_book_misspelt": ({"form": "五绝", "rhyme": True, "rhyme_book": "pinshui"}, 400, "rhyme_book",
                            ["--rhyme-book: must be pingshui", "modern", "got pinshui"]),
    "rhyme_book_modern_with_strict": ({"form": "五绝", "strict": True, "rhyme_book": "modern"}, 400, "rhyme_book",
                                      ["--rhyme-book modern", "--strict"]),
    "closing_bracket": ({"openings": ["春花】"]}, 400, "openings", ["】"]),
    "one_megabyte": (b'{"title": "' + b"a" * (1 << 20) + b'"}', 413, None, ["larger than"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_requests_get_a_message_and_the_server_goes_on(serve_url, name):
    body, status_expected, field, fragments = BAD[name]
    raw = body if isinstance(body, bytes) else None
    status, answer = call(serve_url, "/api/generate", None if raw else body, raw=raw)
    _assert_field_error(status, answer, status_expected, field, *fragments)
    # the streaming route checks the same way, before it starts streaming
    status, answer = call(serve_url, "/api/generate/stream", None if raw else body, raw=raw)
    _assert_field_error(status, answer, status_expected, field, *fragments)
    status, answer = call(serve_url, "/api/generate", {"title": "春", "seed": 1, "max_new_tokens": 4})
    assert status == 200 and len(answer["poems"]) == 1


def test_unknown_routes_and_methods_answer_json(serve_url):
    status, answer = call(serve_url, "/api/nothing")
    assert status == 404 and "/api/nothing" in answer["error"]
    status, answer = call(serve_url, "/api/generate")  # GET
    assert status == 405 and "GET" in answer["error"]
    status, answer = call(serve_url, "/../../etc/passwd")
    assert status == 404


def test_streaming_sends_characters_as_they_are_drawn(serve_url):
    body = {"title": "秋月", "n": 2, "seed": 11, "form": "七绝"}
    status, events = call(serve_url, "/api/generate/stream", body)
    assert status == 200
    assert events[0]["type"] == "start" and [p["seed"] for p in events[0]["poems"]] == [11, 12]
    assert events[-1]["type"] == "done"
    plain = texts(call(serve_url, "/api/generate", body)[1])
    for i, expected in enumerate(plain):
        chunks = [e["text"] for e in events if e["type"] == "chars" and e["index"] == i]
        # a 七绝 body is 32 characters: the sampler hands them over in several pieces
        assert len(chunks) >= 3, chunks
        assert events[0]["poems"][i]["prompt"] + "".join(chunks) == expected
        (final,) = [e for e in events if e["type"] == "poem" and e["index"] == i]
        assert final["text"] == expected


def test_a_request_gets_the_same_poems_alone_and_batched(serve_url):
    target = {"openings": ["春花"], "title": "江夜", "n": 2, "seed": 21, "max_new_tokens": 30}
    status, alone = call(serve_url, "/api/generate", target)
    assert status == 200
    # batch mates with other prompts, seeds and budgets, sent at the same moment; one with other sampling
    # options, which must not share the target's batch (the sampler takes those options once per batch)
    others = [{"openings": ["秋"], "n": 1, "seed": 900}, {"title": "山水", "n": 1, "seed": 901},
              {"title": "山水", "n": 1, "seed": 902, "temperature": 0.5, "top_k": 3}]
    requests = [target, *others]
    barrier = threading.Barrier(len(requests))

    def send(body):
        barrier.wait()
        return call(serve_url, "/api/generate", body)

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(send, requests))
    assert all(status == 200 for status, _ in results), results
    batched = results[0][1]
    assert batched["timings"]["batch_poems"] > 2, batched["timings"]  # it really shared its batch
    assert texts(batched) == texts(alone)
    for (_, answer), body in zip(results[1:], others):
        assert texts(answer) == texts(call(serve_url, "/api/generate", body)[1])


def test_a_full_queue_answers_503_and_the_server_recovers(serve_url):
    n = 2 * SERVE_MAX_QUEUE + 4
    barrier = threading.Barrier(n)

    def send(i):
        barrier.wait()
        return call(serve_url, "/api/generate", {"title": "春", "n": SERVE_MAX_BATCH, "seed": i})

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(send, range(n)))
    statuses = sorted(status for status, _ in results)
    assert set(statuses) == {200, 503}, statuses
    for status, answer in results:
        if status == 503:
            assert "busy" in answer["error"], answer
    assert call(serve_url, "/api/generate", {"title": "春", "seed": 1})[0] == 200


# ------------------------------------------------------------------ the batcher, without a model
class FakePlan:
    def __init__(self, rows, key="k"):
        self.rows, self.key, self.config, self.tables = list(rows), key, {}, None


class FakeGenerator:
    """Records the batches it decodes; a sample is the row itself."""

    def __init__(self):
        self.calls: list[list] = []
        self.release = threading.Event()

    def decode(self, rows, sampling, tables, batch_size, on_tokens=None):
        self.release.wait(10)
        self.calls.append(list(rows))
        return list(rows)


def test_warm_up_compiles_only_the_batch_sizes_the_server_uses(tiny_run):
    """Each compiled batch size keeps tens of MB: the server compiles powers of 8 (16, 8, 1 here, largest
    first), and a request of any size afterwards reuses one of them."""
    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.serve.app import warm_up

    gen = PoemGenerator(tiny_run)
    lines, plan = [], gen.plan
    gen.plan = lambda *args, **kwargs: (kwargs.get("rhyme") and lines.append("rhyme")) or plan(*args, **kwargs)
    warm_up(gen, 16, echo=lines.append)
    # the rhyme readings and form tables last: under a compile they would raise its peak memory
    assert lines.pop() == "rhyme" and "rhyme" not in lines
    assert gen.sampler.traces["decode"] == 3
    # the largest first: its compile's scratch memory then sits on top of no other program (lower peak RSS)
    assert [int(line.split()[2]) for line in lines] == [16, 8, 1]
    for n in (2, 5, 9, 16):
        gen.generate(None, num_samples=n, batch_size=16, seed=0, max_new_tokens=2)
    assert gen.sampler.traces["decode"] == 3


def test_the_server_compiles_before_it_makes_the_app(monkeypatch):
    """``compiled_app`` warms up first: the app's tables made under the compiles would raise the peak memory."""
    from poetry_gpt.serve import app as app_module

    calls = []
    monkeypatch.setattr(app_module, "warm_up", lambda gen, max_batch, echo=None: calls.append(("warm_up", max_batch)))
    monkeypatch.setattr(app_module, "create_app", lambda gen, run_dir, limits, window: calls.append(("app", window)))
    app_module.compiled_app("gen", "run", app_module.Limits(max_batch=16), 0.01)
    assert calls == [("warm_up", 16), ("app", 0.01)]


def test_batcher_groups_by_options_caps_batches_and_queue():
    from poetry_gpt.serve.batcher import Batcher, QueueFull

    gen = FakeGenerator()
    batcher = Batcher(gen, max_batch=4, window=0.05, max_queue=3)
    blocker = batcher.submit(FakePlan(["x"], key="first"))  # occupies the worker until released
    batcher.start()
    import time
    deadline = time.monotonic() + 10
    while not batcher.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    futures = [batcher.submit(FakePlan(["a1", "a2"], key="A")), batcher.submit(FakePlan(["b1"], key="B")),
               batcher.submit(FakePlan(["a3", "a4", "a5"], key="A"))]
    with pytest.raises(QueueFull, match="busy"):
        batcher.submit(FakePlan(["c"]))
    gen.release.set()
    assert blocker.result(10) == ["x"]
    assert [f.result(10) for f in futures] == [["a1", "a2"], ["b1"], ["a3", "a4", "a5"]]
    batcher.stop()
    # the first batch of A could not take a3-a5 (2 + 3 > max_batch 4); B never shares with A
    assert gen.calls == [["x"], ["a1", "a2"], ["b1"], ["a3", "a4", "a5"]]


def test_a_batch_starts_a_window_after_the_latest_arrival_at_most_max_windows_after_the_first():
    from poetry_gpt.serve.batcher import MAX_WINDOWS, start_time

    cap = 10.0 + MAX_WINDOWS * 0.005
    # as many poems wait as the last batch had: a quiet gap of one window after the latest arrival
    assert start_time(10.0, 10.0, 9.0, True, 0.005) == pytest.approx(10.005)  # a lone request waits one window
    assert start_time(10.0, 10.03, 9.0, True, 0.005) == pytest.approx(10.035)  # each arrival extends the wait
    assert start_time(10.0, 10.5, 9.0, True, 0.005) == pytest.approx(cap)  # up to the cap
    assert start_time(10.0, 10.0, 9.0, True, 0.0) == 10.0  # --window-ms 0: at once
    # requests that queued while the last batch ran: the gap and the cap count from when the worker became free
    assert start_time(9.0, 9.5, 10.0, True, 0.005) == pytest.approx(10.005)
    # fewer than the last batch had: wait for the rest, up to the cap
    assert start_time(10.0, 10.0, 9.0, False, 0.005) == pytest.approx(cap)
    assert start_time(9.0, 9.5, 10.0, False, 0.005) == pytest.approx(cap)


def _spread_requests(count: int, gap: float, max_batch: int, window: float):
    """``count`` one-poem requests ``gap`` seconds apart through a ``Batcher`` of a ``FakeGenerator``;
    checks each got its own poem and returns ``(generator, batcher)`` after stopping it."""
    import time

    from poetry_gpt.serve.batcher import Batcher

    gen = FakeGenerator()
    gen.release.set()
    batcher = Batcher(gen, max_batch=max_batch, window=window, max_queue=count)
    batcher.start()
    futures = []
    for i in range(count):
        futures.append(batcher.submit(FakePlan([f"r{i}"])))
        time.sleep(gap)
    assert [f.result(10) for f in futures] == [[f"r{i}"] for i in range(count)]
    batcher.stop()
    return gen, batcher


def test_batcher_gathers_a_burst_spread_over_more_than_one_window():
    """Five requests 50 ms apart (200 ms in all) with a 200 ms quiet gap: one batch, not five."""
    gen, batcher = _spread_requests(5, 0.05, max_batch=8, window=0.2)
    assert gen.calls == [[f"r{i}" for i in range(5)]]
    assert batcher.summary() == "5 requests, 5 poems in 1 batches (batches × poems: 1×5)"


def test_batcher_starts_at_the_cap_while_requests_keep_coming():
    """Requests every 10 ms for 3 s never leave a 100 ms quiet gap: the first batch starts at the cap
    (20 windows, 2 s), with part of them."""
    gen, _ = _spread_requests(300, 0.01, max_batch=1024, window=0.1)
    assert 1 < len(gen.calls[0]) < 300, [len(c) for c in gen.calls]
    assert sum(len(c) for c in gen.calls) == 300


def test_batcher_waits_for_as_many_poems_as_its_last_batch_had():
    """Closed-loop clients: after a batch of four, two requests and then two more 0.3 s later (longer than
    the 50 ms window, within the 1 s cap) make one batch of four, not a batch of two and one of two."""
    import time

    from poetry_gpt.serve.batcher import Batcher

    gen = FakeGenerator()
    gen.release.set()
    batcher = Batcher(gen, max_batch=8, window=0.05, max_queue=16)
    first = [batcher.submit(FakePlan([f"a{i}"])) for i in range(4)]
    batcher.start()
    assert [f.result(10) for f in first] == [[f"a{i}"] for i in range(4)]
    second = [batcher.submit(FakePlan([f"b{i}"])) for i in range(2)]
    time.sleep(0.3)
    second += [batcher.submit(FakePlan([f"b{i}"])) for i in range(2, 4)]
    assert [f.result(10) for f in second] == [[f"b{i}"] for i in range(4)]
    batcher.stop()
    assert gen.calls == [[f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]]
