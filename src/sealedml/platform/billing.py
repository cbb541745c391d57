"""Credits and charges: every job is paid once, only when it succeeds, and never from credit that
is not there.

A prediction's price is ``rows x price_per_row``. The row count is public: the client declares it
in the sealed request's authenticated header and the enclave refuses a request whose payload
disagrees, so the platform can charge exactly without seeing any data. The life of a charge:

1. :meth:`Billing.hold` — before the enclave runs, one transaction inserts the charge (at most one
   live charge per ``request_id``: a retried request is refused, never billed twice; a refunded one
   may be sent again) and debits the payer
   with ``UPDATE ... WHERE balance >= amount`` (concurrent requests cannot overdraw);
2. :meth:`Billing.settle` — in the same transaction that records the finished job, the charge is
   marked settled and the provider is credited;
3. :meth:`Billing.refund` — if the enclave fails, the held amount goes back to the payer.

A crash between 1 and 2 leaves a ``held`` charge; :meth:`Billing.release_stale_holds` refunds
those at start-up (no enclave call survives a restart), so nothing is lost and nothing is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from sealedml.errors import BillingError, NotFoundError, RequestError
from sealedml.platform.db import Account, Charge, Database, utcnow

__all__ = ["MAX_CREDIT", "Billing", "ChargeRecord"]

MAX_CREDIT = 10**15
"""Upper bound on a single grant and on a price, so sums stay far inside 64-bit integers."""


@dataclass(frozen=True)
class ChargeRecord:
    """One charge as stored."""

    job_id: str
    request_id: str
    payer_id: str
    payee_id: str
    model_id: str
    rows: int
    amount: int
    status: str
    reason: str | None
    created_at: datetime
    closed_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> ChargeRecord:
        """Build from a ``charges`` row."""
        return cls(
            job_id=row.job_id,
            request_id=row.request_id,
            payer_id=row.payer_id,
            payee_id=row.payee_id,
            model_id=row.model_id,
            rows=row.rows,
            amount=row.amount,
            status=row.status,
            reason=row.reason,
            created_at=row.created_at,
            closed_at=row.closed_at,
        )


def check_amount(amount: object, what: str) -> int:
    """Return ``amount`` if it is an integer in 0..MAX_CREDIT, else raise ``billing.invalid_amount``."""
    if type(amount) is not int or not 0 <= amount <= MAX_CREDIT:
        raise BillingError(
            "billing.invalid_amount",
            f"{what} must be a whole number of credits in 0..{MAX_CREDIT}, got {amount!r}",
        )
    return amount


class Billing:
    """Blocking credit operations over one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def balance(self, account_id: str) -> int:
        """Return the account's balance; ``not_found.account`` if it does not exist."""
        with self.db.engine.connect() as conn:
            value = conn.scalar(
                select(Account.__table__.c.balance).where(Account.__table__.c.id == account_id)
            )
        if value is None:
            raise NotFoundError("not_found.account", "no such account")
        return int(value)

    def grant(self, account_id: str, amount: int) -> int:
        """Add ``amount`` (1..MAX_CREDIT) credits to an account and return the new balance."""
        check_amount(amount, "a credit grant")
        if amount == 0:
            raise BillingError("billing.invalid_amount", "a credit grant must be positive")
        accounts = Account.__table__
        with self.db.begin() as conn:
            result = conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(balance=accounts.c.balance + amount)
            )
            if result.rowcount != 1:
                raise NotFoundError("not_found.account", "no such account")
            return int(conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id)) or 0)

    def hold(
        self,
        *,
        job_id: str,
        request_id: str,
        payer_id: str,
        payee_id: str,
        model_id: str,
        rows: int,
        price_per_row: int,
    ) -> ChargeRecord:
        """Debit ``rows x price_per_row`` from the payer and record the charge as held, atomically.

        Raises ``request.replayed`` if ``request_id`` has a held or settled charge and
        ``billing.insufficient_credit`` if the balance does not cover it; either way nothing changes.
        """
        amount = rows * price_per_row
        check_amount(amount, "the price of this job")
        accounts, charges = Account.__table__, Charge.__table__
        now = utcnow()
        values = {
            "job_id": job_id,
            "request_id": request_id,
            "payer_id": payer_id,
            "payee_id": payee_id,
            "model_id": model_id,
            "rows": rows,
            "amount": amount,
            "status": "held",
            "reason": None,
            "created_at": now,
            "closed_at": None,
        }
        try:
            with self.db.begin() as conn:
                conn.execute(insert(charges).values(**values))
                debited = conn.execute(
                    update(accounts)
                    .where((accounts.c.id == payer_id) & (accounts.c.balance >= amount))
                    .values(balance=accounts.c.balance - amount)
                )
                if debited.rowcount != 1:
                    balance = conn.scalar(select(accounts.c.balance).where(accounts.c.id == payer_id))
                    raise BillingError(
                        "billing.insufficient_credit",
                        f"this job costs {amount} credits ({rows} rows x {price_per_row}); "
                        f"the balance is {balance or 0}",
                    )
        except IntegrityError as exc:
            raise RequestError("request.replayed", "this request id was already used") from exc
        return ChargeRecord(**values)  # type: ignore[arg-type]

    def settle(self, conn: Connection, job_id: str) -> None:
        """Inside the caller's transaction: mark the held charge settled and pay the provider.

        Raises ``RuntimeError`` if there is no held charge for ``job_id`` (a programming error: the
        caller's transaction then rolls back, so the job is not recorded unpaid).
        """
        charges, accounts = Charge.__table__, Account.__table__
        row = conn.execute(
            select(charges.c.payee_id, charges.c.amount).where(
                (charges.c.job_id == job_id) & (charges.c.status == "held")
            )
        ).one_or_none()
        if row is None:
            raise RuntimeError(f"no held charge for job {job_id}")
        conn.execute(
            update(charges)
            .where((charges.c.job_id == job_id) & (charges.c.status == "held"))
            .values(status="settled", closed_at=utcnow())
        )
        conn.execute(
            update(accounts)
            .where(accounts.c.id == row.payee_id)
            .values(balance=accounts.c.balance + row.amount)
        )

    def refund(self, job_id: str, reason: str) -> bool:
        """Give a held charge back to its payer; returns False if it was not held (already closed)."""
        charges, accounts = Charge.__table__, Account.__table__
        with self.db.begin() as conn:
            return self._refund(conn, charges, accounts, job_id, reason)

    def _refund(self, conn: Connection, charges: Any, accounts: Any, job_id: str, reason: str) -> bool:
        row = conn.execute(
            select(charges.c.payer_id, charges.c.amount).where(
                (charges.c.job_id == job_id) & (charges.c.status == "held")
            )
        ).one_or_none()
        if row is None:
            return False
        conn.execute(
            update(charges)
            .where((charges.c.job_id == job_id) & (charges.c.status == "held"))
            .values(status="refunded", reason=reason[:128], closed_at=utcnow())
        )
        conn.execute(
            update(accounts)
            .where(accounts.c.id == row.payer_id)
            .values(balance=accounts.c.balance + row.amount)
        )
        return True

    def release_stale_holds(self) -> int:
        """Refund every held charge (call at start-up, when no enclave call can be in flight)."""
        charges, accounts = Charge.__table__, Account.__table__
        with self.db.begin() as conn:
            held = conn.scalars(select(charges.c.job_id).where(charges.c.status == "held")).all()
            for job_id in held:
                self._refund(conn, charges, accounts, job_id, "platform restarted before the job finished")
        return len(held)

    def charges(self, *, account_id: str | None = None, status: str | None = None) -> list[ChargeRecord]:
        """Return charges (optionally those an account paid or earned, or of one status), oldest first."""
        charges = Charge.__table__
        query = select(charges).order_by(charges.c.created_at, charges.c.job_id)
        if account_id is not None:
            query = query.where((charges.c.payer_id == account_id) | (charges.c.payee_id == account_id))
        if status is not None:
            query = query.where(charges.c.status == status)
        with self.db.engine.connect() as conn:
            return [ChargeRecord.of(row) for row in conn.execute(query)]

    def totals(self) -> dict[str, int]:
        """Return the sum of balances and of settled and held charges (for audits and tests)."""
        charges, accounts = Charge.__table__, Account.__table__
        with self.db.engine.connect() as conn:
            balances = conn.scalar(select(func.coalesce(func.sum(accounts.c.balance), 0)))
            settled = conn.scalar(
                select(func.coalesce(func.sum(charges.c.amount), 0)).where(charges.c.status == "settled")
            )
            held = conn.scalar(
                select(func.coalesce(func.sum(charges.c.amount), 0)).where(charges.c.status == "held")
            )
        return {"balances": int(balances or 0), "settled": int(settled or 0), "held": int(held or 0)}
