"""Datasets over ``../shared/data``: ACDC for training, Sunnybrook expert contours for validation only.

ACDC (Bernard et al., IEEE TMI 37(11), 2018; research use, non-commercial share-alike terms): the 100
patients of ``acdc/`` and the 50 of ``acdc-test/`` (as many as are present), each at its real voxel
spacing from ``acdc-info.csv``. Sunnybrook (Radau et al., MIDAS Journal 2009; CC0) is never used for
training.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw

from node.inference.card import Normalisation
from node.inference.preprocess import normalise

SPLIT_SEED = 20261122
#: Validation patients held out per ACDC pathology group (NOR, MINF, DCM, HCM, RV): 20 of 130.
VALIDATION_PER_GROUP = 4
ACDC_FOLDERS = {"training": "acdc", "testing": "acdc-test"}
SUNNYBROOK_PHASES = 20
SUNNYBROOK_IDS = {"SCD0000101": "SC-HF-I-1", "SCD0000201": "SC-HF-I-2", "SCD0000301": "SC-HF-I-4"}
BLOOD_POOL = 3


def data_root() -> Path:
    """``../shared/data`` relative to the project root, or ``$DICOMNODE_DATA_ROOT``."""
    env = os.environ.get("DICOMNODE_DATA_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass(frozen=True)
class AcdcInfo:
    """One row of ``acdc-info.csv``: where the patient lies, its voxel spacing and pathology group."""

    patient: str
    folder: str
    row_mm: float
    col_mm: float
    slice_mm: float
    group: str


@dataclass(frozen=True)
class AcdcCase:
    """One ACDC patient: normalised ED and ES volumes ``(slices, rows, cols)``, labels and spacing."""

    patient: str
    ed_image: npt.NDArray[np.float32]
    ed_label: npt.NDArray[np.uint8]
    es_image: npt.NDArray[np.float32]
    es_label: npt.NDArray[np.uint8]
    pixel_spacing: tuple[float, float]
    slice_mm: float
    group: str

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL."""
        return self.pixel_spacing[0] * self.pixel_spacing[1] * self.slice_mm / 1000.0


