"""Component tests for ONNX Runtime segmentation (node.inference.runner) on a tiny and the released model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from structlog.testing import capture_logs
from threadpoolctl import threadpool_info, threadpool_limits

from models.spec import INPUT as SPEC
from models.spec import OUTPUT
from node.config import HEART_WINDOW_MARGIN, MIN_HEART_WINDOW_MARGIN
from node.errors import ConfigError
from node.inference import runner
from node.inference.card import ModelCard, sha256_of
from node.inference.preprocess import normalise
from node.inference.registry import DEFAULT_MODEL_DIR, ReleasedModel, find_model
from node.inference.runner import (
    BLAS_THREADS,
    CPU,
    CUDA,
    LOCATE_EVERY,
    Segmenter,
    Threading,
    plan_threading,
    resolve_providers,
)

ROWS, COLS = 70, 90
SPACING = (1.4, 1.3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> ReleasedModel:
    """A randomly initialised five-level U-Net exported to ONNX, with a card of its own."""
    torch = pytest.importorskip("torch", reason="exporting the tiny model needs torch (the train extra)")
    from export.onnx_export import export_onnx
    from models.network import UNet

    torch.manual_seed(0)
    network = UNet((4, 8, 16, 32, 64), len(OUTPUT.classes))
    path = tmp_path_factory.mktemp("tiny-model") / "tiny-0.0.1.onnx"
    export_onnx(network, path, SPEC, OUTPUT)
    card = ModelCard(
        name="tiny", version="0.0.1", file=path.name, sha256=sha256_of(path), input=SPEC, output=OUTPUT
    )
    return ReleasedModel(card=card, path=path)


def test_a_companion_network_makes_a_deep_ensemble(tiny_model: ReleasedModel, tmp_path: Path) -> None:
    """With a companion on its card, the segmenter's logits are the mean of the two networks' (its
    labels follow them) unless asked for the model's alone, and the companion stays available alone
    for quality control."""
    torch = pytest.importorskip("torch", reason="exporting the tiny model needs torch (the train extra)")
    from export.onnx_export import export_onnx
    from models.network import UNet

    torch.manual_seed(1)
    path = tmp_path / "tiny-0.0.1-companion.onnx"
    network = UNet((4, 8, 16, 32, 64), len(OUTPUT.classes))
    with torch.no_grad():  # a lean to one class: alone it labels these frames otherwise than the pair
        network.head.bias.copy_(torch.tensor([0.0, 0.0, 0.2, 0.0]))
    export_onnx(network, path, SPEC, OUTPUT)
    other = ReleasedModel(
        tiny_model.card.model_copy(update={"file": path.name, "sha256": sha256_of(path)}), path
    )
    pair = Segmenter(ReleasedModel(tiny_model.card, tiny_model.path, companion=other), providers=[CPU])
    alone, companion = Segmenter(tiny_model, providers=[CPU]), Segmenter(other, providers=[CPU])
    assert pair.companion is not None and pair.companion.companion is None
    batch = np.random.default_rng(3).random((2, 1, 64, 80)).astype(np.float32)
    first, second = alone.logits(batch), companion.logits(batch)
    assert np.abs(first - second).max() > 1e-3  # two different networks
    np.testing.assert_allclose(pair.logits(batch), (first + second) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pair.companion.logits(batch), second)
    np.testing.assert_array_equal(pair.logits(batch, alone=True), first)  # the model's network only
    # A pair's segmentation keeps the companion's own labels of the same frames, on the same window.
    frames = np.random.default_rng(4).random((3, ROWS, COLS)).astype(np.float32)
    both = pair.segment(frames, SPACING, normalised=True)
    assert both.companion_labels is not None
    by_itself = companion.segment(frames, SPACING, normalised=True)
    np.testing.assert_array_equal(both.companion_labels, by_itself.labels)
    assert not np.array_equal(both.labels, both.companion_labels)  # not the pair's
    assert pair.segment(frames, SPACING, normalised=True, alone=True).companion_labels is None


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Five non-square frames of stored (uint16) pixel values."""
    rng = np.random.default_rng(0)
    r = np.linspace(-1, 1, ROWS)[:, None]
    c = np.linspace(-1, 1, COLS)[None, :]
    blob = np.exp(-(r**2 + c**2) * 4.0)
    stack = [blob * (800 + 100 * k) + rng.normal(0, 30, (ROWS, COLS)) + 200 for k in range(5)]
    return np.clip(np.stack(stack), 0, None).astype(np.uint16)


