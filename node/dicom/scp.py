"""The storage SCP: Verification and C-STORE, thin handlers over an :class:`InstanceSink` (the node's
durable ingest, :class:`node.store.ingest.Ingest`, which the caller passes in).

Handlers run on association threads and only check, store durably, index and answer; nothing
slower happens here. Callers outside ``allowed_callers`` are rejected at association (PS3.8 7.1.1.9,
"calling AE title not recognized").
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol, cast

import pynetdicom.association
import structlog
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.clock import monotonic
from node.config import CallerRule, DicomSettings
from node.dicom.contexts import identified, storage_contexts
from node.dicom.instance import Stored
from node.dicom.part10 import part10
from node.dicom.shared import SharedAssociations
from node.dicom.status import Status, dimse_status
from node.dicom.tls import TLSHandshakeServer, server_context
from node.errors import NodeError
from node.logging import Pseudonymiser, get_logger
from node.metrics import NodeMetrics

log = get_logger(__name__)
#: The standard logger behind ``log``, asked whether a debug line would be written at all (structlog's
#: own logger answers that only once :func:`node.logging.configure_logging` has run).
_stdlib_log = logging.getLogger(__name__)

#: Returned as the only allowed AE title when no rule admits the caller's host; it cannot match a
#: real calling AE title because AE titles never contain a backslash (PS3.5 Table 6.2-1).
_NOBODY = "\\"

#: Room for the command set and PDV headers beside the largest accepted dataset.
_COMMAND_ALLOWANCE = 64 * 1024
#: A-ASSOCIATE PDUs are not bound by the negotiated maximum length; this is ample for them.
_MIN_PDU_ALLOWANCE = 1 << 20
_PDU_HEADER = 6


#: What the limit reads as once shared memory has counted the association.
_NO_LIMIT = 1 << 30


class _NodeAE(AE):
    """An AE whose association checks also consider the caller's address and title.

    pynetdicom reads ``require_calling_aet`` and ``maximum_associations`` on the association thread
    while negotiating (PS3.8 7.1.1.9), so both are answered for the caller being negotiated: the
    allow-list may depend on its address, and a calling AE title already holding
    ``per_caller`` associations is rejected as transient "local limit exceeded", which a PACS
    retries later.
    """

    def __init__(
        self,
        ae_title: str,
        rules: list[CallerRule],
        per_caller: int,
        shared: tuple[SharedAssociations, int] | None = None,
    ) -> None:
        self._rules: list[CallerRule] = []
        self._per_caller = per_caller
        #: With several receiver processes: the counters they share, and this process's row.
        self._shared = shared
        self._reserved: dict[Association, str] = {}
        self._reserved_lock = threading.Lock()
        super().__init__(ae_title)
        self._rules = rules

    @property
    def require_calling_aet(self) -> list[str]:
        """AE titles allowed for the association being negotiated on this thread."""
        if not self._rules:
            return []
        current = threading.current_thread()
        address = current.requestor.address if isinstance(current, Association) else ""
        titles = [rule.ae_title for rule in self._rules if rule.host is None or rule.host == address]
        return titles or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self._rules = [CallerRule(ae_title=title) for title in ae_titles]

    @property
    def maximum_associations(self) -> int:
        """The association limit as it applies to the association negotiated on this thread.

        pynetdicom rejects when its running acceptor threads outnumber this value, and counts
        connections that have not negotiated (an idle socket, a port scan) among them. The limits
        are meant for negotiated associations only, so the value returned is the limit plus the
        acceptors that are not established: the request is rejected exactly when ``max_associations``
        associations (or ``per_caller`` of the same calling AE title) are already established.
        """
        current = threading.current_thread()
        if not (isinstance(current, Association) and current.is_acceptor):
            return self._maximum_associations
        if self._shared is not None:
            return self._shared_limit(current, *self._shared)
        acceptors = [other for other in self.active_associations if other.is_acceptor]
        established = [other for other in acceptors if other.is_established and other is not current]
        title = str(current.requestor.ae_title).strip()
        if sum(str(other.requestor.ae_title).strip() == title for other in established) >= self._per_caller:
            return 0  # at least this one acceptor runs, so pynetdicom rejects
        return self._maximum_associations + len(acceptors) - len(established) - 1

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._maximum_associations = max(1, value)

    def _shared_limit(self, current: Association, shared: SharedAssociations, process: int) -> int:
        """The limit across receiver processes: the association is counted in shared memory if every
        process together holds fewer than the limits (pynetdicom then accepts), else 0 (it rejects)."""
        title = str(current.requestor.ae_title).strip()
        with self._reserved_lock:
            if current in self._reserved:
                return _NO_LIMIT
        if not shared.reserve(process, title, self._maximum_associations, self._per_caller):
            return 0
        with self._reserved_lock:
            self._reserved[current] = title
        return _NO_LIMIT

    def release(self, association: Association) -> None:
        """Give back the shared count an association held (called at every end of one)."""
        with self._reserved_lock:
            title = self._reserved.pop(association, None)
        if title is not None and self._shared is not None:
            self._shared[0].release(self._shared[1], title)


class _MemoryBudget:
    """One budget of received-but-not-yet-stored bytes, shared by every association.

    Each message's bytes are taken from the budget as they are read and given back once its handler
    has stored it (or its association ends). A read that the budget cannot cover waits, and TCP flow
    control makes its sender wait too, unless its message is the oldest in flight: the oldest always
    proceeds, so waiting can never deadlock and memory stays within the budget plus one instance.
    A read that waits longer than ``wait_s`` ends its association (the PACS sends again later).
    """

    def __init__(self, limit_bytes: int, wait_s: float) -> None:
        self.limit_bytes = limit_bytes
        self.wait_s = wait_s
        self._changed = threading.Condition()
        self._used = 0
        #: Bytes held per message in flight, oldest first.
        self._held: dict[_ReceiveMeter, int] = {}

    def take(self, meter: _ReceiveMeter, nr_bytes: int) -> None:
        """Take ``nr_bytes`` for ``meter``'s message; OSError when the wait runs out."""
        with self._changed:
            deadline = monotonic() + self.wait_s
            while self._used + nr_bytes > self.limit_bytes and self._oldest_reading(meter) is not meter:
                left = deadline - monotonic()
                if left <= 0 or not self._changed.wait(left):
                    raise OSError("memory budget for received instances exhausted")
            self._used += nr_bytes
            self._held[meter] = self._held.get(meter, 0) + nr_bytes

    def _oldest_reading(self, meter: _ReceiveMeter) -> _ReceiveMeter:
        """The oldest message in flight whose association is reading now (``meter`` if none is).

        A message whose association went quiet (negotiated, then idle) keeps its bytes counted but
        does not hold the others back: only a message that is being read may pass the budget.
        """
        return next((held for held in self._held if held.reading_since is not None), meter)

    def release(self, meter: _ReceiveMeter) -> None:
        """Give back whatever ``meter``'s message holds."""
        with self._changed:
            self._used -= self._held.pop(meter, 0)
            self._changed.notify_all()

    @property
    def used(self) -> int:
        """Bytes held now."""
        return self._used


