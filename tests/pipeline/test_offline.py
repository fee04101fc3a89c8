"""The offline run behind ``dicomnode measure``: what it reads, and one bad stack or file losing nothing.

Phantom stacks and the released model; volumes are not asserted, only which stacks were measured.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import typer
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from node.cli import _stage_bars, app
from node.config import InferenceSettings
from node.inference.measurements import LabelGeometry
from node.inference.qc import QcFeatures
from node.inference.runner import load_segmenter
from node.pipeline.measure import NoLeftVentricle, StackMeasurer
from node.pipeline.offline import collect, measure_paths
from tests.pipeline.test_odd_input import phantom_stack
from tests.support import clear_dicomnode_env

SLICES, PHASES, SIDE = 4, 4, 48


@pytest.fixture(scope="module")
def measurer() -> StackMeasurer:
    """The released model behind the pipeline's measurer."""
    return StackMeasurer(load_segmenter(InferenceSettings()))


def _stack(directory: Path, **options: object) -> Path:
    phantom_stack(directory, slices=SLICES, phases=PHASES, side=SIDE, **options)
    return directory


def _rewrite(directory: Path, change: object) -> None:
    for path in directory.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        change(dataset)  # type: ignore[operator]
        dataset.save_as(path)


def _float_pixels_with_nan(dataset: pydicom.Dataset) -> None:
    values = dataset.pixel_array.astype(np.float32)
    values[0, :5] = np.nan
    del dataset.PixelData, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation
    dataset.BitsAllocated = 32
    dataset.FloatPixelData = values.tobytes()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: setattr(d, "PixelSpacing", [1e6, 1e6]), "field of view 4.8e+07 x 4.8e+07 mm is beyond"),
        (_float_pixels_with_nan, "pixel data holds values that are not finite numbers"),
    ],
    ids=["absurd_pixel_spacing", "float_pixels_with_nan"],
)
def test_a_stack_out_of_any_physical_range_fails_alone(
    tmp_path: Path, measurer: StackMeasurer, change: object, reason: str
) -> None:
    """Such a stack is reported with its reason; the other study's stack is still measured. Before,
    absurd Pixel Spacing sized the model grid past any memory and the run ended in a traceback, and
    one NaN pixel turned the whole stack's normalisation into NaN (EDV 0 reported as measured)."""
    good = _stack(tmp_path / "good")
    bad = _stack(tmp_path / "bad")
    _rewrite(bad, change)
    run = measure_paths([good, bad], measurer)
    assert len(run.results) == 1
    (failed,) = run.failed_stacks
    assert failed[1].startswith(reason)
    assert run.results[0].series_instance_uids != failed[0]


def test_slices_spread_beyond_any_scanner_fail_alone(tmp_path: Path, measurer: StackMeasurer) -> None:
    """Image Positions 1e300 mm apart gave infinite volumes, printed as Infinity (invalid JSON)."""
    good = _stack(tmp_path / "good")
    bad = _stack(tmp_path / "bad", offsets_mm=[k * 1e300 for k in range(SLICES)])
    run = measure_paths([good, bad], measurer)
    assert len(run.results) == 1
    ((_, reason),) = run.failed_stacks
    assert reason.startswith("the slices span 4e+300 mm, beyond")


def test_a_stack_without_any_left_ventricle_is_not_measured(tmp_path: Path, measurer: StackMeasurer) -> None:
    """Blank images hold no LV: the stack is reported as not measured, with that reason, and the other
    study's stack is still measured. Before, it was a result with EDV 0, ESV 0 and EF 0."""
    good = _stack(tmp_path / "good")
    blank = _stack(tmp_path / "blank")
    _rewrite(blank, lambda d: setattr(d, "PixelData", bytes(len(d.PixelData))))
    run = measure_paths([good, blank], measurer)
    assert len(run.results) == 1
    assert run.results[0].edv_ml > 0
    ((series, reason),) = run.failed_stacks
    assert reason == "no left ventricle found: the model labelled LV blood pool in no frame"
    assert series != run.results[0].series_instance_uids


