"""The ``dicomnode`` command line (Typer)."""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from node.config import Settings, load_settings, unknown_variables
from node.dicom.names import readable_name
from node.dicom.status import Status
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


#: Set by ``-v``: console commands (all but ``serve``) then log at the configured level, not WARNING.
_VERBOSE = {"on": False}


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Console commands log at the configured level too.")
    ] = False,
) -> None:
    """dicomnode: a DICOM inference node measuring left-ventricle volumes in cardiac MR."""
    _VERBOSE["on"] = verbose


def _console_logging(settings: Settings) -> None:
    """Logging of a console command: WARNING and above on stderr unless ``-v`` (its output is the answer)."""
    level = settings.logging.level
    if not _VERBOSE["on"] and level in ("DEBUG", "INFO"):
        level = "WARNING"
    configure_logging(settings.logging.model_copy(update={"level": level}))


def _config_error(error: ConfigError) -> typer.Exit:
    """Print a configuration error one line per problem; the exit (status 2) to raise."""
    for line in str(error).splitlines():
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(2)


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as error:
        raise _config_error(error) from None
    for warning in unknown_variables():
        typer.echo(f"warning: {warning}", err=True)
    return settings


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the DICOM listener (and the node's workers) until SIGTERM or Ctrl-C."""
    from node import preflight
    from node.app import Node

    settings = _settings(config)
    taken = preflight.ports(settings)
    if taken:
        raise _config_error(ConfigError("\n".join(taken)))
    configure_logging(settings.logging)
    try:
        node = Node.build(settings)  # also checks the files settings name (model, TLS)
    except ConfigError as error:
        raise _config_error(error) from None
    try:
        node.run_until_signalled()
    except OSError as error:  # a port taken between the check and the start
        if error.errno != errno.EADDRINUSE:
            raise
        raise _config_error(ConfigError("\n".join(preflight.ports(settings)) or str(error))) from None


@app.command()
def conformance() -> None:
    """Print the DICOM Conformance Statement (Markdown, PS3.2 layout) of this node."""
    from node.conformance import conformance_statement

    typer.echo(conformance_statement(), nl=False)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the settings as ``serve`` would (providers, model, TLS files, free ports), print the
    effective values, and exit 2 with one line per problem when any."""
    from node import preflight

    settings = _settings(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))
    found = preflight.problems(settings)
    if found:
        raise _config_error(ConfigError("\n".join(found)))


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
    name = status.name if isinstance(status, Status) else "not a status the node knows"
    typer.echo(f"C-ECHO status 0x{int(status):04X} ({name})")
    raise typer.Exit(0 if status == Status.SUCCESS else 1)


@app.command()
def measure(
    paths: Annotated[
        list[Path], typer.Argument(help="DICOM files or folders (searched recursively).", exists=True)
    ],
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print a JSON array, one object per stack (ED/ES phases from 1)."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Measure every short-axis cine stack in files or folders, offline (exit 1 when none is found)."""
    import sys

    from node.inference.runner import load_segmenter
    from node.pipeline.measure import StackMeasurer
    from node.pipeline.offline import measure_paths

    settings = _settings(config)
    _console_logging(settings)
    try:
        # The model and its providers.
        measurer = StackMeasurer(load_segmenter(settings.inference), settings.inference.basal_rule)
    except ConfigError as error:
        raise _config_error(error) from None
    if sys.stderr.isatty():
        with _stage_bars() as progress:
            run = measure_paths(paths, measurer, progress)
    else:
        run = measure_paths(paths, measurer)
    for path, reason in run.unreadable:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if not run.instances and not run.unreadable:
        typer.echo("no files found", err=True)
    for series, reason in run.failed_stacks:
        typer.echo(f"stack of series {_series_text(series)} not measured: {reason}", err=True)
    for study in run.studies_without_stack:
        typer.echo(f"study {study}: no short-axis cine found", err=True)
    if as_json:
        typer.echo(json.dumps([result.to_json() for result in run.results], indent=2))
    else:
        _print_table([result.to_json() for result in run.results])
    raise typer.Exit(0 if run.results else 1)


@contextlib.contextmanager
def _stage_bars() -> Iterator[Any]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage on stderr."""
    import sys

    with contextlib.ExitStack() as stack:
        bars: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                stack.close()  # the previous stage's bar ends at its last count
                bars[stage] = stack.enter_context(typer.progressbar(length=1, label=stage, file=sys.stderr))
            bar = bars[stage]
            bar.length = max(total, 1)
            bar.finished = False  # click keeps a bar finished once it reached its length, which grows
            bar.update(done - bar.pos)

        yield progress


def _series_text(series: Sequence[str]) -> str:
    """Series Instance UIDs for a message: the first, and how many more (a stack may be 12 series)."""
    return series[0] + (f" and {len(series) - 1} more" if len(series) > 1 else "")


def _print_table(rows: list[dict[str, object]]) -> None:
    from node.domain import basal_rule_words

    header = (
        f"{'stack':>5} {'slices x phases':>15} {'EDV mL':>7} {'ESV mL':>7} {'EF %':>5} {'SV mL':>6} "
        f"{'mass g':>6} {'ED':>3} {'ES':>3} {'conf':>5} {'QC':<5}  QC flags"
    )
    typer.echo(header)
    for number, row in enumerate(rows, start=1):
        flags = row["qc_flags"]
        typer.echo(
            f"{number:>5} {str(row['slices']) + ' x ' + str(row['phases']):>15} {row['edv_ml']:>7} "
            f"{row['esv_ml']:>7} {row['ef_pct']:>5} {row['sv_ml']:>6} {row['lv_mass_g']:>6} "
            f"{row['ed_phase']:>3} {row['es_phase']:>3} {row['confidence']:>5} {row['qc_status']!s:<5}  "
            f"{', '.join(flags) if isinstance(flags, list) and flags else '-'}"
        )
    for number, row in enumerate(rows, start=1):  # which study and series each row measured, and how
        series = row["series_instance_uids"]
        typer.echo(
            f"{number:>5} study {row['study_instance_uid']}, series "
            f"{_series_text(series if isinstance(series, list) else [str(series)])}"
        )
        model = cast(dict[str, str | None], row["model"])  # StackResult.to_json: every ModelIdentity field
        files = [f"sha256 {model['sha256']!s:.12}"]  # the first 12 hex digits; --json gives all 64
        if model.get("companion_sha256"):
            files.append(f"companion sha256 {model['companion_sha256']!s:.12}")
        rule = row["basal_rule"]
        typer.echo(
            f"{'':>5} {model['name']} {model['version']} ({', '.join(files)}), "
            f"{basal_rule_words(None if rule is None else str(rule))}"
        )


# -- worklist, users and audit (issue 6) ---------------------------------------------------------------
# Administrators manage users at the console; radiologists can review from the console too. Every
# refusal is a domain error carrying an HTTP status, translated to a message and exit status 1 in
# :func:`_review_parts`, the one place the CLI handles them.

users_app = typer.Typer(help="Manage worklist users (every change is audited).", no_args_is_help=True)
worklist_app = typer.Typer(
    help="The review worklist: list, show, sign off, amend, reject.", no_args_is_help=True
)
app.add_typer(users_app, name="users")
app.add_typer(worklist_app, name="worklist")

CLI_ADDRESS = "cli"
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _console_actor() -> str:
    """``cli:<OS user>``: who changed accounts from the console."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _read_password(from_stdin: bool, confirm: bool) -> str:
    import sys

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))


