"""The study page's pictures as pure functions: PNG of a dataset, contoured cine GIF, volume curve SVG."""

from __future__ import annotations

import io
import socket
import urllib.request

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.web.images import cine_gif, dataset_png, volume_curve_svg
from node.web.server import WebServer, build_app
from tests.review.seed import Seeded


def test_monochrome_dataset_becomes_a_windowed_png() -> None:
    """A 16-bit monochrome image is windowed to 8 bits with its bright region white and the same size."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = np.full((40, 60), 100, dtype=np.uint16)
    pixels[10:20, 10:20] = 3000
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation, dataset.SamplesPerPixel = 0, 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = pixels.tobytes()
    with Image.open(io.BytesIO(dataset_png(dataset))) as image:
        grey = np.asarray(image)
    assert image.size == (60, 40)
    assert grey[15, 15] == 255 and grey[30, 50] == 0


def test_cine_has_one_frame_per_present_phase_with_contours() -> None:
    """The cine animates every phase that has an image, and draws the blood-pool contour in gold."""
    frames = [np.random.default_rng(phase).normal(100, 10, (64, 64)).astype(np.float32) for phase in range(6)]
    frames[2] = None  # type: ignore[call-overload]
    labels = np.zeros((6, 64, 64), dtype=np.uint8)
    labels[:, 24:40, 24:40] = 2
    labels[:, 28:36, 28:36] = 3
    gif = cine_gif(frames, labels, blood_pool=3, myocardium=2, spacing_mm=(1.5, 1.5))
    with Image.open(io.BytesIO(gif)) as image:
        assert image.n_frames == 5
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert (rgb == (255, 215, 0)).all(axis=1).sum() > 20
    assert (rgb == (0, 210, 120)).all(axis=1).sum() > 20


def test_volume_curve_marks_ed_and_es() -> None:
    """The SVG plots every phase and labels ED and ES with their volumes in mL."""
    svg = volume_curve_svg([150.0, 120.0, 70.0, 60.0, 90.0, 140.0], ed_phase=0, es_phase=3)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "ED 150 mL" in svg and "ES 60 mL" in svg
    assert svg.count(",") >= 6  # one point per phase in the polyline


def test_web_server_serves_on_loopback_until_stopped(seeded: Seeded) -> None:
    """WebServer binds before start() returns, answers /healthz, and frees the port on stop()."""
    settings = seeded.settings.model_copy(update={"web": seeded.settings.web.model_copy(update={"port": 0})})
    server = WebServer(build_app(settings, seeded.parts, seeded.metrics, seeded.clock, {}), settings.web)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
            assert response.status == 200 and b"ok" in response.read()
    finally:
        server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