class _ReceiveMeter:
    """Bounds what one connection may make the node hold in memory, and for how long.

    pynetdicom reads a whole PDU of whatever length the peer declares, and a whole DIMSE message
    before the C-STORE handler runs. The meter wraps the association socket's ``recv``: a PDU
    longer than ``max_pdu_bytes`` or more than ``max_message_bytes`` received since the last
    complete message raises ``OSError`` before the bytes are read, which pynetdicom treats as a
    lost connection (the association ends, the listener carries on). It also notes since when a
    read has been waiting for the rest of a PDU (pynetdicom reads only once data has arrived), so
    that :class:`_Connections` can close a peer that stops half-way.
    """

    def __init__(
        self, max_pdu_bytes: int, max_message_bytes: int, budget: _MemoryBudget | None = None
    ) -> None:
        self.max_pdu_bytes = max_pdu_bytes
        self.max_message_bytes = max_message_bytes
        self.budget = budget
        self.received = 0
        self.exceeded: str | None = None
        self.reading_since: float | None = None

    def reset(self) -> None:
        """A whole message has been received and handed to its handler."""
        self.received = 0

    def release(self) -> None:
        """The message has been stored (or dropped): its bytes leave the memory budget."""
        if self.budget is not None:
            self.budget.release(self)

    def wrap(self, recv: Callable[[int], bytearray]) -> Callable[[int], bytearray]:
        """``recv`` with the limits applied."""

        def bounded(nr_bytes: int) -> bytearray:
            if nr_bytes > self.max_pdu_bytes:
                self.exceeded = f"PDU of {nr_bytes} bytes over the {self.max_pdu_bytes}-byte limit"
            elif self.received + nr_bytes > self.max_message_bytes:
                self.exceeded = f"message over the {self.max_message_bytes}-byte instance limit"
            if self.exceeded is not None:
                raise OSError(self.exceeded)
            self.reading_since = monotonic()
            try:
                if self.budget is not None:
                    try:
                        self.budget.take(self, nr_bytes)
                    except OSError as error:
                        self.exceeded = str(error)
                        raise
                data = recv(nr_bytes)
            finally:
                self.reading_since = None
            self.received += len(data)
            return data

        return bounded


