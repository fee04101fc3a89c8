"""A measured Sunnybrook stack built cheaply from the expert contours, and dciodvfy as a checker.

The model is not run: labels come from the expert's endocardial (blood pool) and epicardial contours
at ED and ES, and the areas of the other phases are interpolated over the cardiac cycle, so the
result has the shape of a real one. Data: Radau P. et al., "Evaluation Framework for Algorithms
Segmenting Short Axis Cardiac MRI", The MIDAS Journal, 2009 (CC0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.config
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from node.domain import BasalRule, ModelIdentity, StackResult
from node.inference.measurements import measure
from node.inference.qc import DEFAULT_CALIBRATION, QcFeatures, assess, qc_status
from node.pipeline.offline import collect
from node.pipeline.stacks import StackPlan, find_sax_stacks
from node.reports.sources import ReportSources, load_report_sources, load_stack_headers
from tests.validation import uids_of

PATIENT = "SCD0000101"
CONTOUR_SERIES = "SC-HF-I-1"
SUNNYBROOK_PHASES = 20
#: Class indices of the released model card (background, RV, LV myocardium, LV blood pool).
BACKGROUND, RIGHT_VENTRICLE, MYOCARDIUM, BLOOD_POOL = 0, 1, 2, 3
MODEL = ModelIdentity(name="lvseg-unet", version="1.0.0", sha256="5e" * 32, companion_sha256="c0" * 32)


@dataclass(frozen=True)
class Case:
    """A stack plan, its result and labels, and the report sources read from its files."""

    plan: StackPlan
    result: StackResult
    labels: npt.NDArray[np.uint8]
    sources: ReportSources
    #: ``[slice][phase]`` headers of every source file.
    headers: tuple[tuple[Dataset | None, ...], ...]
    #: Every UI value in the source headers (the UIDs a report may copy or reference).
    source_uids: frozenset[str]


def _polygon_mask(path: Path, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    points = np.loadtxt(path, dtype=np.float64)
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _contours(root: Path, kind: str) -> dict[int, Path]:
    """Contour files by image number (InstanceNumber)."""
    folder = root / "contours" / CONTOUR_SERIES / f"{kind}-contours"
    return {int(path.name.split("-")[2]): path for path in folder.glob(f"IM-0001-*-{kind}contour-manual.txt")}


def build_case(sunnybrook: Path) -> Case:
    """Plan the stack from its headers, rasterise the expert contours and derive a result."""
    instances = collect([sunnybrook / PATIENT], [])
    plan = find_sax_stacks(instances).stacks[0]
    inner, outer = _contours(sunnybrook, "i"), _contours(sunnybrook, "o")
    shape = (plan.rows, plan.columns)
    labels = np.zeros((plan.slices, plan.phases, *shape), dtype=np.uint8)
    contoured: set[int] = set()
    for s, row in enumerate(plan.grid):
        for p, cell in enumerate(row):
            number = cell.header.instance_number if cell is not None else None
            if number is None or number not in inner:
                continue
            blood = _polygon_mask(inner[number], shape)
            if number in outer:
                labels[s, p][_polygon_mask(outer[number], shape) & ~blood] = MYOCARDIUM
            labels[s, p][blood] = BLOOD_POOL
            contoured.add(p)
    pixel_area = plan.pixel_spacing[0] * plan.pixel_spacing[1]
    blood_px = (labels == BLOOD_POOL).sum(axis=(2, 3)).astype(np.float64)
    myo_px = (labels == MYOCARDIUM).sum(axis=(2, 3)).astype(np.float64)
    known = np.array(sorted(contoured))
    for s in range(plan.slices):
        others = np.setdiff1d(np.arange(plan.phases), known)
        blood_px[s, others] = np.interp(others, known, blood_px[s, known], period=plan.phases)
    ed_known = int(known[np.argmax(blood_px[:, known].sum(axis=0))])
    myo_px[:] = myo_px[:, [ed_known]]
    numbers = measure(blood_px, myo_px, pixel_area, plan.slice_spacing_mm)
    quality = assess(
        edv_ml=numbers.edv_ml,
        esv_ml=numbers.esv_ml,
        ef_pct=numbers.ef_pct,
        curve_ml=np.asarray(numbers.volume_curve_ml),
        blood_pool_ed_ml=blood_px[:, numbers.ed_phase] * pixel_area * plan.slice_spacing_mm / 1000.0,
        base_slice=None,
        base_closed=False,
        features=QcFeatures(
            disagreement=0.02, uncertain=0.05, basal_share=0.1, esv_ml=numbers.esv_ml, edv_ml=numbers.edv_ml
        ),
        fragment_fraction=0.0,
        stack_flags=plan.flags,
        calibration=DEFAULT_CALIBRATION,
    )

    def uids(phase: int) -> tuple[str | None, ...]:
        cells = [row[phase] for row in plan.grid]
        return tuple(None if cell is None else cell.header.sop_instance_uid for cell in cells)

    result = StackResult(
        study_instance_uid=plan.study_instance_uid,
        series_instance_uids=plan.series_instance_uids,
        frame_of_reference_uid=plan.frame_of_reference_uid,
        edv_ml=numbers.edv_ml,
        esv_ml=numbers.esv_ml,
        ef_pct=numbers.ef_pct,
        sv_ml=numbers.sv_ml,
        lv_mass_g=numbers.lv_mass_g,
        ed_phase=numbers.ed_phase,
        es_phase=numbers.es_phase,
        slices=plan.slices,
        phases=plan.phases,
        volume_curve_ml=numbers.volume_curve_ml,
        slice_spacing_mm=plan.slice_spacing_mm,
        pixel_spacing_mm=plan.pixel_spacing,
        qc_status=quality.status,
        qc_flags=quality.flags,
        confidence=quality.confidence,
        qc_features=None,
        model=MODEL,
        basal_rule=BasalRule.PER_PHASE,
        ed_sop_instance_uids=uids(numbers.ed_phase),
        es_sop_instance_uids=uids(numbers.es_phase),
        blood_pool_mm2=tuple(tuple(float(v) for v in row * pixel_area) for row in blood_px),
        myocardium_mm2=tuple(tuple(float(v) for v in row * pixel_area) for row in myo_px),
    )
    headers = load_stack_headers(plan.grid, Path("/"))
    source_uids = uids_of([dataset for row in headers for dataset in row if dataset is not None])
    return Case(
        plan=plan,
        result=result,
        labels=labels,
        sources=load_report_sources(plan.grid, result, Path("/")),
        headers=headers,
        source_uids=source_uids,
    )


@pytest.fixture(scope="session")
def case(sunnybrook: Path) -> Case:
    """SCD0000101 as a measured stack (built once per session)."""
    return build_case(sunnybrook)


#: Synthetic UIDs with a leading zero in a component, as real exports have them.
SYNTHETIC_STUDY = "1.2.826.0.1.3680043.10.999.01"
SYNTHETIC_SERIES = "1.2.826.0.1.3680043.10.999.02"
SYNTHETIC_FRAME = "1.2.826.0.1.3680043.10.999.03"
SYNTHETIC_SLICES, SYNTHETIC_PHASES, SYNTHETIC_SIZE = 3, 4, 32
SYNTHETIC_ED, SYNTHETIC_ES = 0, 2


@dataclass(frozen=True)
class Synthetic:
    """An in-memory stack of MR headers with messy dates and leading-zero UIDs, and its result."""

    result: StackResult
    headers: tuple[tuple[Dataset, ...], ...]
    labels: npt.NDArray[np.uint8]

    @property
    def evidence(self) -> list[Dataset]:
        """ED then ES headers."""
        return [row[SYNTHETIC_ED] for row in self.headers] + [row[SYNTHETIC_ES] for row in self.headers]


def synthetic_mr(slice_index: int, phase: int) -> Dataset:
    """An MR Image Storage header (no pixels) of a 3-slice, 4-phase axial stack."""
    with pydicom.config.disable_value_validation():
        dataset = Dataset()
        dataset.SOPClassUID = MRImageStorage
        dataset.SOPInstanceUID = f"{SYNTHETIC_SERIES}.{slice_index + 1}.0{phase + 1}"
        dataset.StudyInstanceUID = SYNTHETIC_STUDY
        dataset.SeriesInstanceUID = SYNTHETIC_SERIES
        dataset.FrameOfReferenceUID = SYNTHETIC_FRAME
        dataset.Modality = "MR"
        dataset.PatientName = "Doe^Jane"
        dataset.PatientID = "SYN-001"
        dataset.PatientBirthDate = "00000000"
        dataset.PatientSex = ""
        dataset.StudyDate = "20120000"
        dataset.StudyTime = "083237.000000"
        dataset.AccessionNumber = ""
        dataset.StudyID = ""
        dataset.ReferringPhysicianName = ""
        dataset.InstanceNumber = slice_index * SYNTHETIC_PHASES + phase + 1
        dataset.Rows = dataset.Columns = SYNTHETIC_SIZE
        dataset.PixelSpacing = [1.5, 1.5]
        dataset.SliceThickness = 8
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.ImagePositionPatient = [0.0, 0.0, 8.0 * slice_index]
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
    return dataset


def build_synthetic(qc_flags: tuple[str, ...] = ("missing_phases",)) -> Synthetic:
    """The synthetic stack, a disc of blood pool in a ring of myocardium, and a plausible result."""
    headers = tuple(
        tuple(synthetic_mr(s, p) for p in range(SYNTHETIC_PHASES)) for s in range(SYNTHETIC_SLICES)
    )
    yy, xx = np.mgrid[:SYNTHETIC_SIZE, :SYNTHETIC_SIZE]
    radius = np.hypot(yy - SYNTHETIC_SIZE / 2, xx - SYNTHETIC_SIZE / 2)
    labels = np.zeros((SYNTHETIC_SLICES, SYNTHETIC_PHASES, SYNTHETIC_SIZE, SYNTHETIC_SIZE), np.uint8)
    labels[..., radius < 11] = MYOCARDIUM
    labels[..., radius < 8] = BLOOD_POOL

    def uids(phase: int) -> tuple[str | None, ...]:
        return tuple(str(row[phase].SOPInstanceUID) for row in headers)

    result = StackResult(
        study_instance_uid=SYNTHETIC_STUDY,
        series_instance_uids=(SYNTHETIC_SERIES,),
        frame_of_reference_uid=SYNTHETIC_FRAME,
        edv_ml=150.04,
        esv_ml=60.02,
        ef_pct=60.0,
        sv_ml=90.02,
        lv_mass_g=110.0,
        ed_phase=SYNTHETIC_ED,
        es_phase=SYNTHETIC_ES,
        slices=SYNTHETIC_SLICES,
        phases=SYNTHETIC_PHASES,
        volume_curve_ml=(150.04, 100.0, 60.02, 120.0),
        slice_spacing_mm=8.0,
        pixel_spacing_mm=(1.5, 1.5),
        qc_status=qc_status(qc_flags),
        qc_flags=qc_flags,
        confidence=0.6703,
        qc_features=None,
        model=MODEL,
        basal_rule=BasalRule.PER_PHASE,
        ed_sop_instance_uids=uids(SYNTHETIC_ED),
        es_sop_instance_uids=uids(SYNTHETIC_ES),
        blood_pool_mm2=tuple((400.0, 300.0, 200.0, 350.0) for _ in range(SYNTHETIC_SLICES)),
        myocardium_mm2=tuple((300.0, 300.0, 300.0, 300.0) for _ in range(SYNTHETIC_SLICES)),
    )
    return Synthetic(result=result, headers=headers, labels=labels)


@pytest.fixture
def synthetic() -> Synthetic:
    """A fresh synthetic stack (needs no shared data)."""
    return build_synthetic()


def read_back(path: Path) -> Dataset:
    """The file as a receiving PACS would read it."""
    return pydicom.dcmread(path)