def test_segment_returns_labels_on_the_original_grid(tiny_model: ReleasedModel, frames: np.ndarray) -> None:
    """Labels have the original (n, rows, cols) shape and are valid class indices."""
    segmentation = Segmenter(tiny_model, providers=[CPU], batch_size=2).segment(frames, SPACING)
    assert segmentation.labels.shape == frames.shape
    assert segmentation.labels.dtype == np.uint8
    assert int(segmentation.labels.max()) < len(OUTPUT.classes)


def test_uncertain_pixels_are_counted_within_the_frame(tiny_model: ReleasedModel, frames: np.ndarray) -> None:
    """uncertain_px holds one count per frame between 0 and rows x cols."""
    segmentation = Segmenter(tiny_model, providers=[CPU], batch_size=2).segment(frames, SPACING)
    assert segmentation.uncertain_px.shape == (frames.shape[0],)
    assert (segmentation.uncertain_px >= 0).all()
    assert (segmentation.uncertain_px <= ROWS * COLS).all()


def test_batching_and_prior_normalisation_do_not_change_the_result(
    tiny_model: ReleasedModel, frames: np.ndarray
) -> None:
    """Labels are the same whatever the batch size, and for frames normalised beforehand."""
    reference = Segmenter(tiny_model, providers=[CPU], batch_size=8).segment(frames, SPACING)
    segmenter = Segmenter(tiny_model, providers=[CPU], batch_size=2)
    batched = segmenter.segment(frames, SPACING)
    prenormalised = segmenter.segment(normalise(frames, SPEC.normalisation), SPACING, normalised=True)
    np.testing.assert_array_equal(batched.labels, reference.labels)
    np.testing.assert_array_equal(prenormalised.labels, reference.labels)
    np.testing.assert_array_equal(batched.uncertain_px, reference.uncertain_px)


