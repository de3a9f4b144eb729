"""`timetodo serve`: the API under uvicorn (pending migrations applied first); with several workers, one listening
socket per worker in a `SO_REUSEPORT` group by default (`timetodo.cli.reuseport`)."""

from __future__ import annotations

import os
import shutil
from typing import Annotated, Any

import typer

from timetodo import __version__
from timetodo.cli import reuseport
from timetodo.cli.common import err_console, fail, load_settings, run_sync

app = typer.Typer()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    migrate: Annotated[bool, typer.Option(help="Apply pending migrations before serving.")] = True,
    reuse_port: Annotated[
        bool,
        typer.Option(
            "--reuse-port/--shared-socket",
            help="With several workers: a listening socket per worker (SO_REUSEPORT, the kernel spreads connections "
            "evenly), or uvicorn's one shared socket.",
        ),
    ] = True,
) -> None:
    """Serve the API (applies pending migrations first unless --no-migrate).

    Example: timetodo serve --host 0.0.0.0 --port 8000 --workers 4
    """
    settings = load_settings()
    if problem := settings.serving_problem(host):
        fail(problem)
    from timetodo.core.logging import configure_logging

    configure_logging(settings.LOG_LEVEL, settings.LOG_FILE)
    if migrate:
        from timetodo.core.schema import upgrade

        run_sync(lambda: upgrade(settings.DATABASE_URL))
    if workers > 1:
        prom_dir = settings.DATA_DIR / "prometheus"
        shutil.rmtree(prom_dir, ignore_errors=True)
        prom_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir.resolve())
    import uvicorn

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    err_console.print(f"Time to DO {__version__}: API docs at http://{shown}:{port}/docs", highlight=False)
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "loop": "uvloop",
        "http": "httptools",
        "proxy_headers": True,
        "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS,
        "timeout_graceful_shutdown": settings.GRACEFUL_SHUTDOWN_SECONDS,
        # a worker answers the supervisor's pings only once the app is imported (≈ 1 s idle, > 5 s — uvicorn's
        # default — on a busy 2-core host, where every worker was then killed and restarted forever)
        "timeout_worker_healthcheck": 60,
        "access_log": False,
        "log_config": None,
        "server_header": False,
    }
    app = "timetodo.main:create_app_from_env"
    if workers > 1 and reuse_port and reuseport.available():
        try:
            supervisor = reuseport.ReusePortMultiprocess(uvicorn.Config(app, **options))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc}")
        supervisor.run()
        return
    uvicorn.run(app, **options)
