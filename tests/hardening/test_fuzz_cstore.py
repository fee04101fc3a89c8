"""Fuzz the C-STORE path of a running node with mutated real instances (issue "hardening", point 1).

One ``dicomnode serve`` subprocess receives ``DICOMNODE_FUZZ_CASES`` cases (300 by default, for CI;
10,000 for the nightly run) over pynetdicom associations, each case a Sunnybrook MR image, a synthetic
one or a compressed variant with one to three mutations of :mod:`tests.hardening.fuzz`. Hypothesis
draws the cases (derandomized unless ``DICOMNODE_FUZZ_SEED`` is set) and does not shrink: the node
is stateful, and every failure message names the cases that :meth:`Case.build` rebuilds exactly.

The campaign runs once per module; each test then asserts one property of it: every case is
answered, the listener lives and its memory stays bounded, a valid instance is stored afterwards,
every instance acknowledged with Success is in the spool as sent, and nothing failed inside the node.

Nightly:
``DICOMNODE_FUZZ_CASES=10000 python -m pytest -s --timeout 3600 tests/hardening/test_fuzz_cstore.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from io import BytesIO
from itertools import count
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset

from node.dicom import instance
from node.dicom.instance import MAX_SEQUENCE_DEPTH, MAX_SEQUENCE_ITEMS, parse_instance
from node.dicom.status import Status
from node.errors import MalformedInstance
from node.store.index import Index
from tests.hardening import fuzz
from tests.hardening.fuzz import (
    CT_IMAGE_STORAGE,
    MUTATORS,
    SECONDARY_CAPTURE_STORAGE,
    Case,
    Seed,
    build_seeds,
    claimed_sop_class,
    dataset_offset,
    file_meta,
)
from tests.support import NodeServer, free_port, receiver_only_env, sunnybrook_files, synthetic_mr

pytestmark = pytest.mark.integration

CASES = int(os.environ.get("DICOMNODE_FUZZ_CASES", "300"))
SEED = os.environ.get("DICOMNODE_FUZZ_SEED")
#: When set, every outcome is also written there as one JSON line, for triage of a nightly run.
OUTCOMES_PATH = os.environ.get("DICOMNODE_FUZZ_OUTCOMES")

#: Presentation contexts the fuzzer offers: one transfer syntax each, since pynetdicom streams a file
#: undecoded only over a context of exactly its transfer syntax.
SOP_CLASSES = (str(MRImageStorage), str(CT_IMAGE_STORAGE), str(SECONDARY_CAPTURE_STORAGE))
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
)

#: A response slower than this counts as no response (the node must answer quickly).
DIMSE_TIMEOUT_S = 30.0
#: Peak resident memory allowed above the idle node's. The largest case is under 1 MiB on the wire;
#: parsing holds a few copies of it and at most MAX_SEQUENCE_ITEMS pydicom items (~140 MB).
#: Declared sizes (65535 x 65535 x 999,999,999 frames, 4 GiB lengths) must never be allocated, and
#: a case leaking even its own bytes would pass this bound only in the short CI run.
RSS_HEADROOM_BYTES = 512 * 1024 * 1024
#: Aborted associations tolerated: the node aborts only for a receive limit, which no case reaches.
MAX_ABORT_FRACTION = 0.01
#: Cases sent over one association before it is released and a new one requested.
BATCH = 100


# -- the node and the sender ----------------------------------------------------------------------


def _node_env() -> dict[str, str]:
    return {
        **receiver_only_env(),
        "DICOMNODE_PIPELINE__STABLE_SECONDS": "3600",
        "DICOMNODE_PIPELINE__MAX_WAIT_SECONDS": "3600",
        # Mutated Study Instance UIDs make new studies; none may be refused as a backlog.
        "DICOMNODE_PIPELINE__MAX_QUEUED_STUDIES": "1000000",
        "DICOMNODE_WEB__ENABLED": "false",
        # Each answer is logged: refusals at WARNING, stored instances at DEBUG.
        "DICOMNODE_LOGGING__LEVEL": "DEBUG",
        "DICOMNODE_DICOM__DIMSE_TIMEOUT_S": "60",
        "DICOMNODE_DICOM__NETWORK_TIMEOUT_S": "60",
    }


@dataclass
class Outcome:
    """What became of one case."""

    case: str
    kind: str  # "status", "aborted", "no response" or "not sendable"
    sop_instance_uid: str
    status: int | None = None
    dataset_sha256: str | None = None
    elapsed_s: float = 0.0
    detail: str = ""


class Sender:
    """Sends case files over one association per batch, reconnecting when the node ends one."""

    def __init__(self, port: int, workdir: Path) -> None:
        self._port = port
        self._path = workdir / "case.dcm"
        self._ae = AE("FUZZER")
        for sop_class in SOP_CLASSES:
            for syntax in TRANSFER_SYNTAXES:
                self._ae.add_requested_context(sop_class, syntax)
        self._ae.acse_timeout = self._ae.network_timeout = 60
        self._ae.dimse_timeout = DIMSE_TIMEOUT_S
        self._association: Association | None = None
        self._sent = 0  # over the current association
        self.associations = 0

    def association(self) -> Association:
        """The current association; a new one after a batch, or when the node ended the last one."""
        if self._association is not None and self._sent >= BATCH:
            self.release()
        if self._association is None or not self._association.is_established:
            self._association = self._ae.associate("127.0.0.1", self._port, ae_title="DICOMNODE")
            self._sent = 0
            self.associations += 1
            if not self._association.is_established:
                raise AssertionError(f"association {self.associations} was not established")
        self._sent += 1
        return self._association

    def release(self) -> None:
        """Release the current association, if any."""
        if self._association is not None and self._association.is_established:
            self._association.release()
        self._association = None

    def send(self, data: bytes, start: int, explicit_vr: bool, sop_instance_uid: str, case: str) -> Outcome:
        """Send one case's bytes as a file, undecoded, under the SOP class its dataset claims."""
        outcome = Outcome(case=case, kind="not sendable", sop_instance_uid=sop_instance_uid)
        claimed = claimed_sop_class(data, start, explicit_vr)
        if claimed in SOP_CLASSES:
            data = _with_meta_sop_class(data, start, claimed)
        self._path.write_bytes(data)
        try:
            _meta, offset = split_dataset(self._path)
        except Exception as error:  # noqa: BLE001 - pynetdicom cannot read the meta: not sendable
            outcome.detail = type(error).__name__
            return outcome
        outcome.dataset_sha256 = hashlib.sha256(data[offset:]).hexdigest()
        association = self.association()
        began = time.monotonic()
        try:
            response = association.send_c_store(self._path)
        except (AttributeError, ValueError) as error:  # no context for what the meta says
            outcome.detail = f"{type(error).__name__}: {error}"[:200]
            return outcome
        outcome.elapsed_s = time.monotonic() - began
        if "Status" in response:
            outcome.kind, outcome.status = "status", int(response.Status)
        elif outcome.elapsed_s >= DIMSE_TIMEOUT_S * 0.9:
            outcome.kind = "no response"
        else:
            outcome.kind = "aborted"
        return outcome