@contextlib.contextmanager
def _review_parts(config: Path | None) -> Iterator[Any]:
    """Open the review parts of the node's index; translate a refusal into a message and exit 1."""
    from node.errors import NodeError
    from node.review.parts import ReviewParts

    settings = _settings(config)
    _console_logging(settings)
    parts = ReviewParts.open(settings)
    try:
        yield parts
    except NodeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        parts.close()


def _now() -> Any:
    from node.clock import SystemClock

    return SystemClock().now()


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option("--role", help="radiologist or admin.")],
    full_name: Annotated[
        str,
        typer.Option(
            "--full-name", help='As it goes into verified reports: "Family^Given" or "Given Family".'
        ),
    ],
    organization: Annotated[
        str, typer.Option("--organization", help="Verifying organization (64 characters).")
    ],
    identification_code: Annotated[
        str | None, typer.Option("--identification-code", help="Staff number for the verified SR (optional).")
    ] = None,
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Add a user (password from stdin with --password-stdin, else prompted twice)."""
    from node.accounts.errors import InvalidAccount
    from node.accounts.users import Role

    password = _read_password(password_stdin, confirm=True)
    with _review_parts(config) as parts:
        if role not in {str(value) for value in Role}:
            raise InvalidAccount(f"--role must be one of: {', '.join(str(value) for value in Role)}")
        user = parts.accounts.add_user(
            name=name,
            role=Role(role),
            full_name=full_name,
            organization=organization,
            password=password,
            identification_code=identification_code,
            actor=_console_actor(),
            address=CLI_ADDRESS,
            now=_now(),
        )
        typer.echo(f"added {user.role} {user.name} ({readable_name(user.full_name)}, {user.organization})")


@users_app.command("list")
def users_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List users."""
    with _review_parts(config) as parts:
        users = parts.accounts.users.all()
        if as_json:
            typer.echo(json.dumps([user.to_json() for user in users], indent=2))
            return
        typer.echo(f"{'name':<20} {'role':<12} {'state':<9} full name, organization")
        for user in users:
            state = "disabled" if user.disabled else "active"
            shown_name = readable_name(user.full_name)
            typer.echo(f"{user.name:<20} {user.role!s:<12} {state:<9} {shown_name}, {user.organization}")


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="Login name.")], config: ConfigOption = None
) -> None:
    """Disable a user and end their sessions (users are never deleted: the audit names them)."""
    with _review_parts(config) as parts:
        parts.accounts.disable(name, actor=_console_actor(), address=CLI_ADDRESS, now=_now())
        typer.echo(f"disabled {name}")


