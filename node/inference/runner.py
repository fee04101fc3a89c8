"""ONNX Runtime inference: one session per model for the life of the process.

The runtime imports no torch. Preprocessing is driven entirely by the model card.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from node.config import InferenceSettings
from node.errors import ConfigError
from node.inference.preprocess import (
    Box,
    Geometry,
    Window,
    argmax_classes,
    crop_window,
    frame_box,
    full_window,
    heart_window,
    interpolated_argmax,
    normalise,
    plan_geometry,
    window_to_model_grid,
)
from node.inference.registry import ReleasedModel, find_model
from node.logging import get_logger

log = get_logger(__name__)

#: Threads NumPy's BLAS may use in a process that runs ONNX Runtime (see :func:`limit_blas_threads`).
BLAS_THREADS = 1

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu is installed, else CPU.

    onnxruntime-gpu offers CUDA whether or not a GPU is there; :class:`Segmenter` falls back to CPU
    when the session cannot use it.
    """
    available = ort.get_available_providers()
    return [CUDA, CPU] if CUDA in available else [CPU]


def resolve_providers(requested: list[str] | None) -> list[str]:
    """The providers to ask ONNX Runtime for: the configured ones it offers, else :func:`default_providers`.

    Raises
    ------
    ConfigError
        A name ONNX Runtime does not know (``CPU`` for ``CPUExecutionProvider``, say), or none of the
        configured providers is offered by the installed onnxruntime.
    """
    if not requested:
        return default_providers()
    unknown = [name for name in requested if name not in ort.get_all_providers()]
    available = ort.get_available_providers()
    if unknown:
        raise ConfigError(
            f"DICOMNODE_INFERENCE__PROVIDERS: unknown ONNX Runtime provider {', '.join(unknown)}; "
            f"this onnxruntime offers {', '.join(available)}"
        )
    offered = [name for name in requested if name in available]
    if not offered:
        raise ConfigError(
            f"DICOMNODE_INFERENCE__PROVIDERS: this onnxruntime offers none of {', '.join(requested)}; "
            f"it offers {', '.join(available)}"
        )
    if len(offered) < len(requested):
        log.warning(
            "configured execution providers not offered by this onnxruntime are left out",
            left_out=[name for name in requested if name not in offered],
        )
    return offered


_cuda_preloaded = False
_cuda_preload_lock = threading.Lock()


