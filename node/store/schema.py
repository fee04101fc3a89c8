"""Index tables (SQLAlchemy Core), shared by SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite would return naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the index; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

#: One row per stored SOP Instance; the pipeline reads stacks from here, never from the files.
instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", Text, nullable=False, unique=True),
    Column("sop_class_uid", Text, nullable=False),
    Column("study_instance_uid", Text, nullable=False),
    Column("series_instance_uid", Text, nullable=False),
    Column("transfer_syntax_uid", Text, nullable=False),
    Column("modality", String(16)),
    Column("frame_of_reference_uid", Text),
    Column("image_type", JSON, nullable=False),
    Column("series_number", Integer),
    Column("instance_number", Integer),
    Column("acquisition_number", Integer),
    Column("acquisition_time", String(32)),
    Column("trigger_time", Float),
    Column("image_position", JSON),
    Column("image_orientation", JSON),
    Column("pixel_spacing", JSON),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("number_of_frames", Integer),
    Column("series_description", Text),
    Column("path", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("calling_ae", String(16)),
    Column("received_at", UtcDateTime(), nullable=False),
    Index("ix_instances_study", "study_instance_uid"),
    Index("ix_instances_series", "series_instance_uid"),
)

#: One row per study: identifiers as PACS shows them (for the worklist) and arrival times.
studies = Table(
    "studies",
    metadata,
    Column("study_instance_uid", Text, primary_key=True),
    Column("patient_id", Text),
    Column("patient_name", Text),
    Column("patient_birth_date", String(16)),
    Column("accession_number", Text),
    Column("study_date", String(16)),
    Column("study_time", String(32)),
    Column("study_description", Text),
    Column("first_received_at", UtcDateTime(), nullable=False),
    Column("last_received_at", UtcDateTime(), nullable=False),
    Column("instance_count", Integer, nullable=False),
    #: Arrival time of the first instance not yet covered by a job (None: nothing pending).
    Column("pending_since", UtcDateTime()),
)

#: Processing jobs: one per study version. A study is (re)queued when new instances have arrived
#: and it has been quiet for the stable period (or waited the maximum); ``version`` increases.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_instance_uid", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # node.domain.JobState
    Column("outcome", String(40)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("claimed_by", String(200)),
    #: Until when the claimant's claim holds; its holder renews it while it works, and any node may
    #: take over a running job whose lease has run out.
    Column("lease_until", UtcDateTime()),
    Column("queued_at", UtcDateTime(), nullable=False),
    Column("claimed_at", UtcDateTime()),
    Column("finished_at", UtcDateTime()),
    Column("error", Text),
    UniqueConstraint("study_instance_uid", "version", name="uq_jobs_study_version"),
    Index("ix_jobs_state", "state"),
)

#: One row per measured stack (or one per study for "no short-axis cine found" / failed).
results = Table(
    "results",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("job_id", Integer, nullable=False),
    Column("study_instance_uid", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("stack_index", Integer, nullable=False),
    Column("outcome", String(40), nullable=False),
    Column("series_instance_uids", JSON, nullable=False),
    Column("edv_ml", Float),
    Column("esv_ml", Float),
    Column("ef_pct", Float),
    Column("sv_ml", Float),
    Column("lv_mass_g", Float),
    Column("qc_flags", JSON, nullable=False),
    # "ok" or "check" (QcStatus); NULL where nothing was measured, and on results an older node
    # measured (read back from their flags).
    Column("qc_status", String(8)),
    Column("confidence", Float),
    Column("model_name", String(100)),
    Column("model_version", String(40)),
    Column("record", JSON, nullable=False),
    Column("labels_path", Text),
    #: The measured stack (:class:`node.domain.StackGrid` as JSON): what reports and pictures load.
    Column("grid", JSON),
    Column("superseded", Boolean, nullable=False, default=False),
    #: True once the result's reports (draft SR, SC, SEG) are in the outbox.
    Column("published", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("job_id", "stack_index", name="uq_results_job_stack"),
    Index("ix_results_study", "study_instance_uid"),
)

#: Every object the node will send, stored (file under ``outbox/``) before any attempt.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", Text, nullable=False, unique=True),
    Column("sop_class_uid", Text, nullable=False),
    Column("study_instance_uid", Text, nullable=False),
    Column("result_id", String(36)),
    Column("kind", String(32), nullable=False),
    Column("path", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_outbox_result", "result_id"),
)

#: Delivery state of each outbox object to each destination.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("outbox_id", Integer, nullable=False),
    Column("destination", String(200), nullable=False),
    Column("state", String(16), nullable=False),  # node.domain.DeliveryState
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("claimed_by", String(200)),
    #: Until when a ``sending`` claim holds (see ``jobs.lease_until``).
    Column("lease_until", UtcDateTime()),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("delivered_at", UtcDateTime()),
    #: Dead because the destination refuses the object (no presentation context for its SOP class),
    #: not because it was unreachable: a C-ECHO that succeeds again does not bring it back.
    Column("refused", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("outbox_id", "destination", name="uq_deliveries_object_destination"),
    Index("ix_deliveries_state", "state", "next_attempt_at"),
)

# -- review worklist: accounts, sessions, audit, reviews (appended) ---------------------------------

#: People who may log in to the worklist; a user is disabled, never deleted (the audit names them).
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # radiologist | admin
    Column("full_name", Text, nullable=False),
    Column("organization", Text, nullable=False),
    #: Person Identification Code (PS3.3 C.17.5 Verifying Observer Identification Code Sequence).
    Column("identification_code", String(64)),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

#: Logged-in browser sessions; only the SHA-256 of the cookie token is stored.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("address", String(64)),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_web_sessions_user", "user_id"),
)

#: Senders allowed to store studies by STOW-RS (``POST /dicomweb/studies``); only the SHA-256 of each
#: token is stored. A token is revoked, never deleted (the audit names it).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime()),
    Column("last_used_at", UtcDateTime()),
)

#: Consecutive failed logins per key (``user:NAME`` or ``address:ADDR``) and until when it is blocked.
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure_at", UtcDateTime(), nullable=False),
    Column("blocked_until", UtcDateTime(), nullable=False),
)

#: Append-only audit trail: who did what, when, from where (triggers refuse UPDATE and DELETE).
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("address", String(64), nullable=False),
    Column("action", String(40), nullable=False),
    Column("target", Text),
    Column("details", JSON, nullable=False),
    Index("ix_audit_at", "at"),
)
for _statement in (
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
):
    event.listen(audit, "after_create", DDL(_statement).execute_if(dialect="sqlite"))  # type: ignore[no-untyped-call]
for _statement in (
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$",
    "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
):
    event.listen(audit, "after_create", DDL(_statement).execute_if(dialect="postgresql"))  # type: ignore[no-untyped-call]

#: At most one radiologist review per result (the unique key decides two concurrent clicks).
reviews = Table(
    "reviews",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("result_id", String(36), nullable=False, unique=True),
    Column("status", String(20), nullable=False),  # signed_off | amended | rejected
    Column("user_name", String(64), nullable=False),
    Column("full_name", Text, nullable=False),
    Column("organization", Text, nullable=False),
    Column("identification_code", String(64)),
    Column("address", String(64), nullable=False),
    Column("reviewed_at", UtcDateTime(), nullable=False),
    #: The AI values as measured, always kept; the amended ones only for an amendment.
    Column("ai_edv_ml", Float),
    Column("ai_esv_ml", Float),
    Column("ai_ef_pct", Float),
    Column("edv_ml", Float),
    Column("esv_ml", Float),
    Column("reason", Text),
    #: SOP Instance UID of the verified SR (fixed before it is built, so a retry reuses it).
    Column("sr_sop_instance_uid", Text, nullable=False),
    #: True once the verified SR is in the outbox.
    Column("published", Boolean, nullable=False, default=False),
)
