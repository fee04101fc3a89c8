"""DICOM media (a CD, DVD or USB export): the files a DICOMDIR lists (PS3.10 8, PS3.3 F)."""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.uid import MediaStorageDirectoryStorage

from node.errors import NodeError

#: How a Referenced File ID's components are written as one path (PS3.10 8.2).
FILE_ID_SEPARATOR = "\\"
#: The records' offsets to other records (PS3.3 F.3.2.1, F.3.2.2); 0 means none.
_RECORD_OFFSETS = ("OffsetOfTheNextDirectoryRecord", "OffsetOfReferencedLowerLevelDirectoryEntity")
_ROOT_OFFSETS = (
    "OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity",
    "OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity",
)


class UnreadableDicomdir(NodeError):
    """A DICOMDIR whose records cannot be followed; nothing it lists is read through it."""


def is_media_directory(data: bytes) -> bool:
    """Whether a whole Part 10 file is a DICOMDIR (Media Storage Directory Storage)."""
    try:
        meta = pydicom.dcmread(BytesIO(data), specific_tags=[]).file_meta
    except Exception:  # noqa: BLE001 - not even a file meta: it is no DICOMDIR
        return False
    return bool(meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage)


def listed_files(dicomdir: Path, data: bytes) -> list[Path]:
    """The files a DICOMDIR's directory records reference (Referenced File ID), as paths under its
    folder, in record order (``data``: the whole DICOMDIR file, already read).

    The records are read here rather than through pydicom's ``FileSet``, which leaves a listed file
    that is missing out with only a warning: such a file must be reported like any unreadable one.
    A component is matched exactly, or else as an ISO 9660 mount may show it: in lower case, with a
    ``;1`` version or a trailing dot (Linux mounts a CD without Rock Ridge in lower case).

    Raises
    ------
    UnreadableDicomdir
        The DICOMDIR cannot be parsed, is truncated (a record points at a record that is not there),
        or a record names something that is not a file under the DICOMDIR's folder.
    """
    try:
        dataset = pydicom.dcmread(BytesIO(data))
        records = list(dataset.get("DirectoryRecordSequence", []))
        found = {record.seq_item_tell for record in records}
        pointed = {int(dataset.get(name) or 0) for name in _ROOT_OFFSETS}
        pointed |= {int(record.get(name) or 0) for record in records for name in _RECORD_OFFSETS}
        file_ids = [record.get("ReferencedFileID") for record in records]
    except Exception as error:  # pydicom raises ValueError, KeyError, struct.error...
        raise UnreadableDicomdir(f"DICOMDIR cannot be read: {type(error).__name__}: {error}") from error
    missing = pointed - found - {0}
    if missing:
        raise UnreadableDicomdir(
            f"DICOMDIR cannot be read: truncated ({len(missing)} records it points at are not there)"
        )
    listings: dict[Path, dict[str, str]] = {}
    files: list[Path] = []
    for file_id in file_ids:
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(part) for part in file_id]
        if not all(_is_component(part) for part in parts):
            joined = FILE_ID_SEPARATOR.join(parts)
            shown = "".join(c if ord(c) >= 0x20 else f"\\x{ord(c):02x}" for c in joined)
            raise UnreadableDicomdir(
                f"DICOMDIR cannot be read: Referenced File ID {shown} is not a file under its folder"
            )
        files.append(_on_media(dicomdir.parent, parts, listings))
    return files


def _is_component(part: str) -> bool:
    """A single file or folder name: no separator, no parent step, no control character."""
    return (
        part not in ("", ".", "..")
        and "/" not in part
        and FILE_ID_SEPARATOR not in part
        and all(ord(character) >= 0x20 for character in part)
    )


def _media_name(name: str) -> str:
    """A name as an ISO 9660 mount may show it (``im000001``, ``IM000001;1``, ``IM000001.``), reduced
    to compare with a File ID component."""
    return name.split(";", 1)[0].rstrip(".").casefold()


def _on_media(folder: Path, parts: list[str], listings: dict[Path, dict[str, str]]) -> Path:
    """The path of a File ID under ``folder``; the exact path where no component matches (so that
    the missing file is reported by the name the DICOMDIR gives)."""
    path = folder
    for part in parts:
        exact = path / part
        if exact.exists():
            path = exact
            continue
        if path not in listings:
            try:
                names = os.listdir(path)
            except OSError:
                names = []
            listings[path] = {_media_name(name): name for name in sorted(names)}
        match = listings[path].get(part.casefold())
        if match is None:
            return folder.joinpath(*parts)
        path = path / match
    return path