def test_an_unexpected_error_in_one_stack_loses_no_other_result(
    tmp_path: Path,
    measurer: StackMeasurer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any error measuring one stack (injected here: a MemoryError on the second stack) is that stack's
    failure, with its type; the run goes on and keeps the first stack's result."""
    first, second = _stack(tmp_path / "first"), _stack(tmp_path / "second")
    measure = measurer.measure
    calls = iter([measure, None])

    def second_fails(*args: object, **kwargs: object) -> object:
        real = next(calls, None)
        if real is None:
            raise MemoryError("injected")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(measurer, "measure", second_fails)
    run = measure_paths([first, second], measurer)
    assert len(run.results) == 1
    assert [reason for _, reason in run.failed_stacks] == ["MemoryError: injected"]


@pytest.mark.parametrize(
    ("version", "augment", "augmented", "rescaled"),
    [("2.0.0", None, False, False), ("2.0.0", True, True, True), ("1.0.0", None, True, False)],
    ids=["default_model_unweighted", "asked_for", "weighed_by_the_card"],
)
def test_test_time_augmentation_runs_only_where_it_is_weighed_or_asked_for(
    tmp_path: Path, version: str, augment: bool | None, augmented: bool, rescaled: bool
) -> None:
    """2.0.0's calibration does not weigh the test-time-augmentation disagreement, so the node no longer
    runs its variants through both networks (a third of the QC's network time); the result stores what
    was measured, and its confidence is the calibration's. 1.0.0's card weighs mirror and contrast (not
    scale, which no card weighs), and the model evaluation asks for all of them (it fits the
    calibration over every term)."""
    measurer = StackMeasurer(load_segmenter(InferenceSettings(model_version=version)), augment=augment)
    calls: list[int] = []
    in_qc: list[bool] = [False]
    segment, disagreements = measurer.segmenter.segment, measurer._disagreements

    def counted(*args: Any, **kwargs: Any) -> Any:
        if in_qc[0]:
            calls.append(1)
        return segment(*args, **kwargs)

    def marked(*args: Any, **kwargs: Any) -> Any:
        in_qc[0] = True
        try:
            return disagreements(*args, **kwargs)
        finally:
            in_qc[0] = False

    measurer.segmenter.segment = counted  # type: ignore[method-assign]
    measurer._disagreements = marked  # type: ignore[method-assign]
    companion_calls: list[int] = []
    if measurer.segmenter.companion is not None:
        alone = measurer.segmenter.companion.segment

        def companion_counted(*args: Any, **kwargs: Any) -> Any:
            companion_calls.append(1)
            return alone(*args, **kwargs)

        measurer.segmenter.companion.segment = companion_counted  # type: ignore[method-assign]
    (result,) = measure_paths([_stack(tmp_path / "stack")], measurer).results
    features = result.qc_features
    assert features is not None
    assert ("disagreement" in features) is augmented
    assert (features.get("scale_sensitivity") is not None) is rescaled
    assert {"uncertain", "esv_ml", "edv_ml", "companion_disagreement"} <= features.keys()
    # Per ED and ES phase a mirrored and two contrast variants, and two scales by the model alone; the
    # companion's own labels come from the pair's segmentation of those phases, not from another run.
    assert len(calls) == 2 * (3 * augmented + 2 * rescaled)
    assert companion_calls == []
    stored = QcFeatures(**{"disagreement": None, **features})
    assert measurer.calibration.confidence(stored) == pytest.approx(result.confidence)


def test_a_stack_without_a_ventricle_is_given_up_only_after_the_pair_looked_at_every_frame() -> None:
    """Where the model alone finds no LV blood pool in any frame, the pair (model and companion)
    segments every frame before the stack is refused as having no left ventricle."""
    measurer = StackMeasurer(load_segmenter(InferenceSettings()))
    assert measurer.segmenter.companion is not None
    calls: list[tuple[int, bool]] = []
    segment = measurer.segmenter.segment

    def counted(frames: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((len(frames), bool(kwargs.get("alone", False))))
        return segment(frames, *args, **kwargs)

    measurer.segmenter.segment = counted  # type: ignore[method-assign]
    blank = np.zeros((12, 96, 96), dtype=np.float32)  # 3 slices x 4 phases, nothing to see
    with pytest.raises(NoLeftVentricle):
        measurer.assess(blank, np.ones((3, 4), dtype=bool), LabelGeometry((1.5, 1.5), 8.0, None))
    assert calls == [(12, True), (12, False)]  # the model alone, then the pair on all 12 frames


def test_files_are_read_only_once_known_to_be_dicom(tmp_path: Path) -> None:
    """A large file of another kind is judged by its first bytes (a pipe is not read at all, which
    would wait for a writer forever); both are listed as unreadable beside the stack's instances."""
    folder = _stack(tmp_path / "study")
    large = folder / "video.mp4"
    with large.open("wb") as file:
        file.truncate(256 * 1024 * 1024)  # sparse: no disk, but read whole it takes 256 MiB
    pipe = folder / "pipe"
    os.mkfifo(pipe)
    unreadable: list[tuple[Path, str]] = []
    tracemalloc.start()
    try:
        instances = collect([folder], unreadable)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(instances) == SLICES * PHASES
    assert sorted(unreadable) == [(pipe, "not a regular file"), (large, "not a DICOM Part 10 file")]
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MiB held while reading the folder"


def test_linked_folders_are_followed_once_and_dangling_links_reported(tmp_path: Path) -> None:
    """A folder reached through a link is read like any other (it was skipped without a word), a link
    loop ends, and a link that leads nowhere is listed rather than left out unsaid."""
    study = _stack(tmp_path / "study", study=generate_uid())
    top = tmp_path / "top"
    top.mkdir()
    (top / "linked").symlink_to(study, target_is_directory=True)
    (top / "loop").symlink_to(top, target_is_directory=True)
    (top / "gone.dcm").symlink_to(tmp_path / "nothing-here.dcm")
    unreadable: list[tuple[Path, str]] = []
    instances = collect([top], unreadable)
    assert len(instances) == SLICES * PHASES
    assert unreadable == [(top / "gone.dcm", "link to nothing")]


def test_progress_counts_files_read_then_stacks_measured(tmp_path: Path, measurer: StackMeasurer) -> None:
    """The bar moves while headers are read (it stood still before the first stack was measured), then
    per stack."""
    folder = _stack(tmp_path / "study")
    (folder / "notes.txt").write_text("not DICOM")
    calls: list[tuple[str, int, int]] = []
    measure_paths([folder], measurer, lambda *call: calls.append(call))
    files = SLICES * PHASES + 1
    reading = [("reading", done, files) for done in range(1, files + 1)]
    assert calls == [*reading, ("measuring", 0, 1), ("measuring", 1, 1)]


def test_progress_bars_follow_a_count_that_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DICOMDIR named alone is one file known at first, then its files join the count: the bar
    shows the share read (it stood at 100 % before, click keeping a bar finished once it reached its
    length). The measuring bar starts at 0 before the first stack runs."""
    created: list[Any] = []
    real = typer.progressbar

    def capture(*args: Any, **kwargs: Any) -> Any:
        created.append(real(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(typer, "progressbar", capture)
    with _stage_bars() as progress:
        progress("reading", 1, 1)
        progress("reading", 2, 4)
        reading = created[0].pct
        progress("measuring", 0, 2)
        at_start = created[1].pct
        progress("measuring", 1, 2)
        measuring = created[1].pct
    assert [bar.label for bar in created] == ["reading", "measuring"]
    assert (reading, at_start, measuring) == (0.5, 0.0, 0.5)


def _on_media(source: Path, media: Path) -> None:
    """Write the instances under ``source`` as a File-set (a DICOMDIR and its PT*/ST*/SE*/IM* files),
    as a CD export does."""
    file_set = FileSet()
    for path in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        # The Patient, Study and Series records need these (PS3.3 F.5); the phantoms leave them out.
        dataset.PatientID = "PHANTOM"
        dataset.StudyDate, dataset.StudyTime, dataset.StudyID = "20260101", "120000", "1"
        dataset.AccessionNumber = ""
        file_set.add(dataset)
    file_set.write(media)


def test_a_dicomdir_is_followed_and_its_files_read_once(tmp_path: Path, measurer: StackMeasurer) -> None:
    """A DICOMDIR named alone leads to the files it lists; a media folder is read with each instance
    once, though the walk and the DICOMDIR both find it; the files it lists join the progress count.
    Before, the DICOMDIR was reported as an instance missing its UIDs, and named alone it gave 'no
    stack found'."""
    _on_media(_stack(tmp_path / "source"), tmp_path / "cd")
    dicomdir = tmp_path / "cd" / "DICOMDIR"
    for named in ([dicomdir], [tmp_path / "cd"], [tmp_path / "cd", dicomdir]):
        run = measure_paths(named, measurer)
        assert (len(run.results), run.instances, run.unreadable) == (1, SLICES * PHASES, []), named
    counts: list[tuple[int, int]] = []
    collect([dicomdir], [], lambda done, known: counts.append((done, known)))
    assert (counts[0], counts[-1]) == ((1, 1), (1 + SLICES * PHASES, 1 + SLICES * PHASES))


def test_a_file_the_dicomdir_lists_but_the_media_lacks_is_reported(tmp_path: Path) -> None:
    """The missing file is reported by its path; the files present are still read."""
    _on_media(_stack(tmp_path / "source"), tmp_path / "cd")
    listed = sorted((tmp_path / "cd").rglob("IM*"))
    listed[0].unlink()
    unreadable: list[tuple[Path, str]] = []
    assert len(collect([tmp_path / "cd" / "DICOMDIR"], unreadable)) == SLICES * PHASES - 1
    assert unreadable == [(listed[0], "No such file or directory")]


@pytest.mark.parametrize(
    ("file_id", "shown"),
    [
        (["..", "source", "slice0-phase0.dcm"], "..\\source\\slice0-phase0.dcm"),
        (["PT000000", "IM\x00001"], "PT000000\\IM\\x00001"),
    ],
    ids=["outside_its_folder", "control_character"],
)
def test_a_file_id_that_is_no_file_under_the_folder_is_refused(
    tmp_path: Path, file_id: list[str], shown: str
) -> None:
    """Such a DICOMDIR is reported and nothing it lists is read: nothing outside the media, and no name
    with a NUL byte (which ended the whole run in a traceback)."""
    _on_media(_stack(tmp_path / "source"), tmp_path / "cd")
    dicomdir = tmp_path / "cd" / "DICOMDIR"
    dataset = pydicom.dcmread(dicomdir)
    dataset.DirectoryRecordSequence[-1].ReferencedFileID = file_id
    dataset.save_as(dicomdir)
    unreadable: list[tuple[Path, str]] = []
    assert collect([dicomdir], unreadable) == []
    reason = f"DICOMDIR cannot be read: Referenced File ID {shown} is not a file under its folder"
    assert unreadable == [(dicomdir, reason)]


def _lower_case(media: Path) -> None:
    """Rename everything under ``media`` as Linux shows a CD without Rock Ridge (``mount -o
    map=normal``): in lower case."""
    for path in sorted(media.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.rename(path.with_name(path.name.lower()))


def test_a_dicomdir_on_a_lower_case_mount_finds_its_files(tmp_path: Path) -> None:
    """File IDs are upper case (``PT000000\\ST000000\\...``); a CD mounted in lower case, or showing an
    ISO 9660 version (``;1``), still gives every file, and none is reported missing."""
    _on_media(_stack(tmp_path / "source"), tmp_path / "cd")
    _lower_case(tmp_path / "cd")
    versioned = sorted((tmp_path / "cd").rglob("im*"))[0]
    versioned.rename(versioned.with_name(versioned.name.upper() + ";1"))
    for named in ([tmp_path / "cd" / "dicomdir"], [tmp_path / "cd"]):
        unreadable: list[tuple[Path, str]] = []
        assert len(collect(named, unreadable)) == SLICES * PHASES
        assert unreadable == [], named


def test_a_truncated_dicomdir_or_a_listed_link_loop_is_reported(tmp_path: Path) -> None:
    """A DICOMDIR cut short is reported as truncated (pydicom reads the records it can and says
    nothing, so slices went missing unsaid); a listed file that is a link loop is reported (it ended
    the whole run in a traceback)."""
    _on_media(_stack(tmp_path / "source"), tmp_path / "cd")
    dicomdir = tmp_path / "cd" / "DICOMDIR"
    whole = dicomdir.read_bytes()

    dicomdir.write_bytes(whole[: len(whole) * 2 // 3])
    unreadable: list[tuple[Path, str]] = []
    assert collect([dicomdir], unreadable) == []
    ((path, reason),) = unreadable
    assert (path, reason.split(" (")[0]) == (dicomdir, "DICOMDIR cannot be read: truncated")

    dicomdir.write_bytes(whole)
    loop = sorted((tmp_path / "cd").rglob("IM*"))[0]
    loop.unlink()
    loop.symlink_to(loop)
    unreadable.clear()
    assert len(collect([dicomdir], unreadable)) == SLICES * PHASES - 1
    ((path, reason),) = unreadable
    assert path == loop
    assert "loop" in reason.lower()


def test_the_table_and_messages_name_each_stack_and_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Table rows are followed by which study and series each measured, and how (model and basal
    rule); a study without a stack, an empty input and a --config file that is not there are each
    named (the rows were numbered only, and the messages counted studies without naming them)."""
    clear_dicomnode_env(monkeypatch)
    first, second = _stack(tmp_path / "first"), _stack(tmp_path / "second")
    lone = tmp_path / "lone"
    phantom_stack(lone, slices=1, phases=PHASES, side=SIDE)  # one slice: no stack
    runner = CliRunner()
    result = runner.invoke(app, ["measure", str(first), str(second), str(lone)])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].split()[:2] == ["stack", "slices"] and len(rows) == 7
    named = [row.strip() for row in rows[3:]]
    for number, folder in enumerate([first, second], start=1):
        dataset = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
        expected = f"{number} study {dataset.StudyInstanceUID}, series {dataset.SeriesInstanceUID}"
        assert named[2 * number - 2] == expected
        assert named[2 * number - 1].endswith("basal slices judged per phase (SCMR)"), named
    lone_study = pydicom.dcmread(next(lone.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    assert f"study {lone_study}: no short-axis cine found" in result.stderr

    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["measure", str(tmp_path / "empty")])
    assert (empty.exit_code, empty.stderr.strip()) == (1, "no files found")
    absent = runner.invoke(app, ["measure", str(first), "--config", str(tmp_path / "absent.toml")])
    assert absent.exit_code == 2
    assert absent.stderr.strip() == f"error: --config: config file not found: {tmp_path / 'absent.toml'}"
