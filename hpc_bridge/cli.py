"""The `hpc-bridge` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console

from hpc_bridge.config import ConfigError, SiteConfig, load_config

err = Console(stderr=True)

_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    envvar="HPC_BRIDGE_CONFIG", default="site_config/dev.yaml", show_default=True,
    help="Site configuration file (env: HPC_BRIDGE_CONFIG).",
)


def _load(config_path: Path) -> SiteConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


@click.group()
@click.version_option(package_name="hpc-bridge")
def main() -> None:
    """GA4GH TES/WES on Slurm, executors in Apptainer."""


@main.command()
@_CONFIG_OPTION
@click.option("--host", help="Listen address (default: server.host of the config).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default: server.port).")
def serve(config_path: Path, host: str | None, port: int | None) -> None:
    """Run the API (waitress) and, if no other daemon holds this database, the daemon loop."""
    import threading

    import waitress

    from hpc_bridge.app import create_app
    from hpc_bridge.daemon import Daemon, DaemonLock
    from hpc_bridge.slurm.client import CliSlurmClient
    from hpc_bridge.store import Store

    config = _load(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(config.database)
    lock = DaemonLock(config.database)
    daemon = Daemon(config, store, CliSlurmClient(bin_dir=config.slurm.bin_dir,
                                                  submit_as=config.slurm.submit_as,
                                                  timeout=config.slurm.command_timeout))
    if lock.acquire():
        threading.Thread(target=daemon.run, name="hpc-bridge-daemon", daemon=True).start()
    else:
        err.print(f"another daemon holds {lock.path}: serving the API only", highlight=False)
    host = host or config.server.host
    port = port or config.server.port
    err.print(f"hpc-bridge serving [bold]http://{host}:{port}/ga4gh/tes/v1[/bold] "
              f"(config {config_path}, database {config.database})", highlight=False)
    try:
        waitress.serve(create_app(config, store=store, on_change=daemon.wake), host=host, port=port,
                       threads=config.server.threads, ident="hpc-bridge")
    finally:
        daemon.stop()
        lock.release()


@main.group()
def config() -> None:
    """Inspect the site configuration."""


@config.command("check")
@_CONFIG_OPTION
def config_check(config_path: Path) -> None:
    """Validate the site config and print it with every default filled in."""
    cfg = _load(config_path)
    click.echo(cfg.model_dump_json(indent=2))