def test_released_model_segments_sunnybrook_mid_ventricular_ed_frame(
    shared_data: Path, sunnybrook: Path
) -> None:
    """The released model reaches Dice >= 0.85 against the expert LV contour on a mid-ventricular ED frame."""
    from models.data import load_sunnybrook, polygon_area
    from models.predict import dice

    case = load_sunnybrook(shared_data, "SCD0000101")
    if not case.contours:
        pytest.skip(f"expert contours for SCD0000101 absent under {sunnybrook / 'contours'}")
    contoured_slices = sorted({slice_index for slice_index, _ in case.contours})
    middle = contoured_slices[len(contoured_slices) // 2]
    phases = [phase for slice_index, phase in case.contours if slice_index == middle]
    ed_phase = max(phases, key=lambda phase: polygon_area(case.contours[(middle, phase)]))

    model = find_model(DEFAULT_MODEL_DIR, "lvseg-unet")
    segmenter = Segmenter(model, providers=[CPU])
    # Normalise the whole stack (all slices x phases) as deployment does, then run the network on the
    # one frame scored: frames are segmented independently, so its labels equal those of a whole-stack
    # segment() call (checked on the tiny model above) at 1/240 of the CPU time.
    stack = normalise(case.frames, model.card.input.normalisation)
    frame = stack[middle, ed_phase][None]
    labels = segmenter.segment(frame, case.pixel_spacing, normalised=True).labels[0]
    predicted = labels == model.card.class_index("lv_blood_pool")
    score = dice(predicted, case.contour_mask(middle, ed_phase))
    assert score >= 0.85, f"Dice {score:.3f} on slice {middle}, ED phase {ed_phase}"


@pytest.fixture(scope="module")
def released() -> ReleasedModel:
    """The shipped model (checksum verified)."""
    return find_model(DEFAULT_MODEL_DIR, "lvseg-unet")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def test_heart_window_labels_match_the_whole_grid_on_sunnybrook(
    released: ReleasedModel, shared_data: Path, sunnybrook: Path
) -> None:
    """On a real stack, the two-pass heart window gives LV labels with Dice >= 0.99 against the whole grid.

    Every slice of SCD0000101 at four phases spread over the cycle (48 frames, a fifth of the stack's
    CPU time), normalised with the whole stack as deployment does.
    """
    from models.data import load_sunnybrook

    case = load_sunnybrook(shared_data, "SCD0000101")
    stack = normalise(case.frames, released.card.input.normalisation)
    frames = stack[:, ::5].reshape(-1, *stack.shape[2:])
    whole = Segmenter(released, providers=[CPU]).segment(frames, case.pixel_spacing, normalised=True)
    roi = Segmenter(released, providers=[CPU], heart_margin=HEART_WINDOW_MARGIN).segment(
        frames, case.pixel_spacing, normalised=True
    )
    assert whole.heart is None
    assert roi.heart is not None
    for name in ("lv_myocardium", "lv_blood_pool"):
        index = released.card.class_index(name)
        score = _dice(roi.labels == index, whole.labels == index)
        assert score >= 0.99, f"{name}: Dice {score:.4f}"


def test_heart_window_falls_back_to_the_whole_grid_without_lv(released: ReleasedModel) -> None:
    """A blank stack has no LV: the first pass finds no heart, and every frame runs on the whole grid."""
    frames = np.zeros((2 * LOCATE_EVERY, 128, 112), dtype=np.float32)
    segmenter = Segmenter(released, providers=[CPU], heart_margin=HEART_WINDOW_MARGIN)
    roi = segmenter.segment(frames, (1.4, 1.4), normalised=True)
    whole = Segmenter(released, providers=[CPU]).segment(frames, (1.4, 1.4), normalised=True)
    assert roi.heart is None
    np.testing.assert_array_equal(roi.labels, whole.labels)
    np.testing.assert_array_equal(roi.uncertain_px, whole.uncertain_px)


def test_heart_window_is_on_by_default_and_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node runs the heart window by default; HEART_WINDOW_MARGIN=0 runs the whole grid."""
    from node.config import load_settings
    from node.errors import ConfigError
    from node.inference.runner import load_segmenter
    from tests.support import clear_dicomnode_env

    clear_dicomnode_env(monkeypatch)
    assert load_segmenter(load_settings().inference).heart_margin == HEART_WINDOW_MARGIN
    monkeypatch.setenv("DICOMNODE_INFERENCE__HEART_WINDOW_MARGIN", "0")
    assert load_segmenter(load_settings().inference).heart_margin is None
    monkeypatch.setenv("DICOMNODE_INFERENCE__HEART_WINDOW_MARGIN", str(MIN_HEART_WINDOW_MARGIN - 1))
    with pytest.raises(ConfigError, match=f"HEART_WINDOW_MARGIN: .*at least {MIN_HEART_WINDOW_MARGIN}"):
        load_settings()


def test_a_segmenter_keeps_numpys_blas_to_one_thread(tiny_model: ReleasedModel) -> None:
    """OpenBLAS's spinning idle threads would take the cores ONNX Runtime's pool runs on."""
    with threadpool_limits(limits=2, user_api="blas"):
        Segmenter(tiny_model, providers=[CPU], intra_op_threads=1)
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas, "NumPy's BLAS is not visible to threadpoolctl"
        assert {pool["num_threads"] for pool in blas} == {BLAS_THREADS}


@pytest.mark.parametrize(
    ("providers", "intra", "parallel", "expected"),
    [
        ([CPU], 0, 0, Threading(parallel_batches=4, intra_op_threads=1)),  # one batch per core
        ([CPU], 2, 0, Threading(parallel_batches=2, intra_op_threads=2)),  # cores shared out
        ([CPU], 8, 0, Threading(parallel_batches=1, intra_op_threads=8)),
        ([CPU], 0, 2, Threading(parallel_batches=2, intra_op_threads=2)),
        ([CPU], 0, 1, Threading(parallel_batches=1, intra_op_threads=0)),  # ORT chooses for one run
        ([CPU], 3, 5, Threading(parallel_batches=5, intra_op_threads=3)),  # explicit values are kept
        ([CUDA, CPU], 0, 0, Threading(parallel_batches=4, intra_op_threads=1)),  # CPU work overlaps
        ([CUDA, CPU], 0, 1, Threading(parallel_batches=1, intra_op_threads=4)),
        ([CUDA, CPU], 2, 0, Threading(parallel_batches=2, intra_op_threads=2)),
    ],
)
def test_threading_plan_shares_the_cores_out(
    providers: list[str], intra: int, parallel: int, expected: Threading
) -> None:
    """Automatic values (0) never oversubscribe a 4-core machine, on CUDA too (where the CPU's work
    is most of a stack's)."""
    assert plan_threading(providers, intra, parallel, cores=4) == expected


def test_parallel_batches_give_the_serial_result(tiny_model: ReleasedModel, frames: np.ndarray) -> None:
    """Batches on several threads write the same labels and QC figures as one after the other."""
    serial = Segmenter(tiny_model, providers=[CPU], batch_size=1, parallel_batches=1).segment(frames, SPACING)
    parallel = Segmenter(tiny_model, providers=[CPU], batch_size=1, parallel_batches=3)
    assert parallel.threading.parallel_batches == 3
    result = parallel.segment(frames, SPACING)
    np.testing.assert_array_equal(result.labels, serial.labels)
    np.testing.assert_array_equal(result.uncertain_px, serial.uncertain_px)


def test_provider_names_onnx_runtime_does_not_know_or_offer_are_configuration_errors() -> None:
    """A typo is an error at start-up, not ONNX Runtime's silent fall back; a known provider this
    onnxruntime lacks is left out while another configured one remains."""
    with pytest.raises(ConfigError, match="unknown ONNX Runtime provider CPU;"):
        resolve_providers(["CPU"])
    missing = next(name for name in ort.get_all_providers() if name not in ort.get_available_providers())
    with pytest.raises(ConfigError, match=f"offers none of {missing};"):
        resolve_providers([missing])
    assert resolve_providers([missing, CPU]) == [CPU]
    default = [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
    assert resolve_providers(None) == resolve_providers([]) == default


def test_a_session_that_falls_back_to_cpu_plans_its_threads_for_cpu(
    released: ReleasedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime-gpu offers CUDA whether or not there is a GPU; without one its session runs on CPU,
    whose batches and threads are planned otherwise than CUDA's. CI has no onnxruntime-gpu, so the
    offer is patched in; the session and its fall back to CPU are ONNX Runtime's own."""
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *available])
    segmenter = Segmenter(released, cores=4)
    assert segmenter.providers[0] == CPU
    assert segmenter.threading == plan_threading([CPU], cores=4) == Threading(4, 1)


def test_cuda_libraries_are_preloaded_once_and_their_failures_logged_not_printed(
    released: ReleasedModel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """onnxruntime-gpu's ``preload_dlls`` loads CUDA and cuDNN from NVIDIA's pip packages and prints
    what it could not load. The node calls it once, before its first CUDA session, and moves that text
    to the log: ``measure --json`` keeps standard output for its JSON. CI has no onnxruntime-gpu, so the
    offer of CUDA and ``preload_dlls`` are patched in (the session itself is ONNX Runtime's own)."""
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *available])
    calls: list[int] = []

    def preload_dlls() -> None:
        calls.append(1)
        print("Failed to load libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(ort, "preload_dlls", preload_dlls, raising=False)
    monkeypatch.setattr(runner, "_cuda_preloaded", False)
    with capture_logs() as logs:
        Segmenter(released, providers=[CPU], cores=4)
        assert calls == []
        Segmenter(released, cores=4)
        Segmenter(released, cores=4)
    assert calls == [1]
    assert "libcudnn" not in capsys.readouterr().out
    (warning,) = [entry for entry in logs if entry["event"] == "cuda libraries not all loaded"]
    assert "libcudnn.so.9" in warning["detail"]