@dataclass
class _Connection:
    """One accepted TCP connection, from accept until it closes."""

    address: str
    opened: float
    socket: socket.socket
    meter: _ReceiveMeter | None = None
    association: Association | None = None
    #: Its whole A-ASSOCIATE-RQ was read (accepted or rejected); before that it is pending.
    requested: bool = False
    closed_by_node: str | None = None


class _Connections:
    """Admission and deadlines for connections, so that strangers cannot lock senders out.

    A connection is pending until its whole A-ASSOCIATE-RQ has been read. Pending connections are
    capped in total and per address (more are closed at accept), and one that has not delivered its
    request within ``request_deadline_s`` is closed, however slowly it trickles (the ACSE timeout
    bounds each read, not the whole). Any PDU, once begun, must complete within ``pdu_deadline_s``.
    A watchdog thread closes what overstays; closing the socket ends its thread at once.
    """

    def __init__(
        self, max_pending: int, max_pending_per_address: int, request_deadline_s: float, pdu_deadline_s: float
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.request_deadline_s = request_deadline_s
        self.pdu_deadline_s = pdu_deadline_s
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], _Connection] = {}
        self._stopping = threading.Event()

    def admit(self, sock: socket.socket, address: tuple[str, int]) -> bool:
        """Whether a just-accepted connection may stay (it is then tracked until it closes)."""
        with self._lock:
            self._prune()
            pending = [c for c in self._open.values() if not c.requested]
            if len(pending) >= self.max_pending or (
                sum(c.address == address[0] for c in pending) >= self.max_pending_per_address
            ):
                return False
            self._open[address] = _Connection(address=address[0], opened=monotonic(), socket=sock)
            return True

    def rebind(self, address: tuple[str, int], secured: socket.socket) -> None:
        """The connection at ``address`` now reads through ``secured`` (its TLS socket).

        Wrapping detaches the accepted socket, so deadlines and the caps must follow the new one.
        """
        with self._lock:
            connection = self._open.get(address)
            if connection is None:
                self._open[address] = _Connection(address=address[0], opened=monotonic(), socket=secured)
            else:
                connection.socket = secured

    def attach(self, address: tuple[str, int], association: Association, meter: _ReceiveMeter) -> None:
        """Link the connection at ``address`` to its association and receive meter."""
        with self._lock:
            connection = self._open.get(address)
            if connection is not None:
                connection.association, connection.meter = association, meter

    def requested(self, association: Association) -> None:
        """The association's A-ASSOCIATE-RQ has been read whole."""
        with self._lock:
            for connection in self._open.values():
                if connection.association is association:
                    connection.requested = True

    def _prune(self) -> None:
        """Forget connections that are over: their association ended, or they were closed before
        one began (a TLS handshake that never finished).

        An association is attached before its thread starts; one not started yet is not over (if
        it were forgotten then, nothing would ever hold it to the request deadline)."""
        gone = [
            key
            for key, c in self._open.items()
            if c.socket.fileno() == -1
            or (c.association is not None and _ended(c.association))
            or (c.association is None and c.closed_by_node is not None)
        ]
        for key in gone:
            del self._open[key]

    def enforce(self, now: float) -> list[str]:
        """Close every connection past a deadline; returns why, one reason each."""
        with self._lock:
            self._prune()
            overdue: list[tuple[_Connection, str]] = []
            for connection in self._open.values():
                reading = connection.meter.reading_since if connection.meter else None
                if not connection.requested and now - connection.opened > self.request_deadline_s:
                    overdue.append((connection, "no whole association request within the deadline"))
                elif reading is not None and now - reading > self.pdu_deadline_s:
                    overdue.append((connection, "PDU not completed within the network timeout"))
        for connection, reason in overdue:
            connection.closed_by_node = reason
            _close(connection.socket)
        return [reason for _, reason in overdue]

    def close_all(self) -> int:
        """Close every tracked connection (at the end of a shutdown's grace); returns how many."""
        with self._lock:
            connections = list(self._open.values())
        for connection in connections:
            _close(connection.socket)
        return len(connections)

    def watch(self, interval_s: float = 0.25) -> None:
        """Run :meth:`enforce` until :meth:`stop` (on a daemon thread)."""
        while not self._stopping.wait(interval_s):
            for reason in self.enforce(monotonic()):
                log.warning("connection closed", reason=reason)

    def stop(self) -> None:
        """End :meth:`watch`."""
        self._stopping.set()


