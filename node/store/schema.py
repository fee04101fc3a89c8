"""Index tables (SQLAlchemy Core), shared by SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

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
    Column("received_at", DateTime(timezone=True), nullable=False),
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
    Column("first_received_at", DateTime(timezone=True), nullable=False),
    Column("last_received_at", DateTime(timezone=True), nullable=False),
    Column("instance_count", Integer, nullable=False),
)