@users_app.command("reset")
def users_reset(
    name: Annotated[str, typer.Argument(help="Login name.")],
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Set a new password (re-enables the user and ends their sessions)."""
    password = _read_password(password_stdin, confirm=True)
    with _review_parts(config) as parts:
        parts.accounts.reset_password(name, password, actor=_console_actor(), address=CLI_ADDRESS, now=_now())
        typer.echo(f"password of {name} reset")


tokens_app = typer.Typer(
    help="API tokens of systems that send studies by STOW-RS (POST /dicomweb/studies); every change "
    "is audited.",
    no_args_is_help=True,
)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("add")
def tokens_add(
    name: Annotated[str, typer.Argument(help="The sending system (letters, digits, . _ @ -).")],
    config: ConfigOption = None,
) -> None:
    """Make a token and print it once (only its hash is kept): the sender presents it as
    "Authorization: Bearer <token>"."""
    from node.accounts.tokens import TokenStore

    with _review_parts(config) as parts:
        token = TokenStore(parts.index).add(name, actor=_console_actor(), address=CLI_ADDRESS, now=_now())
        typer.echo(token)
        typer.echo(f"token for {name} made; it is shown only now", err=True)


@tokens_app.command("list")
def tokens_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List tokens (names and dates, never the tokens)."""
    from node.accounts.tokens import TokenStore

    with _review_parts(config) as parts:
        tokens = TokenStore(parts.index).all()
        if as_json:
            typer.echo(json.dumps([token.to_json() for token in tokens], indent=2))
            return
        for token in tokens:
            used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never"
            state = "active" if token.active else "revoked"
            typer.echo(f"{token.name}\t{state}\tlast used {used}")


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(help="The sending system.")], config: ConfigOption = None
) -> None:
    """Stop accepting a token, at once (tokens are never deleted: the audit names them)."""
    from node.accounts.tokens import TokenStore

    with _review_parts(config) as parts:
        TokenStore(parts.index).revoke(name, actor=_console_actor(), address=CLI_ADDRESS, now=_now())
        typer.echo(f"revoked the token of {name}")