def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries the CUDA provider needs, once per process.

    onnxruntime-gpu's CUDA provider links CUDA and cuDNN by name; installed from PyPI with its
    ``cuda`` and ``cudnn`` extras (``pip install "dicomnode[gpu]"``), they lie in NVIDIA's packages
    beside it, which the system's loader does not search. ``onnxruntime.preload_dlls`` loads them
    from there, else from the loader's own path (a system CUDA install). It reports a library it could
    not load by printing; that text goes to the log, not to standard output (``measure --json``). A
    session whose provider still cannot start falls back to CPU with a warning (:class:`Segmenter`).
    """
    global _cuda_preloaded
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with _cuda_preload_lock:  # a second session waits until the libraries are loaded
        if _cuda_preloaded:
            return
        _cuda_preloaded = True
        printed = io.StringIO()
        # Segmenters are built before the node's threads start, so no other thread's output is caught.
        with contextlib.redirect_stdout(printed):
            try:
                preload()
            except Exception as exc:  # noqa: BLE001 - whatever it raises, the session falls back to CPU
                print(f"{type(exc).__name__}: {exc}")
    if printed.getvalue().strip():
        log.warning("cuda libraries not all loaded", detail=printed.getvalue().strip()[-2000:])


def limit_blas_threads() -> None:
    """Keep NumPy's BLAS (OpenBLAS) to ``BLAS_THREADS`` threads for the rest of the process.

    OpenBLAS keeps its idle threads spinning for a while after each call (the resampling matrix
    products of preprocessing are such calls), and they take the cores ONNX Runtime's own pool is
    working on. Measured on SCD0000101 (240 frames, 2 cores, 3 runs each): ``Segmenter.segment``
    2.6-3.1 s with OpenBLAS's default threads, 1.8-2.1 s with one (``OPENBLAS_NUM_THREADS=1``).
    The limit is process-wide (OpenBLAS has one thread count), which suits the node: the heavy
    numerical work is ONNX Runtime's, and its threads are configured on the session.
    """
    threadpool_limits(limits=BLAS_THREADS, user_api="blas")


@dataclass(frozen=True)
class Threading:
    """How a stack's batches use the CPU: this many batches at once, each run on this many threads.

    ``intra_op_threads`` 0 lets ONNX Runtime choose (all cores).
    """

    parallel_batches: int
    intra_op_threads: int


def plan_threading(
    providers: list[str], intra_op_threads: int = 0, parallel_batches: int = 0, cores: int | None = None
) -> Threading:
    """Resolve the settings' automatic values (0) for a session on ``providers``.

    On CPU, by default, each core runs its own batch on one thread: preprocessing, ONNX Runtime and
    the resampling back then overlap, and single-threaded runs have no synchronisation between
    threads inside each small convolution. Measured on SCD0000101 (240 frames, 2 cores, 6 interleaved
    runs, identical labels): 2.03 s median against 2.46 s for one batch at a time on both cores
    (``tests/benchmarks/measure_benchmark.py`` prints the figures of a run).

    With CUDA first the network runs on the GPU, and what is left on the CPU (resampling each batch to
    the model grid and back, the probabilities quality control counts) is most of a stack's time;
    NumPy releases the GIL for it, so by default each core works on its own batch here too, and the
    session's CPU-side threads (for the few operators CUDA leaves to the CPU) are the cores shared out
    as on CPU.
    Measured on an H200 with 16 cores (``tests/benchmarks/cuda_benchmark.py``): see that benchmark's
    figures in the README.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    available = max(1, cores or 1)
    if parallel_batches == 0:
        parallel_batches = max(1, available // intra_op_threads) if intra_op_threads else available
    if intra_op_threads == 0 and (parallel_batches > 1 or (providers and providers[0] == CUDA)):
        intra_op_threads = max(1, available // parallel_batches)
    return Threading(parallel_batches=parallel_batches, intra_op_threads=intra_op_threads)


#: A pixel whose most likely class has less probability than this counts as uncertain.
UNCERTAIN_BELOW = 0.6

#: Output classes whose extent bounds the heart window, and the label given outside it.
HEART_CLASSES = ("lv_blood_pool", "lv_myocardium")
BACKGROUND = "background"
#: The first pass locates the heart on one frame in this many, evenly spread over the stack; it runs
#: on stacks of at least twice as many frames (below that the whole grid costs about as much).
LOCATE_EVERY = 10
#: Above this fraction of the padded grid, a heart window saves too little: the whole grid is used.
MAX_WINDOW_FRACTION = 0.75


@dataclass(frozen=True)
class Segmentation:
    """Labels on the original frame grid, with per-frame uncertainty for QC.

    Attributes
    ----------
    labels
        ``(n, rows, cols)`` class index per pixel.
    uncertain_px
        ``(n,)`` pixels per frame whose most likely class is below ``UNCERTAIN_BELOW``.
    heart
        The LV extent (original pixels) whose window the network ran on; None when it ran on the
        whole grid. Outside the window, labels are background, with probability 1 in the QC figures.
    companion_labels
        Where a companion network took part (the pair): ``(n, rows, cols)`` its labels alone, which
        quality control weighs against the pair's; None otherwise.
    """

    labels: npt.NDArray[np.uint8]
    uncertain_px: npt.NDArray[np.int64]
    heart: Box | None = None
    companion_labels: npt.NDArray[np.uint8] | None = None


class Segmenter:
    """A released model loaded into one ONNX Runtime session (two where its card names a companion
    network: the pair segments as a deep ensemble, the mean of their logits, unless asked for the
    model alone).

    Without ``heart_margin`` every frame runs on the whole model grid. With it (the node's default,
    :data:`node.config.HEART_WINDOW_MARGIN`), a stack of at least ``2 * LOCATE_EVERY`` frames runs in
    two passes: the whole grid of one frame in ``LOCATE_EVERY`` finds the LV, then every frame runs on
    a window of the grid around it, ``heart_margin`` model pixels wider on each side. The window's
    edge changes the network's context, so labels differ slightly from the whole grid's. Measured with
    margin 40 against the whole grid (with 1.0.0, one network):

    - SCD0000101 inference on 2 cores: 1.51 s median (1.46-1.60) against 1.97 s (1.71-2.08); with
      2.0.0's pair of networks 2.48 s against 3.07 s (``tests/benchmarks/measure_benchmark.py``).
    - The three Sunnybrook series through ``dicomnode measure``: EDV and ESV within 0.1 mL, mass
      within 0.4 g, the same ED and ES phases except SCD0000101's ES, 6 -> 7 (the expert's is 7;
      the two phases' volumes differ by 0.1 mL).
    - The 16 ACDC validation patients, ED and ES frames as one stack (12-22 frames, so the first
      pass was forced to one frame in four): LV blood-pool Dice against the experts 0.950 / 0.912
      (ED / ES), against 0.950 / 0.910 on the whole grid; the two agree with Dice >= 0.999 on all but
      one patient (0.991).
    """

    def __init__(
        self,
        model: ReleasedModel,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        batch_size: int = 8,
        heart_margin: int | None = None,
        parallel_batches: int = 0,
        cores: int | None = None,
    ) -> None:
        limit_blas_threads()
        requested = resolve_providers(providers)
        if CUDA in requested:
            preload_cuda_libraries()
        self.threading = plan_threading(requested, intra_op_threads, parallel_batches, cores)
        self._session = _open_session(model, requested, self.threading)
        actual = self._session.get_providers()
        if actual[:1] != requested[:1]:
            # onnxruntime-gpu without a usable GPU runs on CPU, whose threads are planned otherwise.
            log.warning("execution provider unavailable", requested=requested[0], using=actual[0])
            self.threading = plan_threading(actual, intra_op_threads, parallel_batches, cores)
            self._session = _open_session(model, actual, self.threading)
        self.model = model
        self.card = model.card
        self.batch_size = batch_size
        classes = self.card.output.classes
        self._heart = [classes.index(name) for name in HEART_CLASSES if name in classes]
        self._background = classes.index(BACKGROUND) if BACKGROUND in classes else 0
        known = len(self._heart) == len(HEART_CLASSES) and BACKGROUND in classes
        self.heart_margin = heart_margin if known else None
        # One stack at a time: each already uses every core (ONNX Runtime's run itself is thread-safe).
        self._lock = threading.Lock()
        #: The card's companion network in a session of its own (None without one): :meth:`logits`
        #: averages it with the model's, and a pair's segmentation also keeps the companion's own
        #: labels, which quality control weighs against the pair's
        #: (:class:`~node.inference.card.CompanionSpec`).
        self.companion = (
            Segmenter(
                model.companion,
                providers,
                intra_op_threads,
                batch_size,
                heart_margin,
                parallel_batches,
                cores,
            )
            if model.companion is not None
            else None
        )

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return list(self._session.get_providers())

    def logits(self, batch: npt.NDArray[np.float32], alone: bool = False) -> npt.NDArray[np.float32]:
        """Network output for a model-grid batch ``(n, 1, H, W)``: the model's logits, or with a
        companion the mean of the two networks' (a deep ensemble) unless ``alone``."""
        feed = {self.card.input.name: np.ascontiguousarray(batch)}
        (out,) = self._session.run([self.card.output.name], feed)
        logits = np.asarray(out, dtype=np.float32)
        if self.companion is not None and not alone:
            return _ensemble(logits, self.companion.logits(batch))
        return logits

    def segment(
        self,
        frames: npt.NDArray[np.generic],
        pixel_spacing: tuple[float, float],
        normalised: bool = False,
        heart: Box | None = None,
        alone: bool = False,
    ) -> Segmentation:
        """Segment every frame of one stack ``(n, rows, cols)`` (normalised together, per the card).

        Parameters
        ----------
        frames
            Stored pixel values of every frame of the stack, all on one grid.
        pixel_spacing
            (row, column) spacing in mm, PixelSpacing (0028,0030).
        normalised
            True when ``frames`` are already normalised (training-side evaluation).
        heart
            With ``heart_margin`` set: the LV extent from an earlier segmentation of these frames
            (e.g. mirrored), which skips the first pass. Ignored otherwise.
        alone
            Run the model's own network only, without its companion (the same without one).
        """
        with self._lock:
            return self._segment(frames, pixel_spacing, normalised, heart, alone)

    def _segment(
        self,
        frames: npt.NDArray[np.generic],
        pixel_spacing: tuple[float, float],
        normalised: bool,
        heart: Box | None,
        alone: bool,
    ) -> Segmentation:
        spec = self.card.input
        values = np.asarray(frames, dtype=np.float32) if normalised else normalise(frames, spec.normalisation)
        geometry = plan_geometry(values.shape[1], values.shape[2], pixel_spacing, spec)
        if self.heart_margin is None:
            return self._segment_window(values, geometry, full_window(geometry), pixel_spacing, None, alone)
        if heart is None and values.shape[0] >= 2 * LOCATE_EVERY:
            heart = self._locate_heart(values, geometry, pixel_spacing, alone)
        if heart is not None:
            window = heart_window(geometry, heart, pixel_spacing, spec, self.heart_margin)
            if (
                window.height * window.width
                <= MAX_WINDOW_FRACTION * geometry.padded_rows * geometry.padded_cols
            ):
                return self._segment_window(values, geometry, window, pixel_spacing, heart, alone)
        return self._segment_window(values, geometry, full_window(geometry), pixel_spacing, None, alone)

    def _locate_heart(
        self,
        values: npt.NDArray[np.float32],
        geometry: Geometry,
        pixel_spacing: tuple[float, float],
        alone: bool,
    ) -> Box | None:
        """The LV's extent over the whole grid of evenly spread frames; None where there is no LV."""
        count = values.shape[0]
        picked = np.unique(np.linspace(0, count - 1, -(-count // LOCATE_EVERY)).round().astype(np.intp))
        window = full_window(geometry)
        found = np.zeros((geometry.model_rows, geometry.model_cols), dtype=bool)
        for start in range(0, picked.size, self.batch_size):
            batch = window_to_model_grid(
                values[picked[start : start + self.batch_size]], window, self.card.input.pad_value
            )
            labels = argmax_classes(crop_window(self.logits(batch, alone), window))
            found |= np.isin(labels, self._heart).any(axis=0)
        return frame_box(found, pixel_spacing, self.card.input)

    def _segment_window(
        self,
        values: npt.NDArray[np.float32],
        geometry: Geometry,
        window: Window,
        pixel_spacing: tuple[float, float],
        heart: Box | None,
        alone: bool,
    ) -> Segmentation:
        """Run every frame over ``window``; labels outside it are background."""
        spec = self.card.input
        count = values.shape[0]
        labels = np.full(values.shape, self._background, np.uint8)
        pair = self.companion is not None and not alone
        companion_labels = np.full(values.shape, self._background, np.uint8) if pair else None
        uncertain = np.empty(count, np.int64)
        # QC statistics come from the model grid; one model pixel covers this many original pixels.
        per_model_pixel = spec.spacing_mm**2 / (pixel_spacing[0] * pixel_spacing[1])
        target = (slice(None), window.target_rows, window.target_cols)

        def run_batch(start: int) -> None:
            # Batches write disjoint frames of the outputs, so they can run on several threads.
            stop = min(start + self.batch_size, count)
            batch = window_to_model_grid(values[start:stop], window, spec.pad_value)
            if self.companion is not None and companion_labels is not None:
                logits = self.logits(batch, alone=True)
                other = self.companion.logits(batch)
                companion_labels[start:stop][target] = interpolated_argmax(
                    crop_window(other, window), window.from_model_rows, window.from_model_cols
                )
                logits = crop_window(_ensemble(logits, other), window)
            else:
                logits = crop_window(self.logits(batch, alone), window)
            labels[start:stop][target] = interpolated_argmax(
                logits, window.from_model_rows, window.from_model_cols
            )
            probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            uncertain[start:stop] = np.rint(
                (probabilities.max(axis=1) < UNCERTAIN_BELOW).sum(axis=(1, 2)) * per_model_pixel
            ).astype(np.int64)

        starts = range(0, count, self.batch_size)
        workers = min(self.threading.parallel_batches, len(starts))
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="inference") as pool:
                list(pool.map(run_batch, starts))
        else:
            for start in starts:
                run_batch(start)
        return Segmentation(
            labels=labels, uncertain_px=uncertain, heart=heart, companion_labels=companion_labels
        )


def _ensemble(own: npt.NDArray[np.float32], other: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The pair's logits: the mean of the two networks' (``own`` is overwritten)."""
    own += other
    own *= 0.5
    return own


def _open_session(model: ReleasedModel, providers: list[str], plan: Threading) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = plan.intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle workers sleep instead of spinning: on cores shared with the rest of the node (or other
    # processes), spinning threads take the CPU from the threads with work.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model.path), options, providers=providers)


def load_segmenter(settings: InferenceSettings) -> Segmenter:
    """The configured released model in a new session (checksum verified)."""
    model = find_model(settings.model_dir, settings.model_name, settings.model_version)
    return Segmenter(
        model,
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        batch_size=settings.batch_size,
        heart_margin=settings.heart_window_margin or None,
        parallel_batches=settings.parallel_batches,
    )