def _ended(thread: threading.Thread) -> bool:
    """Whether ``thread`` has run and finished (not merely not started yet).

    ``is_alive`` is False before the thread starts too, and ``ident`` is set a moment before it counts
    as started; ``join`` refuses a thread not started, and with no timeout to wait does not wait."""
    try:
        thread.join(timeout=0)
    except RuntimeError:  # not started yet
        return False
    return not thread.is_alive()


def _close(sock: socket.socket) -> None:
    """Shut a socket down so that a thread blocked reading it returns at once."""
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


#: How long a receiving association's DUL thread waits for data from the peer, or for something to send,
#: before it looks at its timers and stop flag again (:class:`_PromptSocket`).
_DUL_WAIT_S = 0.01
#: The DUL thread's pause after a turn with nothing to do (pynetdicom's default 1 ms): it now waits in
#: :class:`_PromptSocket` instead, and a turn with nothing to do is one woken to send.
_DUL_LOOP_DELAY_S = 0.0001


class _WakingQueue(queue.Queue[Any]):
    """The association's queue of primitives for the DUL thread to send, which wakes that thread from its
    wait in :class:`_PromptSocket` (an eventfd it owns) as soon as a primitive is put."""

    def __init__(self) -> None:
        super().__init__()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._guard = threading.Lock()
        self._closed = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with self._guard:
            if not self._closed:  # once closed, the number may name another file: never written
                os.eventfd_write(self.wake, 1)

    def close(self) -> None:
        """Close the eventfd (when the DUL thread, the only one waiting on it, has ended)."""
        with self._guard:
            if not self._closed:
                self._closed = True
                os.close(self.wake)


class _PromptSocket(AssociationSocket):
    """pynetdicom's association socket whose readiness check waits for data or a wake-up.

    pynetdicom's DUL thread asks the socket whether data is there (without waiting) and sleeps 1 ms
    between turns, so each PDU in and each answer out waited up to a millisecond, a good part of a
    C-STORE's round trip. Here the question waits on the socket and the association's eventfd
    (:class:`_WakingQueue`) together, up to :data:`_DUL_WAIT_S`: a PDU is read, and an answer sent, the
    moment it can be; an idle association wakes 100 times a second instead of 1000. (poll, not select:
    a descriptor numbered past 1023 is as good as any.)
    """

    wake: int

    @property
    def ready(self) -> bool:
        connection = self.socket
        if connection is None or self._is_connected is False:
            return False
        if isinstance(connection, ssl.SSLSocket) and connection.pending():
            return True  # decrypted data poll cannot see
        descriptor = connection.fileno()  # -1 once closed: refused below
        try:
            waiting = select.poll()
            waiting.register(descriptor, select.POLLIN)
            waiting.register(self.wake, select.POLLIN)
            events = dict(waiting.poll(_DUL_WAIT_S * 1000))
        except (OSError, ValueError):  # the socket was closed meanwhile
            self.event_queue.put("Evt17")  # Evt17: transport connection closed
            return False
        if self.wake in events:
            with contextlib.suppress(BlockingIOError):  # already drained
                os.eventfd_read(self.wake)
        if events.get(descriptor, 0) & select.POLLNVAL:
            self.event_queue.put("Evt17")
            return False
        # Data, or the peer hung up or failed (the read then finds it out, as after select).
        return descriptor in events

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only when the peer closes the connection), straight into one buffer
        in as few reads as the network allows; pynetdicom reads 4 KiB at a time, some 30 system
        calls and copies for an MR image."""
        connection = cast(socket.socket, self.socket)
        data = bytearray(nr_bytes)
        with memoryview(data) as view:
            read = 0
            while read < nr_bytes:
                got = connection.recv_into(view[read:], nr_bytes - read)
                if not got:
                    return data[:read]  # the connection is broken: what was read
                read += got
        return data


#: The pause pynetdicom's association reactor takes between its turns (``time.sleep(0.001)``).
_PYNETDICOM_REACTOR_PAUSE_S = 0.001
#: How long a receiving association's reactor waits for a decoded message (or a release, an abort, the
#: end of its DUL thread) before it looks at its stop flag and timers again (:class:`_ReactorTime`).
_REACTOR_WAIT_S = 0.01


class _SignallingQueue(queue.Queue[Any]):
    """A queue that sets ``arrived`` whenever an item is put: wakes the association's reactor."""

    def __init__(self, arrived: threading.Event) -> None:
        super().__init__()
        self.arrived = arrived

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.arrived.set()


