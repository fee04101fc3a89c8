"""The ``dicomnode`` command line (Typer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from node.config import Settings, load_settings
from node.errors import ConfigError
from node.logging import configure_logging

app = typer.Typer(
    help="dicomnode: a DICOM inference node measuring left-ventricle volumes in cardiac MR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else $DICOMNODE_CONFIG).", show_default=False),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as error:
        for line in str(error).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the DICOM listener (and the node's workers) until SIGTERM or Ctrl-C."""
    from node.app import Node

    settings = _settings(config)
    configure_logging(settings.logging)
    Node.build(settings).run_until_signalled()


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the settings and print the effective values (exit status 2 when invalid)."""
    settings = _settings(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


@app.command()
def echo(
    host: Annotated[str, typer.Argument(help="Peer host.")],
    port: Annotated[int, typer.Argument(help="Peer port.")],
    aet: Annotated[str, typer.Option("--aet", help="Calling AE title.")] = "DICOMNODE",
    aec: Annotated[str, typer.Option("--aec", help="Called AE title.")] = "ANY-SCP",
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 10.0,
) -> None:
    """Send a C-ECHO to a DICOM peer (exit status 0 on Success)."""
    from node.dicom.scu import AssociationFailed
    from node.dicom.scu import echo as send_echo

    try:
        status = send_echo(host, port, aet, aec, timeout)
    except AssociationFailed as error:
        typer.echo(f"echo failed: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"C-ECHO status 0x{int(status):04X} ({status.name})")
    raise typer.Exit(0 if status.is_success else 1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
