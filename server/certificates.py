"""The server certificate's validity dates, checked when it is read: at start and at each rotation.

Issue 26: an expired server certificate started (and rotated in) without a word, and every client then
failed its handshake. Now an expired certificate is refused at start (one line, exit 2) and never
rotated in (the previous one keeps serving, and the log says why); one that expires within
``WARN_DAYS`` days, or is not valid yet, is served with a warning in the log.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WARN_DAYS", "CertificateDates", "ExpiredCertificate", "check_dates", "leaf_dates"]

WARN_DAYS = 14


class ExpiredCertificate(ValueError):
    """The certificate's notAfter has passed; the message names the file and the date."""


@dataclass(frozen=True)
class CertificateDates:
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime


def leaf_dates(pem: bytes) -> CertificateDates:
    """The dates of the first certificate in a PEM chain (the server's own; the rest are its issuers)."""
    from cryptography import x509  # only when TLS is configured: edgeserver's mistakes answer before it loads

    cert = x509.load_pem_x509_certificate(pem)
    return CertificateDates(cert.subject.rfc4514_string(), cert.not_valid_before_utc, cert.not_valid_after_utc)


def check_dates(pem: bytes, path: Path, *, now: datetime.datetime | None = None) -> str | None:
    """ExpiredCertificate when expired; a warning line when it expires within WARN_DAYS or is not valid yet."""
    dates = leaf_dates(pem)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    when = dates.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if dates.not_after <= now:
        raise ExpiredCertificate(
            f"TLS certificate {path} expired on {when}: renew it (clients refuse an expired certificate)"
        )
    if dates.not_before > now:
        start = dates.not_before.strftime("%Y-%m-%d %H:%M UTC")
        return f"TLS certificate {path} is not valid until {start}: clients refuse it until then (check the clock)"
    left = dates.not_after - now
    if left < datetime.timedelta(days=WARN_DAYS):
        return f"TLS certificate {path} expires on {when}, in {left.days} days {left.seconds // 3600} hours: renew it"
    return None
