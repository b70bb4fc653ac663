"""The HTTP API and the page: a Starlette app around one ``PoemGenerator`` and its ``Batcher``.

Routes:

* ``GET /`` — the page (``page/index.html``, self-contained: no CDN, works offline);
* ``GET /api/info`` — model facts, the forms it can constrain to, sampling defaults, limits;
* ``POST /api/generate`` — JSON in, JSON out (poems in corpus style, closed flags, seeds, timings);
* ``POST /api/generate/stream`` — the same request; the answer is JSON lines (``application/x-ndjson``):
  ``start`` (the poems' seeds and prompts), ``chars`` (new characters of one poem, as they are drawn),
  ``poem`` (a finished poem), then ``done`` (timings) or ``error``.

Requests are checked in two steps: their JSON shape here (``parse_request``: unknown fields, types,
the server's caps), then every value by ``PoemGenerator.plan`` — the same checks and messages as
``poetry-gpt generate``. Errors are ``{"error": message, "field": name}`` with status 400 (413 for a
too-large body, 503 when the queue is full). No file name or path ever comes from a request, and
nothing is written anywhere.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import OptionError, PoetryGPTError
from ..generate.planning import FORM_NAMES
from ..sampling import SamplingConfig
from ..verse import forms
from .batcher import Batcher, QueueFull

#: an oversized body up to this size is read and dropped before the 413 (see ``Service.read_body``)
DRAIN_BYTES = 4 << 20

@dataclass
class Limits:
    """The server's caps on a request.

    Args:
        max_n: poems per opening (``n``).
        max_poems: poems per request (openings × n).
        max_body: request body bytes.
        max_queue: requests waiting for the model (then 503).
        max_batch: poems decoded together.
    """

    max_n: int = 16
    max_poems: int = 32
    max_body: int = 16 * 1024
    max_queue: int = 64
    max_batch: int = 32


class RequestError(PoetryGPTError):
    """A request the API refuses: ``status`` and the ``field`` it concerns (None for the whole body)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


# field -> (accepted JSON types, default); "n" is generate's num_samples; the defaults are SamplingConfig's
_STR, _INT, _NUM, _BOOL = (str,), (int,), (int, float), (bool,)
_D = SamplingConfig()
FIELDS = {
    "openings": ((list, str), None), "title": (_STR, None), "genre": (_STR, None), "form": (_STR, _D.form),
    "strict": (_BOOL, _D.strict), "leniency": (_STR, _D.leniency), "acrostic": (_STR, _D.acrostic),
    "rhyme": (_BOOL, _D.rhyme), "rhyme_book": (_STR, _D.rhyme_book),
    "n": (_INT, _D.num_samples), "seed": (_INT, _D.seed), "top_k": (_INT, _D.top_k), "top_p": (_NUM, _D.top_p),
    "min_p": (_NUM, _D.min_p), "temperature": (_NUM, _D.temperature),
    "repetition_penalty": (_NUM, _D.repetition_penalty), "max_new_tokens": (_INT, _D.max_new_tokens),
}
_TYPE_NAMES = {_STR: "a string", _INT: "an integer", _NUM: "a number", _BOOL: "true or false",
               (list, str): "a string or a list of strings"}
# the option a library message starts with -> the API field it concerns
_OPTION_FIELDS = {"--top-k": "top_k", "--top-p": "top_p", "--min-p": "min_p", "--temperature": "temperature",
                  "--repetition-penalty": "repetition_penalty", "--num-samples": "n",
                  "--max-new-tokens": "max_new_tokens", "--form": "form", "--acrostic": "acrostic",
                  "--rhyme": "rhyme", "--title": "title", "--genre": "genre", "opening": "openings",
                  "--opening": "openings", "--strict": "strict", "--leniency": "leniency",
                  "--rhyme-book": "rhyme_book"}
MAX_SEED = 2**31 - 2


def capabilities(generator) -> dict:
    """What the model and this version can constrain to, beyond the four forms.

    ``strict`` (格律 tone patterns) needs the 平水韵 table and a vocabulary it knows
    (``PoemGenerator.strict_supported``); the 词牌 are those the model's corpus recorded
    (``PoemGenerator.cipai``); the page shows them only when this reports them.

    Args:
        generator: a ``PoemGenerator``.
    """
    cipai = getattr(generator, "cipai", None) or getattr(forms, "CIPAI", None) or {}
    return {"strict": bool(getattr(generator, "strict_supported", False)),
            "cipai": sorted(cipai), "tones": callable(getattr(forms, "tone_marks", None))}


