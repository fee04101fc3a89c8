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


@app.command()
def measure(
    paths: Annotated[
        list[Path], typer.Argument(help="DICOM files or folders (searched recursively).", exists=True)
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array, one object per stack.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Measure every short-axis cine stack in files or folders, offline (exit 1 when none is found)."""
    import sys

    from node.inference.runner import load_segmenter
    from node.pipeline.measure import StackMeasurer
    from node.pipeline.offline import measure_paths

    settings = _settings(config)
    configure_logging(settings.logging)
    measurer = StackMeasurer(load_segmenter(settings.inference))
    if sys.stderr.isatty():
        with typer.progressbar(length=1, label="measuring", file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                bar.length = total
                bar.update(1)

            run = measure_paths(paths, measurer, progress)
    else:
        run = measure_paths(paths, measurer)
    for path, reason in run.unreadable:
        typer.echo(f"skipped {path}: {reason}", err=True)
    for series, reason in run.failed_stacks:
        typer.echo(f"stack of {len(series)} series not measured: {reason}", err=True)
    if run.studies_without_stack:
        typer.echo(f"{len(run.studies_without_stack)} study(ies): no short-axis cine found", err=True)
    if as_json:
        typer.echo(json.dumps([result.to_json() for result in run.results], indent=2))
    else:
        _print_table([result.to_json() for result in run.results])
    raise typer.Exit(0 if run.results else 1)


def _print_table(rows: list[dict[str, object]]) -> None:
    header = (
        f"{'stack':>5} {'slices x phases':>15} {'EDV mL':>7} {'ESV mL':>7} {'EF %':>5} {'SV mL':>6} "
        f"{'mass g':>6} {'ED':>3} {'ES':>3} {'conf':>5}  QC flags"
    )
    typer.echo(header)
    for number, row in enumerate(rows, start=1):
        flags = row["qc_flags"]
        typer.echo(
            f"{number:>5} {str(row['slices']) + ' x ' + str(row['phases']):>15} {row['edv_ml']:>7} "
            f"{row['esv_ml']:>7} {row['ef_pct']:>5} {row['sv_ml']:>6} {row['lv_mass_g']:>6} "
            f"{row['ed_phase']:>3} {row['es_phase']:>3} {row['confidence']:>5}  "
            f"{', '.join(flags) if isinstance(flags, list) and flags else '-'}"
        )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
