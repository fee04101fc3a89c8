"""Label volumes ``[slice, phase, row, col]`` as compressed ``.npz`` bytes in the results spool."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt


def encode_labels(labels: npt.NDArray[np.uint8]) -> bytes:
    """Compressed ``.npz`` bytes of a label volume."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels)
    return buffer.getvalue()


def decode_labels(data: bytes) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`encode_labels`."""
    with np.load(io.BytesIO(data)) as archive:
        labels: npt.NDArray[np.uint8] = archive["labels"]
    return labels