def _with_meta_sop_class(data: bytes, start: int, sop_class: str) -> bytes:
    """The file with its meta's Media Storage SOP Class UID set to ``sop_class`` (dataset untouched)."""
    meta = file_meta(data)
    if str(meta.get("MediaStorageSOPClassUID", "")) == sop_class:
        return data
    meta.MediaStorageSOPClassUID = sop_class
    buffer = BytesIO()
    buffer.write(data[:132])
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + data[start:]


class RssSampler:
    """Samples the resident memory of a process and its descendants every few milliseconds."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.max_bytes = 0

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.max_bytes = max(self.max_bytes, tree_rss_bytes(self._pid))


def _status_kb(pid: int, field_name: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        for child in map(int, children):
            found.append(child)
            pending.append(child)
    return found


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of a process and all its descendants, in bytes."""
    return 1024 * sum(_status_kb(each, "VmRSS") for each in [pid, *_descendants(pid)])


# -- the campaign ---------------------------------------------------------------------------------


@dataclass
class Campaign:
    """Everything the tests assert on: one outcome per case and what was measured around them."""

    node: NodeServer
    seeds: list[Seed]
    outcomes: list[Outcome] = field(default_factory=list)
    associations: int = 0
    idle_rss_bytes: int = 0
    max_rss_bytes: int = 0
    peak_rss_bytes: int = 0  # VmHWM of the node process: the high-water mark, spikes included
    wall_s: float = 0.0

    def kinds(self) -> Counter[str]:
        """How many cases ended each way."""
        return Counter(outcome.kind for outcome in self.outcomes)

    def statuses(self) -> Counter[str]:
        """How many cases got each DIMSE status."""
        return Counter(f"0x{o.status:04X}" for o in self.outcomes if o.status is not None)

    def summary(self) -> str:
        """One line: cases, statuses, aborts, not sendable, memory and time."""
        kinds = self.kinds()
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses().items()))
        slowest = max((o.elapsed_s for o in self.outcomes), default=0.0)
        return (
            f"fuzz C-STORE: {len(self.outcomes)} cases, statuses {{{statuses}}}, "
            f"aborted {kinds['aborted']}, no response {kinds['no response']}, "
            f"not sendable {kinds['not sendable']}, associations {self.associations}, "
            f"RSS idle {self.idle_rss_bytes / 2**20:.0f} MiB, max {self.max_rss_bytes / 2**20:.0f} MiB, "
            f"VmHWM {self.peak_rss_bytes / 2**20:.0f} MiB, slowest answer {slowest:.2f} s, "
            f"wall {self.wall_s:.1f} s"
        )

    def refusal_reasons(self, top: int = 12) -> str:
        """The node's most frequent refusal reasons (numbers masked), from its log."""
        reasons = Counter(
            re.sub(r"\d+", "N", str(record.get("reason", "")))
            for record in self.node.log_records()
            if record.get("event") == "instance refused"
        )
        return "refused because: " + "; ".join(f"{n} {reason}" for reason, n in reasons.most_common(top))


