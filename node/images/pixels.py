"""Decode stored images, any transfer syntax the receiver accepts.

A cell is a single-frame instance or one frame of a multi-frame instance
(:class:`~node.images.frames.SpooledFrame`). :func:`decode_frames` opens a multi-frame file once and
decodes only the frames asked for, one at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import iter_pixels
from pydicom.uid import DeflatedExplicitVRLittleEndian

from node.dicom.instance import SpooledInstance
from node.errors import NodeError
from node.images.frames import FunctionalGroups, SpooledFrame


class UnreadablePixels(NodeError):
    """A file of a stack cannot be decoded (its transfer syntax or its data)."""


def grey_levels(
    stored: npt.NDArray[np.generic], image: Dataset, modality: Dataset | None = None
) -> npt.NDArray[np.float32]:
    """Stored pixel values as grey levels, larger brighter, whatever the Photometric Interpretation.

    The Modality LUT is applied (``modality``: a frame's Pixel Value Transformation item, else
    ``image``'s own Rescale Slope and Intercept). MONOCHROME1, where the smallest value is white
    (PS3.3 C.7.6.3.1.2), is turned around within its range of values, so that the model, the
    pictures and the stack's normalisation all see it as they see MONOCHROME2.
    """
    lut = modality if modality is not None else image
    values = np.asarray(apply_modality_lut(stored, lut), dtype=np.float32)
    if str(image.get("PhotometricInterpretation", "")).strip().upper() != "MONOCHROME1":
        return values
    bits = int(image.get("BitsStored") or 0)
    if bits <= 0:  # float pixel data: no declared range
        return -values
    signed = int(image.get("PixelRepresentation") or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    ends = np.asarray(apply_modality_lut(np.array([low, high]), lut), dtype=np.float32)
    return np.asarray(ends.min() + ends.max() - values, dtype=np.float32)


def _frame_source(path: Path, header: Dataset) -> Path | Dataset:
    """What pydicom's frame-by-frame decoders are given for the file at ``path`` (``header``: its
    dataset without pixels): the path, so that only the wanted frames are read, except for a
    Deflated file, which they cannot read from a path: then the whole dataset, inflated."""
    meta = getattr(header, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(path)
    return path


def read_frame(path: Path, frame_number: int | None = None) -> npt.NDArray[np.float32]:
    """Decode one image as grey levels (:func:`grey_levels`: Modality LUT, MONOCHROME1 inverted).

    Parameters
    ----------
    path
        The instance's file.
    frame_number
        None for a single-frame image; else the frame's number, from 1, in a multi-frame instance.
    """
    if frame_number is not None:
        ((_, frame),) = decode_frames(path, [(0, frame_number)])
        return frame
    try:
        dataset = pydicom.dcmread(path)
        return grey_levels(dataset.pixel_array, dataset)
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        raise UnreadablePixels(f"cannot decode pixel data: {type(error).__name__}") from None


def read_cell(cell: SpooledInstance, root: Path) -> npt.NDArray[np.float32]:
    """Decode one grid cell: a single-frame instance, or a frame of a multi-frame one.

    Parameters
    ----------
    root
        Directory the cell's relative path is resolved against (an absolute path stays as it is).
    """
    return read_frame(root / cell.path, cell.frame_number if isinstance(cell, SpooledFrame) else None)


def decode_frames(
    path: Path, wanted: Sequence[tuple[int, int]]
) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """Decode frames of one multi-frame file, yielding ``(key, frame)`` for each ``(key, frame number)``.

    Frames are grey levels (:func:`grey_levels`). The Modality LUT of a frame is its Pixel Value
    Transformation functional group (PS3.3 C.7.6.16.2.9), per frame or shared, else the top-level
    Rescale Slope and Intercept.
    """
    by_index: dict[int, list[int]] = defaultdict(list)
    for key, frame_number in wanted:
        by_index[frame_number - 1].append(key)
    indices = sorted(by_index)
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        count = int(header.get("NumberOfFrames") or 1)
        if indices and (indices[0] < 0 or indices[-1] >= count):
            raise IndexError("frame number outside Number of Frames")
        groups = FunctionalGroups.of(header)
        source = _frame_source(path, header)
        for index, pixels in zip(indices, iter_pixels(source, indices=indices), strict=True):
            frame = grey_levels(pixels, header, groups.item(index, "PixelValueTransformationSequence"))
            for key in by_index[index]:
                yield key, frame
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        raise UnreadablePixels(f"cannot decode pixel data: {type(error).__name__}") from None