def acdc_info(root: Path) -> dict[str, AcdcInfo]:
    """Every ACDC patient whose ``.npz`` is present, with its row of ``acdc-info.csv``."""
    found: dict[str, AcdcInfo] = {}
    with (root / "acdc-info.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            folder = ACDC_FOLDERS[row["source"]]
            if (root / folder / f"{row['patient']}.npz").is_file():
                found[row["patient"]] = AcdcInfo(
                    patient=row["patient"],
                    folder=folder,
                    row_mm=float(row["row_mm"]),
                    col_mm=float(row["col_mm"]),
                    slice_mm=float(row["slice_mm"]),
                    group=row["group"],
                )
    return found


def acdc_patients(root: Path) -> list[str]:
    """Sorted ids of the ACDC patients present under ``root`` (both folders)."""
    return sorted(acdc_info(root))


def split_patients(root: Path) -> tuple[list[str], list[str]]:
    """Split by patient with a fixed seed, stratified by pathology group: (train, validation)."""
    info = acdc_info(root)
    rng = np.random.default_rng(SPLIT_SEED)
    validation: list[str] = []
    for group in sorted({row.group for row in info.values()}):
        members = sorted(p for p, row in info.items() if row.group == group)
        picks = rng.permutation(len(members))[:VALIDATION_PER_GROUP]
        validation.extend(members[i] for i in picks)
    train = sorted(set(info) - set(validation))
    return train, sorted(validation)


def load_acdc(root: Path, patient: str, spec: Normalisation | None) -> AcdcCase:
    """Load one patient, normalising ED and ES together as one stack (as the node does per stack);
    ``spec`` None keeps the stored intensities (scaled to [0, 1])."""
    info = acdc_info(root)[patient]
    with np.load(root / info.folder / f"{patient}.npz") as data:
        ed = data["ed_image"].astype(np.float32) / 65535.0
        es = data["es_image"].astype(np.float32) / 65535.0
        both = np.concatenate([ed, es]) if spec is None else normalise(np.concatenate([ed, es]), spec)
        return AcdcCase(
            patient=patient,
            ed_image=both[: ed.shape[0]],
            ed_label=data["ed_label"].astype(np.uint8),
            es_image=both[ed.shape[0] :],
            es_label=data["es_label"].astype(np.uint8),
            pixel_spacing=(info.row_mm, info.col_mm),
            slice_mm=info.slice_mm,
            group=info.group,
        )


@dataclass(frozen=True)
class SunnybrookCase:
    """One Sunnybrook SAX cine series with the expert's endocardial contours.

    ``frames`` is ``(slices, phases, rows, cols)`` in slice order along the normal; ``contours`` maps
    ``(slice, phase)`` to polygons in pixel coordinates (x = column, y = row).
    """

    patient: str
    frames: npt.NDArray[np.float32]
    pixel_spacing: tuple[float, float]
    slice_spacing_mm: float
    spacing_between_slices_mm: float
    contours: dict[tuple[int, int], npt.NDArray[np.float64]]
    #: Unit vector along which the slice index grows (the stack's normal, as the node orders it).
    normal: tuple[float, float, float]

    def contour_mask(self, slice_index: int, phase: int) -> npt.NDArray[np.bool_]:
        """Rasterise the expert contour of one frame."""
        rows, cols = self.frames.shape[2:]
        canvas = Image.new("L", (cols, rows), 0)
        polygon = [(float(x), float(y)) for x, y in self.contours[(slice_index, phase)]]
        ImageDraw.Draw(canvas).polygon(polygon, fill=1, outline=1)
        return np.asarray(canvas, dtype=bool)


def polygon_area(points: npt.NDArray[np.float64]) -> float:
    """Shoelace area of a closed polygon, in squared pixel units."""
    x, y = points[:, 0], points[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def load_sunnybrook(root: Path, patient: str) -> SunnybrookCase:
    """Load a Sunnybrook series; image N is slice (N-1)//20, phase (N-1)%20 (data README)."""
    series_dir = root / "sunnybrook" / patient
    datasets = [pydicom.dcmread(path) for path in sorted(series_dir.glob("*.dcm"))]
    count = len(datasets)
    slices = count // SUNNYBROOK_PHASES
    first = datasets[0]
    frames = np.zeros((slices, SUNNYBROOK_PHASES, int(first.Rows), int(first.Columns)), np.float32)
    positions = np.zeros(slices)
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    for dataset in datasets:
        index = int(dataset.InstanceNumber) - 1
        slice_index, phase = divmod(index, SUNNYBROOK_PHASES)
        frames[slice_index, phase] = dataset.pixel_array.astype(np.float32)
        positions[slice_index] = float(np.dot(normal, np.asarray(dataset.ImagePositionPatient, float)))
    contours: dict[tuple[int, int], npt.NDArray[np.float64]] = {}
    contour_dir = root / "sunnybrook" / "contours" / SUNNYBROOK_IDS[patient] / "i-contours"
    for path in sorted(contour_dir.glob("IM-0001-*-icontour-manual.txt")):
        image_number = int(path.name.split("-")[2])
        contours[divmod(image_number - 1, SUNNYBROOK_PHASES)] = np.loadtxt(path, dtype=np.float64)
    spacing = tuple(float(v) for v in first.PixelSpacing)
    along = normal if positions[-1] >= positions[0] else -normal  # the direction slice indices grow
    return SunnybrookCase(
        patient=patient,
        frames=frames,
        pixel_spacing=(spacing[0], spacing[1]),
        slice_spacing_mm=float(np.median(np.abs(np.diff(positions)))),
        spacing_between_slices_mm=float(first.SpacingBetweenSlices),
        contours=contours,
        normal=(float(along[0]), float(along[1]), float(along[2])),
    )