class _PromptReactor(Association):
    """A receiving association whose reactor waits for what it looks for instead of polling
    (:class:`_ReactorTime`). Only the class of an association :func:`_prompt` prepared; it adds the
    event it waits on, and wakes it when the association is stopped from another thread."""

    #: Set when a decoded message, a primitive from the peer, the end of the DUL thread, or a stop
    #: (:meth:`kill`) arrives.
    arrived: threading.Event

    def kill(self) -> None:
        """pynetdicom's stop (abort and release from another thread end in it), with the reactor woken
        to see it at once rather than at the end of its wait."""
        self._kill = True  # what the woken reactor reads first
        self.arrived.set()
        super().kill()


class _ReactorTime(types.ModuleType):
    """``time`` as pynetdicom's association module sees it, with a reactor that waits rather than polls.

    The reactor of each association (its own thread) sleeps 1 ms between turns, in each of which it
    looks for a decoded message, a release or abort from the peer, the end of its DUL thread and its
    timers: a C-STORE waited up to a millisecond (on average half of one) before its handler ran, a
    good part of the round trip. On an association :func:`_prompt` prepared, that pause is instead a
    wait for any of those to arrive (a :class:`_SignallingQueue` on each path), at most
    :data:`_REACTOR_WAIT_S` so the stop flag and timers are still looked at; every other sleep, on
    every other thread (a requestor's association among them), is ``time.sleep``.
    """

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if not isinstance(thread, _PromptReactor) or seconds != _PYNETDICOM_REACTOR_PAUSE_S:
            time.sleep(seconds)
            return
        if not thread.dimse.msg_queue.empty():
            return  # a second message came in while the first was served: the set flag was cleared
        thread.arrived.wait(_REACTOR_WAIT_S)
        thread.arrived.clear()  # whatever set it is looked at in the turn that follows


def _prompt(association: Association) -> None:
    """Have the association's DUL thread wait on its socket rather than poll it (:class:`_PromptSocket`),
    and its reactor wait for messages rather than poll for them (:class:`_ReactorTime`); before the
    association starts. The eventfd is closed when the DUL thread ends. Where the platform has no
    eventfd (not Linux), pynetdicom's polling stays."""
    if not hasattr(os, "eventfd"):
        return
    namespace = vars(pynetdicom.association)  # its ``time``; set twice by two first callers at once: harmless
    if not isinstance(namespace["time"], _ReactorTime):
        namespace["time"] = _ReactorTime()
    arrived = threading.Event()
    association.dimse.msg_queue = _SignallingQueue(arrived)
    association.dul.to_user_queue = _SignallingQueue(arrived)
    association.__class__ = _PromptReactor
    cast(_PromptReactor, association).arrived = arrived
    dul = association.dul
    sending = _WakingQueue()
    transport = cast(AssociationSocket, dul.socket)
    transport.__class__ = _PromptSocket
    cast(_PromptSocket, transport).wake = sending.wake
    dul.to_provider_queue = sending
    dul._run_loop_delay = _DUL_LOOP_DELAY_S
    run = dul.run

    def run_then_close() -> None:
        try:
            run()
        finally:
            sending.close()
            arrived.set()

    dul.run = run_then_close  # type: ignore[method-assign]


class _MeteredRequestHandler(RequestHandler):
    """pynetdicom's request handler, with a :class:`_ReceiveMeter` on each association's socket, whose
    DUL thread waits on the socket instead of polling it (:func:`_prompt`)."""

    def _create_association(self) -> Association:
        association = super()._create_association()
        _prompt(association)
        server = cast(_NoDelayServer, self.server)
        meter = _ReceiveMeter(server.max_pdu_bytes, server.max_message_bytes, server.budget)
        transport = cast(AssociationSocket, association.dul.socket)
        transport.recv = meter.wrap(transport.recv)  # type: ignore[method-assign,assignment]
        server.meters[association] = meter
        server.connections.attach(cast(tuple[str, int], self.client_address), association, meter)
        return association