def _cases(seed_count: int) -> st.SearchStrategy[tuple[int, tuple[tuple[str, int], ...]]]:
    mutation = st.tuples(st.sampled_from(sorted(MUTATORS)), st.integers(0, 2**32 - 1))
    return st.tuples(st.integers(0, seed_count - 1), st.lists(mutation, min_size=1, max_size=3).map(tuple))


def _run_campaign(campaign: Campaign, workdir: Path) -> None:
    seeds, sender, serials = campaign.seeds, Sender(campaign.node.port, workdir), count()

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn=_cases(len(seeds)))
    def fuzz(drawn: tuple[int, tuple[tuple[str, int], ...]]) -> None:
        case = Case(seed=drawn[0], mutations=drawn[1], serial=next(serials))
        seed = seeds[case.seed]
        outcome = sender.send(
            case.build(seeds),
            seed.dataset_offset,
            seed.explicit_vr,
            case.sop_instance_uid(seeds),
            case.describe(seeds),
        )
        campaign.outcomes.append(outcome)

    runner = hypothesis_seed(int(SEED))(fuzz) if SEED is not None else fuzz
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    began = time.monotonic()
    try:
        with RssSampler(campaign.node.pid) as sampler:
            runner()
    finally:
        campaign.wall_s = time.monotonic() - began
        _config.STORE_SEND_CHUNKED_DATASET = previous
        sender.release()
    campaign.associations = sender.associations
    campaign.max_rss_bytes = max(sampler.max_bytes, tree_rss_bytes(campaign.node.pid))
    campaign.peak_rss_bytes = 1024 * _status_kb(campaign.node.pid, "VmHWM")