@app.command("audit")
def audit_command(
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest N entries.")] = 50,
    config: ConfigOption = None,
) -> None:
    """Print the audit trail, newest first."""
    with _review_parts(config) as parts:
        entries = parts.audit.entries(limit=limit)
        if as_json:
            typer.echo(json.dumps([entry.to_json() for entry in entries], indent=2))
            return
        for entry in entries:
            details = json.dumps(entry.details, sort_keys=True) if entry.details else ""
            typer.echo(
                f"{entry.at.isoformat(timespec='seconds')} {entry.actor:<16} {entry.address:<15} "
                f"{entry.action!s:<14} {entry.target or '-'} {details}".rstrip()
            )


@worklist_app.command("list")
def worklist_list(
    status: Annotated[
        str | None, typer.Option("--status", help="pending, signed off, amended, rejected, failed, ...")
    ] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 200,
    config: ConfigOption = None,
) -> None:
    """List current results, newest first."""
    from node.review.errors import InvalidReview
    from node.store.reviews import WorklistFilter, WorklistStatus

    with _review_parts(config) as parts:
        known = {str(value) for value in WorklistStatus}
        if status is not None and status not in known:
            raise InvalidReview(f"--status must be one of: {', '.join(sorted(known))}")
        selection = WorklistFilter(statuses=(WorklistStatus(status),) if status else (), limit=limit)
        rows = parts.store.worklist(selection)
        if as_json:
            typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
            return
        typer.echo(
            f"{'result id':<36} {'study date':<10} {'EDV':>6} {'ESV':>6} {'EF':>5} {'conf':>5} "
            f"{'QC':<5}  status"
        )
        for row in rows:
            cells = {key: "-" if value is None else value for key, value in row.to_json().items()}
            typer.echo(
                f"{row.result_id:<36} {row.study_date or '-':<10} {cells['edv_ml']:>6} {cells['esv_ml']:>6} "
                f"{cells['ef_pct']:>5} {cells['confidence']:>5} {cells['qc_status']:<5}  {row.status}"
            )


