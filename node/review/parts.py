"""The review side of the node built from one ``Settings``: accounts, audit, reviews, review service."""

from __future__ import annotations

from dataclasses import dataclass

from node.accounts.passwords import Passwords
from node.accounts.service import AccountService
from node.config import Settings
from node.metrics import NodeMetrics
from node.review.service import ReviewService, VerifiedPicture, VerifiedSrBuilder
from node.store.audit import AuditLog
from node.store.index import Index
from node.store.outbox import Outbox
from node.store.reviews import ReviewStore
from node.store.spool import Spool


@dataclass(frozen=True)
class ReviewParts:
    """Everything the worklist (web or CLI) works with, sharing one index."""

    index: Index
    outbox: Outbox
    accounts: AccountService
    audit: AuditLog
    store: ReviewStore
    service: ReviewService

    @classmethod
    def build(
        cls,
        settings: Settings,
        index: Index,
        outbox: Outbox,
        metrics: NodeMetrics | None = None,
        passwords: Passwords | None = None,
        build_verified_sr: VerifiedSrBuilder | None = None,
        verified_picture: VerifiedPicture | None = None,
        serving: bool = True,
    ) -> ReviewParts:
        """Wire the review parts onto an open index and the node's outbox (``<data_dir>/outbox``).

        ``serving``: these parts belong to the running node, whose destinations receive the verified
        results; the CLI's parts (``serving=False``) only record reviews, which the node then sends.
        """
        audit = AuditLog(index)
        store = ReviewStore(index)
        service = ReviewService(
            store=store,
            outbox=outbox,
            outbox_root=settings.storage.data_dir / "outbox",
            audit=audit,
            destinations=settings.delivery.destinations if serving else None,
            build_verified_sr=build_verified_sr,
            metrics=metrics,
            verified_picture=verified_picture,
        )
        accounts = AccountService(index, settings.auth, passwords, metrics)
        return cls(index=index, outbox=outbox, accounts=accounts, audit=audit, store=store, service=service)

    @classmethod
    def open(cls, settings: Settings, passwords: Passwords | None = None) -> ReviewParts:
        """Open the index and outbox without the rest of the node (the CLI); :meth:`close` when done."""
        index = Index.open(settings.storage.effective_database_url())
        outbox = Outbox(index, Spool(settings.storage.data_dir / "outbox"))
        return cls.build(settings, index, outbox, passwords=passwords, serving=False)

    def close(self) -> None:
        """Release the index's connections."""
        self.index.close()