@pytest.fixture(scope="module")
def campaign(sunnybrook: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    """A node that has received every fuzz case (the campaign runs once for all tests below)."""
    files = sunnybrook_files(sunnybrook)
    real = [files[0], files[len(files) // 2], files[-1]]  # one of each series, read in place
    root = tmp_path_factory.mktemp("fuzz")
    node = NodeServer(
        data_dir=root / "data", log_path=root / "node.log", port=free_port(), extra_env=_node_env()
    )
    node.start()
    try:
        result = Campaign(node=node, seeds=build_seeds(real), idle_rss_bytes=tree_rss_bytes(node.pid))
        _run_campaign(result, root)
        print(f"\n{result.summary()}\n{result.refusal_reasons()}")
        if OUTCOMES_PATH:
            with Path(OUTCOMES_PATH).open("w") as sink:
                sink.writelines(json.dumps(asdict(outcome)) + "\n" for outcome in result.outcomes)
        yield result
    finally:
        node.stop()


# -- the properties -------------------------------------------------------------------------------


def test_every_case_reaches_the_node_and_is_answered(campaign: Campaign) -> None:
    """Every sent case gets a DIMSE status quickly, or (rarely) its association is aborted by the node."""
    kinds = campaign.kinds()
    unanswered = [o.case for o in campaign.outcomes if o.kind == "no response"]
    assert unanswered == [], f"no response within {DIMSE_TIMEOUT_S} s to: {unanswered[:5]}"
    assert kinds["aborted"] <= max(1, int(MAX_ABORT_FRACTION * len(campaign.outcomes))), campaign.summary()
    assert kinds["status"] > 0.9 * len(campaign.outcomes), campaign.summary()
    assert len(campaign.outcomes) >= 0.9 * CASES  # Hypothesis skips the rare duplicate draw


def test_statuses_are_the_named_storage_statuses(campaign: Campaign) -> None:
    """Each status is one the node names: Success, or a refusal it explains (never Processing Failure)."""
    known = {int(status) for status in Status} - {int(Status.PROCESSING_FAILURE)}
    unexpected = [
        (o.case, hex(o.status or 0))
        for o in campaign.outcomes
        if o.kind == "status" and o.status not in known
    ]
    assert unexpected == [], unexpected[:5]


def test_listener_survives_with_bounded_memory(campaign: Campaign) -> None:
    """After every case the node process is alive, and its resident memory never grew past the bound."""
    assert campaign.node.is_running(), campaign.node.log_tail()
    bound = campaign.idle_rss_bytes + RSS_HEADROOM_BYTES
    assert campaign.max_rss_bytes < bound, campaign.summary()
    assert campaign.peak_rss_bytes < bound, campaign.summary()


def test_valid_instances_are_stored_after_the_campaign(campaign: Campaign, sunnybrook: Path) -> None:
    """A synthetic and a real instance sent after all cases are acknowledged with Success and indexed."""
    synthetic = campaign.node.log_path.with_name("valid-synthetic.dcm")
    synthetic.write_bytes(synthetic_mr())
    real = sunnybrook_files(sunnybrook)[1]  # never sent before: the cases carried fresh UIDs
    ae = AE("FUZZER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", campaign.node.port, ae_title="DICOMNODE")
    assert association.is_established
    try:
        statuses = [int(association.send_c_store(pydicom.dcmread(path)).Status) for path in (synthetic, real)]
    finally:
        association.release()
    assert statuses == [Status.SUCCESS, Status.SUCCESS]
    indexed = _indexed_paths(campaign.node)
    for path in (synthetic, real):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert uid in indexed
        assert (campaign.node.spool_dir / indexed[uid]).is_file()


def test_every_success_is_spooled_as_sent(campaign: Campaign) -> None:
    """Each case acknowledged with Success is indexed, its spool file ends with the dataset bytes sent and
    reads back with pydicom, and the spool holds nothing the index does not."""
    indexed = _indexed_paths(campaign.node)
    stored = [o for o in campaign.outcomes if o.status == Status.SUCCESS]
    for outcome in stored:
        relative = indexed.get(outcome.sop_instance_uid)
        assert relative is not None, f"acknowledged but not indexed: {outcome.case}"
        path = campaign.node.spool_dir / relative
        data = path.read_bytes()
        offset = dataset_offset(data)
        assert hashlib.sha256(data[offset:]).hexdigest() == outcome.dataset_sha256, outcome.case
        pydicom.dcmread(path)
    assert sorted(campaign.node.spool_dir / path for path in indexed.values()) == campaign.node.spool_files()


def test_log_shows_no_failure_inside_the_node(campaign: Campaign) -> None:
    """The node logged no "instance failed" and no traceback, and one outcome line per answered case."""
    records = campaign.node.log_records()
    failures = [r for r in records if r.get("event") == "instance failed" or "exception" in r]
    assert failures == [], failures[:3]
    errors = [r for r in records if r.get("level") in ("error", "critical")]
    assert errors == [], errors[:3]
    answered = Counter(
        r["event"] for r in records if r.get("event") in ("instance stored", "instance refused")
    )
    statuses = campaign.statuses()
    successes = statuses.get(f"0x{int(Status.SUCCESS):04X}", 0)
    assert answered["instance stored"] >= successes  # later tests add their own
    assert answered["instance refused"] == sum(statuses.values()) - successes


def _indexed_paths(node: NodeServer) -> dict[str, str]:
    index = Index.open(f"sqlite:///{node.index_path}")
    with closing(index):
        return dict(index.instance_paths())


# -- what the fuzz found, pinned in-process -------------------------------------------------------


def _synthetic_seed() -> Seed:
    return Seed.from_bytes("synthetic", synthetic_mr())


def _refused_quickly(data: bytes, reason: str) -> None:
    began = time.monotonic()
    with pytest.raises(MalformedInstance, match=reason):
        parse_instance(data)
    assert time.monotonic() - began < 2.0


@pytest.mark.parametrize("style", ["defined", "undefined"])
def test_sequences_nested_10000_deep_are_refused_quickly(style: str) -> None:
    """10,000 nested sequences (which pydicom would parse recursively) are refused as too deep."""
    seed = _synthetic_seed()
    rng = random.Random(0 if style == "defined" else 1)
    nested = fuzz._nested(0x00081140, 10_000, rng, True, b"", style=style)
    data = fuzz._insert_top_level(fuzz.Target(seed.data, seed.dataset_offset, True), 0x00081140, nested)
    _refused_quickly(data, "nested deeper")
    shallow = fuzz._nested(0x00081140, MAX_SEQUENCE_DEPTH, rng, True, b"", style=style)
    target = fuzz.Target(seed.data, seed.dataset_offset, True)
    assert parse_instance(fuzz._insert_top_level(target, 0x00081140, shallow)).sop_instance_uid


def test_sequence_over_the_item_limit_is_refused_quickly() -> None:
    """Empty items past the limit (each a pydicom Dataset once parsed) are refused before pydicom reads."""
    seed = _synthetic_seed()
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0) * (MAX_SEQUENCE_ITEMS + 1)
    element = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, len(items)) + items
    data = fuzz._insert_top_level(fuzz.Target(seed.data, seed.dataset_offset, True), 0x00081140, element)
    _refused_quickly(data, "sequence items")


def test_unknown_vr_is_malformed_not_a_failure() -> None:
    """An element whose VR bytes name no VR is refused as malformed (pydicom raised NotImplementedError)."""
    seed = _synthetic_seed()
    span = next(s for s in fuzz.layout(seed.data, seed.dataset_offset, True) if s.tag == 0x00100020)
    data = bytearray(seed.data)
    data[span.header + 4 : span.header + 6] = b"C\xe5"
    _refused_quickly(bytes(data), "unknown VR")


def test_element_overrunning_its_item_is_malformed() -> None:
    """An element inside a defined-length item that declares more bytes than the item holds is refused."""
    seed = _synthetic_seed()
    element = bytearray(fuzz._element(0x00081155, b"UI", b"1.2.3.4", True))
    struct.pack_into("<H", element, 6, 0x0100)
    nested = fuzz._nested(0x00081140, 1, random.Random(0), True, bytes(element), style="defined")
    data = fuzz._insert_top_level(fuzz.Target(seed.data, seed.dataset_offset, True), 0x00081140, nested)
    _refused_quickly(data, "runs past")


@pytest.mark.parametrize(
    ("keyword", "value"), [("NumberOfFrames", b"0"), ("SamplesPerPixel", struct.pack("<H", 0))]
)
def test_zero_frames_or_samples_are_malformed(keyword: str, value: bytes) -> None:
    """Number of Frames or Samples per Pixel of 0 is refused (they were read as 1)."""
    seed = _synthetic_seed()
    target = fuzz.Target(seed.data, seed.dataset_offset, True)
    tag, vr = (0x00280008, b"IS") if keyword == "NumberOfFrames" else (0x00280002, b"US")
    _refused_quickly(fuzz._put(target, tag, vr, value), "non-positive")


def _rle_seed() -> Seed:
    return Seed.from_bytes("rle", fuzz._multiframe_rle())


@pytest.mark.parametrize(
    ("tag", "vr", "value", "reason"),
    [
        (0x00280008, b"IS", b"999999999", "cannot hold"),
        (0x00280100, b"US", struct.pack("<H", 64), "RLE header"),
        (0x00280100, b"US", struct.pack("<H", 0xFFFF), "Bits Allocated"),
    ],
)
def test_compressed_pixel_data_lying_about_its_size_is_malformed(
    tag: int, vr: bytes, value: bytes, reason: str
) -> None:
    """Encapsulated frames that cannot be the image the dataset describes are refused."""
    seed = _rle_seed()
    assert parse_instance(seed.data).number_of_frames == 4
    target = fuzz.Target(seed.data, seed.dataset_offset, True)
    _refused_quickly(fuzz._put(target, tag, vr, value), reason)


def test_lying_basic_offset_table_is_malformed() -> None:
    """A Basic Offset Table entry that points between fragments is refused (PS3.5 A.4)."""
    seed = _rle_seed()
    table = next(s for s in fuzz.layout(seed.data, seed.dataset_offset, True) if s.tag == fuzz._ITEM)
    data = bytearray(seed.data)
    struct.pack_into("<L", data, table.value_at + 4, 3)
    _refused_quickly(bytes(data), "Basic Offset Table")


def test_jpeg_ls_frame_larger_than_the_dataset_says_is_malformed() -> None:
    """A JPEG-LS frame whose header disagrees with Rows and Columns is refused."""
    seed = Seed.from_bytes("jpeg-ls", fuzz._compressed(synthetic_mr(), JPEGLSLossless))
    target = fuzz.Target(seed.data, seed.dataset_offset, True)
    _refused_quickly(fuzz._put(target, 0x00280010, b"US", struct.pack("<H", 0xFFFF)), "compressed frame")


def test_deflate_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deflated dataset that inflates past the bound is refused before pydicom inflates it."""
    monkeypatch.setattr(instance, "MAX_INFLATED_BYTES", 1 << 20)
    seed = _synthetic_seed()
    dataset = seed.data[seed.dataset_offset :]
    padding = struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, 4 << 20) + bytes(4 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(dataset + padding) + compressor.flush()
    meta = fuzz.file_meta(seed.data)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = BytesIO()
    buffer.write(seed.data[:132])
    write_file_meta_info(buffer, meta, enforce_standard=True)
    _refused_quickly(buffer.getvalue() + body, "inflates past")