def model_info(generator, run_dir, limits: Limits) -> dict:
    """The facts ``GET /api/info`` reports.

    Args:
        generator: a ``PoemGenerator``.
        run_dir: the RUN_DIR or export folder it was loaded from.
        limits: the server's caps.
    """
    from ..model.gpt2 import count_parameters
    from ..run_dir import RunDir

    run = RunDir(Path(run_dir))
    preset = run.read_run().get("config", {}).get("preset") if run.exists() else None
    meta = generator.export.meta
    caps = capabilities(generator)
    return {"model": {"preset": preset, "parameters": count_parameters(generator.model),
                      "vocab_size": generator.vocab.size, "genre": generator.genre,
                      "genres": meta.get("genres") or {}, "context": generator.n_ctx,
                      "training_step": meta.get("global_step"), "export": generator.export.path.name},
            "forms": list(FORM_NAMES), "strict": caps["strict"], "cipai": caps["cipai"], "tones": caps["tones"],
            "defaults": {**{k: default for k, (_, default) in FIELDS.items()}, "genre": generator.genre},
            "limits": {"n": limits.max_n, "poems": limits.max_poems, "body_bytes": limits.max_body,
                       "max_new_tokens": generator.n_ctx - 2, "queue": limits.max_queue}}


def _check_type(name: str, value) -> None:
    types, default = FIELDS[name]
    if value is None and (default is None or name == "openings"):
        return
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise RequestError(f"{name}: must be {_TYPE_NAMES[types]}, got {json.dumps(value, ensure_ascii=False)[:40]}",
                           name)
    if name == "openings" and isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise RequestError("openings: must be a string or a list of strings", name)


def parse_request(body: bytes, limits: Limits, strict_supported: bool) -> dict:
    """Turn a request body into ``PoemGenerator.plan`` arguments (shape, types and caps only).

    Args:
        body: the raw request body.
        limits: the server's caps.
        strict_supported: whether ``plan`` takes ``strict``.

    Raises:
        RequestError: not JSON, not an object, an unknown field, a wrong type, or over a cap.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"body: not valid JSON ({exc}); send an object such as "
                           '{"openings": ["春眠不觉晓"], "n": 2}') from None
    if not isinstance(data, dict):
        raise RequestError("body: must be a JSON object such as {\"openings\": [\"春眠不觉晓\"]}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown field; the fields are {', '.join(FIELDS)}", unknown[0])
    for name, value in data.items():
        _check_type(name, value)
    values = {name: data.get(name, default) for name, (_, default) in FIELDS.items()}
    openings = values.pop("openings")
    openings = [openings] if isinstance(openings, str) else list(openings or [])
    n = values.pop("n")
    if not 1 <= n <= limits.max_n:
        raise RequestError(f"n: must be between 1 and {limits.max_n} (this server's limit), got {n}", "n")
    if n * max(len(openings), 1) > limits.max_poems:
        raise RequestError(f"openings: {len(openings)} openings × n {n} is more than the {limits.max_poems} "
                           "poems a request may ask for", "openings")
    if values["seed"] is not None and not 0 <= values["seed"] <= MAX_SEED:
        raise RequestError(f"seed: must be between 0 and {MAX_SEED}, got {values['seed']}", "seed")
    if values["strict"] and not strict_supported:
        raise RequestError("strict: this model and version have no 格律 (tone pattern) data; leave strict off",
                           "strict")
    if not strict_supported:
        values.pop("strict")
    for name in ("title", "genre", "form", "acrostic"):
        if isinstance(values[name], str) and not values[name].strip():
            values[name] = None
    return {"openings": openings, "num_samples": n, **values}


def error_field(message: str) -> str | None:
    """The API field a library ``OptionError`` message concerns (it starts with the option's name)."""
    match = re.match(r"(--[a-z-]+|opening)", message)
    return _OPTION_FIELDS.get(match.group(1)) if match else None


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, RequestError):
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)
    if isinstance(exc, QueueFull):
        return JSONResponse({"error": str(exc), "field": None}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"error": str(exc), "field": error_field(str(exc))}, status_code=400)


