"""The node's Prometheus metrics: one registry object, built once and passed to the parts that count.

Each :class:`NodeMetrics` has its own :class:`~prometheus_client.CollectorRegistry` (never the
process-global one), so tests and several nodes in one process never share counts. Values that live
in the index (results by review status, deliveries by state) are read when ``/metrics`` is scraped,
through gauge sources registered with :meth:`NodeMetrics.add_gauge_source`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.logging import get_logger

log = get_logger(__name__)

#: Content-Type of :meth:`NodeMetrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Inference takes seconds to minutes per stack on a CPU.
INFERENCE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class _GaugeSource(Collector):
    """A labelled gauge whose values a callback reads at scrape time."""

    def __init__(
        self, name: str, documentation: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        self._name, self._documentation, self._label, self._read = name, documentation, label, read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=[self._label])
        try:
            values = self._read()
        except Exception:  # a scrape must not fail because the index is briefly unavailable
            log.exception("metrics source failed", metric=self._name)
            return
        for key, value in sorted(values.items()):
            family.add_metric([key], float(value))
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class NodeMetrics:
    """Counters and histograms the node's parts increment; rendered by the web app at ``/metrics``.

    Attributes
    ----------
    associations
        ``dicomnode_associations_total{outcome}``: DICOM associations requested; outcome
        ``accepted`` or ``rejected``.
    instances_received
        ``dicomnode_instances_received_total{outcome}``: C-STORE requests; outcome ``stored``,
        ``duplicate`` or ``refused``.
    studies_processed
        ``dicomnode_studies_processed_total{outcome}``: finished jobs; outcome an
        :class:`node.domain.Outcome` value.
    inference_seconds
        ``dicomnode_inference_seconds``: wall time of measuring one stack.
    delivery_attempts
        ``dicomnode_delivery_attempts_total``: C-STORE attempts of outbox objects.
    delivery_failures
        ``dicomnode_delivery_failures_total{final}``: failed attempts; final ``true`` when the pair
        was dead-lettered.
    reviews
        ``dicomnode_reviews_total{status}``: sign-offs, amendments and rejections recorded.
    logins
        ``dicomnode_logins_total{outcome}``: worklist logins; outcome ``success``, ``failure`` or
        ``blocked``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.associations = Counter(
            "dicomnode_associations", "DICOM associations requested", ["outcome"], registry=self.registry
        )
        self.instances_received = Counter(
            "dicomnode_instances_received", "C-STORE requests received", ["outcome"], registry=self.registry
        )
        self.nonconformant_uids = Counter(
            "dicomnode_nonconformant_uids",
            "UIDs in C-STORE requests that break PS3.5 9.1 (e.g. leading zeros), accepted as received",
            registry=self.registry,
        )
        self.studies_processed = Counter(
            "dicomnode_studies_processed", "Study versions processed", ["outcome"], registry=self.registry
        )
        self.inference_seconds = Histogram(
            "dicomnode_inference_seconds",
            "Seconds to measure one short-axis stack",
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.delivery_attempts = Counter(
            "dicomnode_delivery_attempts", "C-STORE attempts of outgoing objects", registry=self.registry
        )
        self.delivery_failures = Counter(
            "dicomnode_delivery_failures", "Failed C-STORE attempts", ["final"], registry=self.registry
        )
        self.reviews = Counter(
            "dicomnode_reviews", "Radiologist reviews recorded", ["status"], registry=self.registry
        )
        self.logins = Counter("dicomnode_logins", "Worklist logins", ["outcome"], registry=self.registry)

    def add_gauge_source(
        self, name: str, documentation: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Expose ``name{label=key}`` = value for every item ``read()`` returns at scrape time."""
        self.registry.register(_GaugeSource(name, documentation, label, read))

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