class _NoDelayServer(ThreadedAssociationServer):
    """Association server that disables Nagle on accepted sockets (small PDUs are not delayed).

    It also carries the receive limits its request handler applies to each association, and the
    admission of connections (:class:`_Connections`).
    """

    max_pdu_bytes: int = 1 << 20
    max_message_bytes: int = 1 << 30
    meters: weakref.WeakKeyDictionary[Association, _ReceiveMeter]
    connections: _Connections
    budget: _MemoryBudget | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit the connection unless too many from anyone, or from its address, are pending."""
        if self.connections.admit(request, client_address):
            return True
        log.warning("connection refused: too many connections without an association request")
        return False


class _ReusePort:
    """Binds with SO_REUSEPORT: every receiver process listens on the same port, and the kernel
    spreads new connections over them."""

    def server_bind(self) -> None:
        listener = cast(socket.socket, self.socket)  # type: ignore[attr-defined]
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()  # type: ignore[misc]


class _ReusePortServer(_ReusePort, _NoDelayServer):
    """:class:`_NoDelayServer` on a port shared with the other receiver processes."""


@dataclass
class _Counts:
    association_id: str
    stored: int = 0
    duplicates: int = 0
    refused: int = 0


#: pynetdicom's warning for each request UID that breaks PS3.5 9.1 (real-world UIDs with leading
#: zeros, which the node accepts by design): counted per association instead of logged per instance.
_NONCONFORMANT_UID = "Non-conformant"


class _NonconformantUids(logging.Filter):
    """Drops pynetdicom's per-request UID-conformance warning and counts it per thread; an
    association's count is that of its own thread and its DUL reader's (:meth:`take`), from its
    acceptance to its end. pynetdicom only warns at WARNING and below, so with
    ``LOGGING__PYNETDICOM_LEVEL=ERROR`` nothing is counted."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_NONCONFORMANT_UID):
            return True
        with self._lock:
            thread = threading.get_ident()
            self._counts[thread] = self._counts.get(thread, 0) + 1
        return False

    def take(self, association: Association) -> int:
        """The count of the association's threads since the last take."""
        threads = {association.ident, getattr(association.dul, "ident", None)}
        with self._lock:
            return sum(self._counts.pop(thread, 0) for thread in threads if thread is not None)


_NONCONFORMANT = _NonconformantUids()
logging.getLogger("pynetdicom.utils").addFilter(_NONCONFORMANT)


class _TLSServer(TLSHandshakeServer, _NoDelayServer):
    """The listener's server for DICOM TLS: each handshake on its connection's own thread."""

    def secured(self, client_address: tuple[str, int], secured: socket.socket) -> None:
        self.connections.rebind(client_address, secured)


class _ReusePortTLSServer(_ReusePort, _TLSServer):
    """:class:`_TLSServer` on a port shared with the other receiver processes."""


class InstanceSink(Protocol):
    """Where received instances go: stored durably and indexed before :meth:`store` returns."""

    def store(
        self,
        data: bytes,
        calling_ae: str | None = None,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        expected_study: str | None = None,
    ) -> Stored:
        """Store one Part 10 byte string; raises a :class:`~node.errors.NodeError` to refuse it.

        ``expected_study``: the study it must belong to (a STOW-RS request for one study)."""
        ...