def _poem(sample, index: int) -> dict:
    """A sample as the API returns it; with ``tones`` (平/仄/"" per body character) and ``rhymes`` (their
    indices) when ``forms.tone_marks(body) -> (tones, rhymes)`` exists (the 格律 data)."""
    poem = {"index": index, "text": sample.text, "prompt": sample.prompt, "body": sample.body,
            "closed": sample.closed, "tokens": sample.tokens, "seed": sample.seed}
    tone_marks = getattr(forms, "tone_marks", None)
    if callable(tone_marks):
        poem["tones"], poem["rhymes"] = tone_marks(sample.body)
    return poem


def _timings(job, t0: float) -> dict:
    now = time.perf_counter()
    return {"queued_ms": round((job.started - job.submitted) * 1000, 1),
            "decode_ms": round((now - job.started) * 1000, 1), "total_ms": round((now - t0) * 1000, 1),
            "batch_poems": job.batch_poems}


class PoemService:
    """The routes' state: the generator, its batcher and the limits.

    Args:
        generator: a loaded ``PoemGenerator``.
        run_dir: where it was loaded from (for ``/api/info``).
        limits: the caps.
        window: the batcher's quiet gap in seconds (``Batcher``).
    """

    def __init__(self, generator, run_dir, limits: Limits, window: float):
        self.generator, self.limits = generator, limits
        self.batcher = Batcher(generator, max_batch=limits.max_batch, window=window, max_queue=limits.max_queue)
        self.info = model_info(generator, run_dir, limits)
        self.page = resources.files(__package__).joinpath("page/index.html").read_text(encoding="utf-8")

    async def read_body(self, request: Request) -> bytes:
        """The body, refused (413) past ``max_body`` bytes.

        An oversized body of up to ``DRAIN_BYTES`` is read to its end and dropped before the answer:
        a client still sending when the server answers and closes would get a broken pipe instead of
        the 413 and its message. A larger one is refused without reading it.
        """
        declared = request.headers.get("content-length", "")
        too_big = RequestError(f"body: larger than this server's {self.limits.max_body} bytes", status=413)
        if declared.isdigit() and int(declared) > max(self.limits.max_body, DRAIN_BYTES):
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_BYTES:
                raise too_big
            if size <= self.limits.max_body:
                chunks.append(chunk)
        if size > self.limits.max_body:
            raise too_big
        return b"".join(chunks)

    async def plan(self, request: Request):
        """Read, parse and check a generate request; returns ``(arguments, plan)``."""
        values = parse_request(await self.read_body(request), self.limits, self.info["strict"])
        return values, self.generator.plan(**values)

    # routes ------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def api_info(self, request: Request) -> Response:
        return JSONResponse(self.info)

    async def generate(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            values, plan = await self.plan(request)
            future = self.batcher.submit(plan)
            samples = await asyncio.wrap_future(future)
        except (PoetryGPTError, OptionError) as exc:
            return _error(exc)
        return JSONResponse({"poems": [_poem(s, i) for i, s in enumerate(samples)],
                             "timings": _timings(future.job, t0), "options": _options(values, self.generator)})

    async def generate_stream(self, request: Request) -> Response:
        t0 = time.perf_counter()
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            values, plan = await self.plan(request)
            prompts = [row.prompt for row in plan.rows]
            sent = list(prompts)

            def on_tokens(row: int, ids: list) -> None:  # worker thread
                text = self.generator.text_of(prompts[row], ids)
                if len(text) > len(sent[row]):
                    loop.call_soon_threadsafe(events.put_nowait,
                                              {"type": "chars", "index": row, "text": text[len(sent[row]):]})
                    sent[row] = text

            future = self.batcher.submit(plan, on_tokens)
        except (PoetryGPTError, OptionError) as exc:
            return _error(exc)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, None))
        start = {"type": "start", "options": _options(values, self.generator),
                 "poems": [{"index": i, "seed": r.seed, "prompt": r.prompt} for i, r in enumerate(plan.rows)]}
        return StreamingResponse(self._events(start, events, future, t0), media_type="application/x-ndjson")

    @staticmethod
    async def _events(start: dict, events: asyncio.Queue, future, t0: float):
        yield _line(start)
        while (event := await events.get()) is not None:
            yield _line(event)
        while not events.empty():
            event = events.get_nowait()
            if event is not None:
                yield _line(event)
        if future.exception() is not None:
            yield _line({"type": "error", "error": str(future.exception())})
            return
        for i, sample in enumerate(future.result()):
            yield _line({"type": "poem", **_poem(sample, i)})
        yield _line({"type": "done", "timings": _timings(future.job, t0)})


