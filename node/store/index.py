"""The index: SQLAlchemy Core over SQLite (WAL) or PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, inspect, select, text, union, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import ConnectionPoolEntry

from node.dicom.instance import InstanceHeader, SpooledInstance
from node.domain import JobState
from node.store.schema import instances, jobs, metadata, studies

_STUDY_FIELDS = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "accession_number",
    "study_date",
    "study_time",
    "study_description",
)


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, ConnectionPoolEntry], None]:
    def configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return configure


def create_index_engine(url: str, durable_commits: bool = True) -> Engine:
    """An engine for the index; SQLite gets WAL and, by default, an fsync at every commit.

    ``durable_commits=False`` (SQLite synchronous=NORMAL) is for the ingest's own engine only: a
    commit then survives the process being killed but may be lost with the last ones on a power
    loss. The spool is the source of truth for received instances (each file is on disk, its folder
    fsync'd, before it is acknowledged) and the node indexes every spool file the index lacks at
    start-up, so no acknowledged instance is lost with such a commit. Reviews, results, the outbox
    and the audit keep fsync'd commits.
    """
    if url.startswith("sqlite:"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=32,
            # The connection used last: its page cache is the freshest (a connection that has not seen
            # the latest commit reads its pages again from the file).
            pool_use_lifo=True,
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas("FULL" if durable_commits else "NORMAL"))
        return engine
    return create_engine(url, pool_size=8, max_overflow=32, pool_pre_ping=True, hide_parameters=True)


def _add_missing_columns(engine: Engine) -> None:
    """Add columns that a newer node defines to tables an older node created.

    ``create_all`` creates missing tables only; a column added since (always nullable or with a
    server default) is added here, so an existing index keeps working after an upgrade.
    """
    inspector = inspect(engine)
    existing_tables = set(inspector.get_table_names())
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            if table.name not in existing_tables:
                continue
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                default = ""
                if column.server_default is not None:
                    value = column.server_default.arg  # type: ignore[attr-defined]
                    compiled = value.compile(dialect=engine.dialect) if hasattr(value, "compile") else value
                    default = f"{'' if column.nullable else ' NOT NULL'} DEFAULT {compiled}"
                added = f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}'
                connection.execute(text(added))


class Index:
    """Typed access to the index tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        _add_missing_columns(engine)
        # The two statements of every received instance, built once: their values come as parameters
        # at each execution, so SQLAlchemy finds them compiled in its cache instead of building a
        # statement (and its cache key) per instance.
        self._new_instance = self._insert_ignore(instances, "sop_instance_uid")
        self._count_instance = self._study_upsert()

    @classmethod
    def open(cls, url: str, durable_commits: bool = True) -> Index:
        """Open (and create when new) the index at a SQLAlchemy URL (see :func:`create_index_engine`)."""
        return cls(create_index_engine(url, durable_commits))

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def _insert_ignore(self, table: Any, key: str) -> Any:
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
        if self.engine.dialect.name == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
        return insert(table)

    def restart_quiet_periods(self, now: datetime) -> int:
        """Count every study still receiving as last received ``now`` (start-up).

        A node that died while a study was arriving cannot tell whether the sender finished; the
        study waits one whole quiet period after the restart before it is measured, however short
        ``STABLE_SECONDS`` is against the time the node was down. Returns how many studies.
        """
        with self.engine.begin() as connection:
            result = connection.execute(
                update(studies).where(studies.c.pending_since.is_not(None)).values(last_received_at=now)
            )
        return int(result.rowcount)

    def instance_path(self, sop_instance_uid: str) -> str | None:
        """Spool path (relative) of an indexed instance; None when it is not indexed."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(instances.c.path).where(instances.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return str(found[0]) if found is not None else None

    def study_instance_count(self, study_instance_uid: str) -> int | None:
        """How many instances a study holds; None when the study is unknown."""
        with self.engine.connect() as connection:
            count = connection.execute(
                select(studies.c.instance_count).where(studies.c.study_instance_uid == study_instance_uid)
            ).scalar()
        return None if count is None else int(count)

    def waiting_studies(self) -> int:
        """Studies not yet measured in their latest version: receiving, ready, queued or running."""
        pending = select(studies.c.study_instance_uid).where(studies.c.pending_since.is_not(None))
        queued = select(jobs.c.study_instance_uid).where(
            jobs.c.state.in_((JobState.QUEUED, JobState.RUNNING))
        )
        waiting = union(pending, queued).subquery()
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(waiting)).scalar_one())

    def add_instance(
        self,
        header: InstanceHeader,
        path: str,
        size_bytes: int,
        calling_ae: str | None,
        received_at: datetime,
    ) -> bool:
        """Index a stored instance and touch its study, in one transaction.

        Returns
        -------
        bool
            True when the instance is new, False when it was already indexed (a resend).
        """
        # Field by field (asdict copies every value deeply: a fifth of this call's time).
        row = {field.name: getattr(header, field.name) for field in fields(header)}
        study_values = {field: row.pop(field) for field in _STUDY_FIELDS}
        row.update(
            image_type=list(header.image_type),
            image_position=list(header.image_position) if header.image_position else None,
            image_orientation=list(header.image_orientation) if header.image_orientation else None,
            pixel_spacing=list(header.pixel_spacing) if header.pixel_spacing else None,
            path=path,
            size_bytes=size_bytes,
            calling_ae=calling_ae,
            received_at=received_at,
        )
        with self.engine.begin() as connection:
            result = connection.execute(self._new_instance, row)
            if result.rowcount == 0:
                return False
            connection.execute(
                self._count_instance,
                {
                    "study_instance_uid": header.study_instance_uid,
                    "first_received_at": received_at,
                    "last_received_at": received_at,
                    "instance_count": 1,
                    "pending_since": received_at,
                    **study_values,
                },
            )
        return True

    def _study_upsert(self) -> Any:
        """Count one more instance of a study, creating its row on the first: one upsert, whose values
        (every study column) are given at execution."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(studies)
        latest = func.greatest if self.engine.dialect.name == "postgresql" else func.max
        arrived = statement.excluded
        return statement.on_conflict_do_update(
            index_elements=["study_instance_uid"],
            set_={
                "last_received_at": latest(studies.c.last_received_at, arrived.last_received_at),
                "instance_count": studies.c.instance_count + 1,
                "pending_since": func.coalesce(studies.c.pending_since, arrived.pending_since),
            },
        )

    def study_instances(self, study_instance_uid: str) -> list[SpooledInstance]:
        """Every indexed instance of a study, in arrival order, with its header."""
        with self.engine.connect() as connection:
            rows = (
                connection.execute(
                    select(instances, studies)
                    .join(studies, studies.c.study_instance_uid == instances.c.study_instance_uid)
                    .where(instances.c.study_instance_uid == study_instance_uid)
                    .order_by(instances.c.id)
                )
                .mappings()
                .all()
            )
        return [SpooledInstance(header=_header(row), path=str(row["path"])) for row in rows]

    def instances_by_uid(self, sop_instance_uids: Iterable[str]) -> dict[str, SpooledInstance]:
        """The indexed instances among ``sop_instance_uids``, with their headers, by SOP Instance UID."""
        wanted = sorted(set(sop_instance_uids))
        found: dict[str, SpooledInstance] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                rows = (
                    connection.execute(
                        select(instances, studies)
                        .join(studies, studies.c.study_instance_uid == instances.c.study_instance_uid)
                        .where(instances.c.sop_instance_uid.in_(wanted[start : start + 500]))
                    )
                    .mappings()
                    .all()
                )
                for row in rows:
                    found[str(row["sop_instance_uid"])] = SpooledInstance(
                        header=_header(row), path=str(row["path"])
                    )
        return found

    def instance_paths(self) -> dict[str, str]:
        """Spool path (relative) of every indexed instance, by SOP Instance UID."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(instances.c.sop_instance_uid, instances.c.path)).all()
        return {str(uid): str(path) for uid, path in rows}


def _tuple(value: Any) -> tuple[Any, ...] | None:
    return tuple(value) if value is not None else None


def _header(row: Any) -> InstanceHeader:
    """Rebuild an :class:`InstanceHeader` from a joined instances/studies row."""
    values = {name: row[name] for name in InstanceHeader.__dataclass_fields__}
    values["image_type"] = tuple(row["image_type"] or ())
    values["image_position"] = _tuple(row["image_position"])
    values["image_orientation"] = _tuple(row["image_orientation"])
    values["pixel_spacing"] = _tuple(row["pixel_spacing"])
    return InstanceHeader(**values)
