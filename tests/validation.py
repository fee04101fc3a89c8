"""dciodvfy (dicom3tools) as a checker of every object the node produces, shared by the tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

DCIODVFY = "/usr/bin/dciodvfy"


#: dciodvfy's complaint about a UID with a leading zero in a component (PS3.5 9.1), e.g.
#: "Error - Value invalid for this VR - (0x0020,0x000d) UI Study Instance UID  UI [1] = <2.16...>
#: - Leading zeroes in embedded numeric component(s)".
_LEADING_ZERO_UID = re.compile(
    r"^Error - Value invalid for this VR - \(0x[0-9a-f]{4},0x[0-9a-f]{4}\) UI .* = <([0-9.]+)> "
    r"- Leading zeroes in embedded numeric component\(s\)$"
)
#: The summary line dciodvfy adds after any VR error, the copied UIDs' included.
_VR_SUMMARY = "Error - Dicom dataset contains invalid data values for Value Representations"
_VR_ERROR = "Error - Value invalid for this VR"


@dataclass(frozen=True)
class Validation:
    """dciodvfy's "Error" lines, split into errors about the source's copied UIDs and all others."""

    output: str
    source_uid_errors: tuple[str, ...]
    errors: tuple[str, ...]


def dciodvfy(dataset: Dataset, path: Path, source_uids: frozenset[str]) -> Validation:
    """Write ``dataset`` as a Part 10 file, run dciodvfy on it and classify its "Error" lines.

    An error is attributed to the source only when it is a leading-zero UID error whose value is one
    of ``source_uids`` (the node must copy those exactly); dciodvfy's VR summary line is attributed
    to the source only when every VR error was. Everything else stays in ``errors``.
    """
    if shutil.which(DCIODVFY) is None:
        pytest.skip(f"{DCIODVFY} (dicom3tools) is not installed")
    dataset.save_as(path, enforce_file_format=True)
    completed = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    output = completed.stdout + completed.stderr
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith("Error")]
    copied = [
        line for line in lines if (match := _LEADING_ZERO_UID.match(line)) and match.group(1) in source_uids
    ]
    others = [line for line in lines if line not in copied]
    if copied and not any(line.startswith(_VR_ERROR) for line in others):
        copied += [line for line in others if line == _VR_SUMMARY]
        others = [line for line in others if line != _VR_SUMMARY]
    return Validation(output=output, source_uid_errors=tuple(copied), errors=tuple(others))


def uids_of(datasets: Sequence[Dataset]) -> frozenset[str]:
    """Every UI value in ``datasets`` (nested ones too): the UIDs a report built from them may copy."""
    return frozenset(
        str(element.value) for dataset in datasets for element in dataset.iterall() if element.VR == "UI"
    )