def _line(event: dict) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")


def _options(values: dict, generator) -> dict:
    """The request's effective options (defaults filled in), as the API names them."""
    out = {("n" if k == "num_samples" else k): v for k, v in values.items()}
    return {**out, "genre": values.get("genre") or generator.genre}


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}", "field": None},
                        status_code=exc.status_code)


#: the server's batch sizes are powers of this up to ``--max-batch`` (1, 8, 32): each compiled size keeps
#: tens of MB of programs, so fewer sizes keep the server's memory down, at the cost of more padding rows
SERVE_BATCH_BASE = 8


def warm_up(generator, max_batch: int, echo: Callable[[str], None] | None = None) -> None:
    """Set the batch sizes the batcher uses (powers of ``SERVE_BATCH_BASE`` up to ``max_batch``) and compile them.

    The largest first: compiling a program holds the compiler's scratch memory on top of every program already
    compiled, and the largest needs the most, so the server's peak memory is lowest in this order. The rhyme
    readings and a form's tables (about 35 MB at the ``small`` shape) are loaded after the compiles, for the same
    reason. Prompts longer than 15 characters and top-k above 64 compile their programs on first use.

    Args:
        generator: a ``PoemGenerator``.
        max_batch: the largest batch.
        echo: progress lines go here (None: silent).
    """
    from ..generate.decoders import batch_sizes

    generator.decoders["compiled"].batch_base = SERVE_BATCH_BASE
    for rows in reversed(batch_sizes(max_batch, SERVE_BATCH_BASE)):
        t0 = time.perf_counter()
        generator.generate(None, num_samples=rows, batch_size=rows, seed=0, max_new_tokens=2)
        if echo is not None:
            echo(f"compiled batch {rows} in {time.perf_counter() - t0:.1f} s")
    try:  # after the compiles: the tone table and form tables would otherwise sit under each compile's peak
        generator.plan(None, form=FORM_NAMES[0], rhyme=True)  # loads the rhyme readings once
    except OptionError:
        pass  # a vocabulary without rhyming characters: the request will say so


def compiled_app(generator, run_dir, limits: Limits, window: float,
                 echo: Callable[[str], None] | None = None) -> Starlette:
    """``warm_up``, then ``create_app``: the server's start-up, in the order that keeps its peak memory lowest
    (the app's model facts and tables made under the compiles raised the peak by about 25 MB).

    Args:
        generator: a loaded ``PoemGenerator``.
        run_dir: the RUN_DIR or export folder it came from.
        limits: the caps (``limits.max_batch``: the largest batch compiled).
        window: the batcher's quiet gap in seconds.
        echo: progress lines go here (None: silent).
    """
    warm_up(generator, limits.max_batch, echo=echo)
    return create_app(generator, run_dir, limits, window=window)


def create_app(generator, run_dir, limits: Limits | None = None, window: float = 0.005) -> Starlette:
    """The ASGI app; its lifespan starts and stops the batcher's worker thread.

    Args:
        generator: a loaded (and preferably warmed-up) ``PoemGenerator``.
        run_dir: the RUN_DIR or export folder it came from.
        limits: the caps (defaults: ``Limits()``).
        window: the batcher's quiet gap in seconds (``Batcher``).
    """
    from contextlib import asynccontextmanager

    service = PoemService(generator, run_dir, limits or Limits(), window)

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        try:
            yield
        finally:
            service.batcher.stop()

    routes = [Route("/", service.index), Route("/api/info", service.api_info),
              Route("/api/generate", service.generate, methods=["POST"]),
              Route("/api/generate/stream", service.generate_stream, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.service = service
    return app
