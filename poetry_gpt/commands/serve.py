"""``poetry-gpt serve``: the local web page and HTTP API (``poetry_gpt.serve``)."""
from __future__ import annotations

import ipaddress

import click

from ..errors import EnvironmentProblem


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_serve_extra():
    """Import uvicorn (and so Starlette's stack) or explain how to install it."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise EnvironmentProblem(f"serve needs the web server packages ({exc.name} is missing): "
                                 "pip install -e '.[serve]'  (or: pip install 'poetry_gpt[serve]')") from None
    return uvicorn


@click.command("serve")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=str),
              help="RUN_DIR written by `poetry-gpt train` (uses its export/), or an export folder.")
@click.option("--checkpoint", default=None,
              help="Use this training checkpoint of RUN_DIR instead of export/: latest, a step, or ckpt-N.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but a loopback address lets other machines in (no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0 = any free port; the URL printed at start says which).")
@click.option("--max-batch", type=click.IntRange(1, 256), default=32, show_default=True,
              help="Poems decoded together at most (concurrent requests share batches).")
@click.option("--window-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True,
              help="Once as many poems wait as the last batch had, a batch starts after this many milliseconds "
                   "without a new request (at the latest 20 windows after the worker became free).")
@click.option("--max-n", type=click.IntRange(1, 256), default=16, show_default=True, help="Largest n of a request.")
@click.option("--max-queue", type=click.IntRange(1, 100000), default=64, show_default=True,
              help="Requests waiting at most; more are answered 503.")
def serve_cmd(run_dir, checkpoint, host, port, max_batch, window_ms, max_n, max_queue):
    """Serve a web page and an HTTP API that write poems with the model of RUN_DIR.

    \b
    GET  /                      the page (works offline)
    GET  /api/info              model facts, forms, defaults, limits
    POST /api/generate          JSON in, poems out
    POST /api/generate/stream   the same, as JSON lines while the poems are written
    Ctrl-C stops the server. Nothing is written to RUN_DIR.
    """
    uvicorn = _require_serve_extra()
    from ..serve.app import Limits, compiled_app
    from .generate import _load

    if not _is_loopback(host):
        click.echo(f"warning: listening on {host}: every machine that can reach it can use this server "
                   "(no login, no encryption); use --host 127.0.0.1 to keep it local", err=True)
    gen = _load(run_dir, checkpoint)
    click.echo(f"model {gen.export.path} (context {gen.n_ctx}, vocabulary {gen.vocab.size}, "
               f"genre {gen.genre or '?'}); compiling ...", err=True)
    limits = Limits(max_n=max_n, max_poems=max(max_n, max_batch), max_queue=max_queue, max_batch=max_batch)
    app = compiled_app(gen, run_dir, limits, window_ms / 1000, echo=lambda line: click.echo("  " + line, err=True))

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()
                shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                click.echo(f"ready: http://{shown}:{bound[1]}/  (Ctrl-C stops)", err=True)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, server_header=False)
    try:
        Server(config).run()
    except KeyboardInterrupt:  # uvicorn shuts down, then re-raises the Ctrl-C it caught
        pass
    click.echo(f"stopped: {app.state.service.batcher.summary()}.", err=True)