@worklist_app.command("show")
def worklist_show(
    result_id: Annotated[str, typer.Argument(help="Result id (see worklist list).")],
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show one result: values, QC flags in plain words, review and deliveries (audited as a view)."""
    from node.domain import basal_rule_words
    from node.inference.qc import flag_text, qc_statement
    from node.review.errors import ResultNotFound
    from node.store.audit import AuditAction, AuditEntry
    from node.store.reviews import status_of

    with _review_parts(config) as parts:
        result = parts.store.result(result_id)
        if result is None:
            raise ResultNotFound("no such result")
        review = parts.store.for_result(result_id)
        study = parts.store.study(result.study_instance_uid)
        parts.audit.record(
            AuditEntry(
                at=_now(),
                actor=_console_actor(),
                address=CLI_ADDRESS,
                action=AuditAction.VIEW_STUDY,
                target=result_id,
            )
        )
        shown = {
            "result_id": result_id,
            "study_instance_uid": result.study_instance_uid,
            "patient_name": study.patient_name,
            "patient_id": study.patient_id,
            "study_date": study.study_date,
            "version": result.version,
            "superseded": result.superseded,
            "outcome": str(result.outcome),
            "status": str(status_of(result, review)),
            "edv_ml": result.edv_ml,
            "esv_ml": result.esv_ml,
            "ef_pct": result.ef_pct,
            "sv_ml": result.sv_ml,
            "confidence": result.confidence,
            "qc_status": None if result.qc_status is None else str(result.qc_status),
            "qc_flags": list(result.qc_flags),
            "model": result.model,
            "basal_rule": result.details.get("basal_rule") if result.measured else None,
            "review": None
            if review is None
            else {
                "status": review.status,
                "by": review.full_name,
                "organization": review.organization,
                "at": review.reviewed_at.isoformat(),
                "amended": None
                if review.edv_ml is None
                else {"edv_ml": review.edv_ml, "esv_ml": review.esv_ml},
                "reason": review.reason,
            },
            "deliveries": [
                {
                    "kind": str(row.kind),
                    "destination": row.destination,
                    "state": str(row.state),
                    "attempts": row.attempts,
                    "last_error": row.last_error,
                }
                for row in parts.outbox.rows(result_id=result_id)
            ],
        }
        if as_json:
            typer.echo(json.dumps(shown, indent=2, default=str))
            return
        for key in ("result_id", "patient_name", "patient_id", "study_date", "version", "outcome", "status"):
            typer.echo(f"{key:<14} {shown[key] if shown[key] is not None else '-'}")
        for key, unit in (("edv_ml", "mL"), ("esv_ml", "mL"), ("ef_pct", "%"), ("sv_ml", "mL")):
            value = shown[key]
            typer.echo(f"{key:<14} {'-' if value is None else f'{value:.1f} {unit}'}")
        confidence = result.confidence
        typer.echo(f"{'confidence':<14} {'-' if confidence is None else f'{confidence:.2f}'}")
        if result.qc_status is not None:
            typer.echo(f"{'qc status':<14} {result.qc_status}: {qc_statement(result.qc_status)}")
        for flag in shown["qc_flags"]:
            typer.echo(f"{'qc':<14} {flag_text(flag)}")
        if result.measured:
            typer.echo(f"{'model':<14} {result.model_name} {result.model_version}")
            typer.echo(f"{'measured':<14} {basal_rule_words(shown['basal_rule'])}")
        if review is not None:
            reviewer = readable_name(review.full_name)
            typer.echo(f"{'review':<14} {review.status} by {reviewer} at {review.reviewed_at.isoformat()}")
        for row in shown["deliveries"]:
            typer.echo(
                f"{'delivery':<14} {row['kind']} -> {row['destination']}: {row['state']} ({row['attempts']})"
            )


def _reviewer(parts: Any, user: str, password_stdin: bool) -> Any:
    password = _read_password(password_stdin, confirm=False)
    return parts.accounts.authenticate(user, password, address=CLI_ADDRESS, now=_now(), via="cli")


ReviewerOption = Annotated[str, typer.Option("--user", help="Your worklist user name.")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why (required to amend or reject).")]


@worklist_app.command("sign")
def worklist_sign(
    result_id: Annotated[str, typer.Argument(help="Result id.")],
    user: ReviewerOption,
    password_stdin: PasswordStdin = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Optional comment.")] = None,
    config: ConfigOption = None,
) -> None:
    """Sign off a result as it is (radiologists only)."""
    with _review_parts(config) as parts:
        reviewer = _reviewer(parts, user, password_stdin)
        review = parts.service.sign(result_id, reviewer, CLI_ADDRESS, _now(), comment=reason)
        typer.echo(
            f"signed off {result_id}; verified SR {review.sr_sop_instance_uid}, sent by the running node"
        )


@worklist_app.command("amend")
def worklist_amend(
    result_id: Annotated[str, typer.Argument(help="Result id.")],
    user: ReviewerOption,
    edv: Annotated[float, typer.Option("--edv", help="Amended EDV in mL.")],
    esv: Annotated[float, typer.Option("--esv", help="Amended ESV in mL.")],
    reason: ReasonOption = None,
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Amend EDV and ESV of a result, with a reason (radiologists only)."""
    with _review_parts(config) as parts:
        reviewer = _reviewer(parts, user, password_stdin)
        review = parts.service.amend(result_id, edv, esv, reason or "", reviewer, CLI_ADDRESS, _now())
        typer.echo(f"amended {result_id}; verified SR {review.sr_sop_instance_uid}, sent by the running node")


@worklist_app.command("reject")
def worklist_reject(
    result_id: Annotated[str, typer.Argument(help="Result id.")],
    user: ReviewerOption,
    reason: ReasonOption = None,
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Reject a result, with a reason (radiologists only)."""
    with _review_parts(config) as parts:
        reviewer = _reviewer(parts, user, password_stdin)
        review = parts.service.reject(result_id, reason or "", reviewer, CLI_ADDRESS, _now())
        typer.echo(
            f"rejected {result_id}; verified SR {review.sr_sop_instance_uid}, sent by the running node"
        )


# -- deliveries (dead letters) -------------------------------------------------------------------------

deliveries_app = typer.Typer(
    help="Outgoing objects per destination; send dead letters again (audited).", no_args_is_help=True
)
app.add_typer(deliveries_app, name="deliveries")
StateOption = Annotated[
    str | None, typer.Option("--state", help="Only pairs in this state: pending, sending, delivered or dead.")
]


@deliveries_app.command("list")
def deliveries_list(
    state: StateOption = None, as_json: JsonOption = False, config: ConfigOption = None
) -> None:
    """List (object, destination) pairs with their state, attempts and last error."""
    from node.domain import DeliveryState

    if state is not None and state not in {str(value) for value in DeliveryState}:
        typer.echo(f"error: --state must be one of: {', '.join(str(v) for v in DeliveryState)}", err=True)
        raise typer.Exit(2)
    with _review_parts(config) as parts:
        rows = parts.outbox.rows(state=DeliveryState(state) if state else None)
        if as_json:
            typer.echo(
                json.dumps(
                    [
                        {
                            "id": row.id,
                            "state": str(row.state),
                            "destination": row.destination,
                            "kind": str(row.kind),
                            "sop_instance_uid": row.sop_instance_uid,
                            "result_id": row.result_id,
                            "attempts": row.attempts,
                            "last_status": row.last_status,
                            "last_error": row.last_error,
                            "refused": row.refused,
                        }
                        for row in rows
                    ],
                    indent=2,
                )
            )
            return
        typer.echo(f"{'id':>6} {'state':<9} {'destination':<32} {'object':<22} {'tries':>5} last error")
        for row in rows:
            typer.echo(
                f"{row.id:>6} {row.state!s:<9} {row.destination:<32} {row.kind.label:<22} "
                f"{row.attempts:>5} {row.last_error or ''}".rstrip()
            )


@deliveries_app.command("retry")
def deliveries_retry(
    ids: Annotated[list[int], typer.Argument(help="Ids of dead pairs (from `deliveries list`).")],
    config: ConfigOption = None,
) -> None:
    """Send dead pairs again, from their first attempt; the running node picks them up."""
    from node.store.outbox import retry_audit

    with _review_parts(config) as parts:
        now = _now()
        done = parts.outbox.retry(ids, now, retry_audit(now, _console_actor(), CLI_ADDRESS, None, "retry"))
        skipped = sorted(set(ids) - set(done))
        typer.echo(f"{len(done)} dead letter(s) queued again")
        if skipped:
            typer.echo(f"not dead, left alone: {', '.join(str(i) for i in skipped)}", err=True)
            raise typer.Exit(1)


@deliveries_app.command("retry-all-dead")
def deliveries_retry_all_dead(
    destination: Annotated[
        str | None, typer.Option("--destination", help="Only this destination (AE@host:port).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Send every dead pair (of one destination) again, from its first attempt."""
    from node.store.outbox import retry_audit

    with _review_parts(config) as parts:
        now = _now()
        done = parts.outbox.retry_dead(
            now,
            retry_audit(now, _console_actor(), CLI_ADDRESS, destination, "retry-all-dead"),
            destination=destination,
        )
        typer.echo(f"{len(done)} dead letter(s) queued again")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