class StorageSCP:
    """Owns the pynetdicom AE and server for the node's listener."""

    def __init__(
        self,
        settings: DicomSettings,
        ingest: InstanceSink,
        pseudonymise: Pseudonymiser,
        metrics: NodeMetrics | None = None,
        shared: tuple[SharedAssociations, int] | None = None,
    ) -> None:
        """``shared``: this listener is one of several receiver processes on one port (SO_REUSEPORT),
        counting associations in the shared counters (its row given)."""
        self._settings = settings
        self._reuse_port = shared is not None
        self._metrics = metrics or NodeMetrics()
        self._ingest = ingest
        self._pseudonymise = pseudonymise
        self._counts: dict[int, _Counts] = {}
        self._lock = threading.Lock()
        ae = identified(
            _NodeAE(
                settings.ae_title,
                list(settings.allowed_callers),
                settings.max_associations_per_caller,
                shared,
            )
        )
        ae.supported_contexts = storage_contexts()
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.network_timeout = settings.network_timeout_s
        ae.acse_timeout = settings.acse_timeout_s
        ae.dimse_timeout = settings.dimse_timeout_s
        self._ae: _NodeAE = ae
        self._server: ThreadedAssociationServer | None = None
        self._connections: _Connections | None = None
        # Built now so that an unusable certificate, key or CA stops the node at startup.
        self._ssl_context = server_context(settings) if settings.tls else None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread."""
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = cast(
            _NoDelayServer,
            self._ae.make_server(
                (self._settings.host, self._settings.port),
                evt_handlers=handlers,
                ssl_context=self._ssl_context,
                server_class=self._server_class(),
                request_handler=_MeteredRequestHandler,
            ),
        )
        server.meters = weakref.WeakKeyDictionary()
        server.budget = _MemoryBudget(
            self._settings.max_inflight_mb * 1024 * 1024, wait_s=self._settings.network_timeout_s / 2
        )
        self._connections = server.connections = _Connections(
            max_pending=self._settings.max_pending_connections,
            max_pending_per_address=self._settings.max_pending_per_address,
            request_deadline_s=self._settings.request_deadline_s,
            pdu_deadline_s=self._settings.network_timeout_s,
        )
        threading.Thread(target=self._connections.watch, name="dicom-connections", daemon=True).start()
        server.max_message_bytes = self._settings.max_instance_mb * 1024 * 1024 + _COMMAND_ALLOWANCE
        server.max_pdu_bytes = max(self._settings.max_pdu_size, _MIN_PDU_ALLOWANCE) + _PDU_HEADER
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        self._ae._servers.append(server)  # so AE.active_associations sees this server
        self._server = server
        log.info(
            "listening",
            ae_title=self._settings.ae_title,
            host=self._settings.host,
            port=self.port,
            tls=self._ssl_context is not None,
        )

    def _server_class(self) -> type[_NoDelayServer]:
        if self._ssl_context is None:
            return _ReusePortServer if self._reuse_port else _NoDelayServer
        return _ReusePortTLSServer if self._reuse_port else _TLSServer

    def stop(self, grace_s: float) -> None:
        """Stop accepting, let established associations finish within ``grace_s``, abort the rest.

        A connection that has not negotiated an association (a TCP health check, a port scan) has
        nothing in flight and is not waited for; ``grace_s`` bounds the whole wait, not each join.
        """
        server = self._server
        if server is None:
            return
        server.shutdown()  # no new connections from here on
        deadline = monotonic() + grace_s
        active = list(server.active_associations)
        established = [a for a in active if a.is_established]
        for association in established:
            association.join(timeout=max(0.0, deadline - monotonic()))
        unfinished = [a for a in established if a.is_alive()]
        # An A-ABORT waits for the association's reader, and a peer that stopped half-way through a
        # PDU holds that reader in a read; each abort gets a second, then every socket is closed,
        # which ends any read, so SIGTERM is honoured whatever a peer does.
        aborts = [
            threading.Thread(target=association.abort, name="dicom-abort", daemon=True)
            for association in unfinished
        ]
        for thread in aborts:
            thread.start()
        abort_deadline = monotonic() + 1.0
        for thread in aborts:
            thread.join(timeout=max(0.0, abort_deadline - monotonic()))
        if self._connections is not None:
            self._connections.close_all()
            self._connections.stop()
        self._server = None
        log.info("listener stopped", unfinished_associations=len(unfinished))

    # -- event handlers (association threads) ------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        if self._connections is not None:
            self._connections.requested(event.assoc)
        meter = self._meter(event.assoc)
        if meter is not None:
            meter.release()  # the A-ASSOCIATE-RQ has been read and decoded

    def _on_connection_closed(self, event: evt.Event) -> None:
        """A connection closed: its bytes leave the memory budget, and if it closed before its
        A-ASSOCIATE-RQ, its association ends now.

        Every end of a connection passes here (a release, an abort, a peer that went away before it
        asked for anything), so no bytes stay counted against the budget. pynetdicom's acceptor
        would otherwise wait out the ACSE timeout for a request that cannot come, holding two threads
        per closed connection (a port scan, a health check). ``None`` on the user queue is what it
        receives when that wait times out, and it then ends cleanly.
        """
        association = event.assoc
        self._ae.release(association)
        meter = self._meter(association)
        if meter is not None:
            meter.release()
        if association.is_acceptor and association.requestor.primitive is None:
            association.dul.to_user_queue.put(None)  # type: ignore[arg-type]

    def _on_accepted(self, event: evt.Event) -> None:
        association_id = uuid.uuid4().hex[:12]
        requestor = event.assoc.requestor
        structlog.contextvars.bind_contextvars(
            association_id=association_id,
            calling_ae=str(requestor.ae_title).strip(),
            peer=f"{requestor.address}:{requestor.port}",
        )
        with self._lock:
            self._counts[id(event.assoc)] = _Counts(association_id)
        _NONCONFORMANT.take(event.assoc)  # its threads may be reused: start from 0
        self._metrics.associations.labels(outcome="accepted").inc()
        log.info("association accepted")

    def _on_rejected(self, event: evt.Event) -> None:
        self._ae.release(event.assoc)
        self._metrics.associations.labels(outcome="rejected").inc()
        requestor = event.assoc.requestor
        log.warning(
            "association rejected",
            calling_ae=str(requestor.ae_title).strip(),
            peer=f"{requestor.address}:{requestor.port}",
        )

    def _meter(self, association: Association) -> _ReceiveMeter | None:
        server = self._server
        return server.meters.get(association) if isinstance(server, _NoDelayServer) else None

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            counts = self._counts.pop(id(event.assoc), None)
        meter = self._meter(event.assoc)
        if meter is not None:
            meter.release()
        if meter is not None and meter.exceeded is not None:
            self._metrics.associations.labels(outcome="over-limit").inc()
            log.warning("association ended by a receive limit", limit=meter.exceeded)
        nonconformant = _NONCONFORMANT.take(event.assoc)
        if nonconformant:
            self._metrics.nonconformant_uids.inc(nonconformant)
        if counts is not None:
            log.info(
                "association closed",
                how=event.event.name,
                stored=counts.stored,
                duplicates=counts.duplicates,
                refused=counts.refused,
                nonconformant_uids=nonconformant,
            )
        structlog.contextvars.clear_contextvars()

    def _on_echo(self, event: evt.Event) -> int:
        meter = self._meter(event.assoc)
        if meter is not None:
            meter.reset()
            meter.release()
        return int(Status.SUCCESS)

    def _count(self, counts: _Counts | None, outcome: str) -> None:
        """Count one C-STORE outcome for the association's log line and for /metrics."""
        self._metrics.instances_received.labels(outcome=outcome).inc()
        if counts is None:
            return
        if outcome == "stored":
            counts.stored += 1
        elif outcome == "duplicate":
            counts.duplicates += 1
        else:
            counts.refused += 1

    def _on_store(self, event: evt.Event) -> int:
        meter = self._meter(event.assoc)
        if meter is not None:
            meter.reset()
        try:
            return self._store(event)
        finally:
            if meter is not None:
                meter.release()

    def _store(self, event: evt.Event) -> int:
        counts = self._counts.get(id(event.assoc))
        request = cast(C_STORE, event.request)
        # Both are mandatory in a C-STORE request (PS3.7 9.3.1.1); an empty one matches no dataset.
        sop_class, sop_instance = (
            str(request.AffectedSOPClassUID or ""),
            str(request.AffectedSOPInstanceUID or ""),
        )
        try:
            stored = self._ingest.store(
                part10(
                    sop_class,
                    sop_instance,
                    event.context.transfer_syntax,
                    cast(BytesIO, request.DataSet).getvalue(),
                ),
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
                expected_sop_class=sop_class,
                expected_sop_instance=sop_instance,
            )
        except NodeError as error:
            self._count(counts, "refused")
            status = dimse_status(error)
            log.warning("instance refused", status=f"0x{int(status):04X}", reason=str(error))
            return int(status)
        except Exception:
            self._count(counts, "refused")
            log.exception("instance failed", status=f"0x{int(Status.PROCESSING_FAILURE):04X}")
            return int(Status.PROCESSING_FAILURE)
        self._count(counts, "duplicate" if stored.duplicate else "stored")
        if _stdlib_log.isEnabledFor(logging.DEBUG):  # no keyed hashes or processors for nothing
            log.debug(
                "instance stored",
                study=self._pseudonymise(stored.header.study_instance_uid),
                patient=self._pseudonymise(stored.header.patient_id or ""),
                duplicate=stored.duplicate,
            )
        return int(Status.SUCCESS)
