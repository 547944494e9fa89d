"""Server certificates' dates (issue 26 item 8): an expired one is refused at start and never rotated in
(the previous one keeps serving, and the log says why); one about to expire is served with a warning."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from edgeinfer.client import EdgeClient
from edgeinfer.server import Daemon
from edgeinfer.server.certificates import ExpiredCertificate, check_dates
from edgeinfer.server.security import SecurityConfigError, ServerTls

NAMES = ("localhost", "127.0.0.1", "::1")
NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _leaf(ca: trustme.CA, folder: Path, stem: str, not_before: datetime.datetime, days: float) -> Path:
    cert = ca.issue_cert(*NAMES, not_before=not_before, not_after=not_before + datetime.timedelta(days=days))
    cert.cert_chain_pems[0].write_to_path(str(folder / f"{stem}.cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / f"{stem}.key.pem"))
    (folder / f"{stem}.key.pem").chmod(0o600)
    return folder / f"{stem}.cert.pem"


def test_dates_decide_refusal_and_warning(ca: trustme.CA, tmp_path: Path) -> None:
    expired = _leaf(ca, tmp_path, "expired", NOW - datetime.timedelta(days=40), 30)
    soon = _leaf(ca, tmp_path, "soon", NOW - datetime.timedelta(days=80), 90)
    later = _leaf(ca, tmp_path, "later", NOW - datetime.timedelta(days=1), 365)
    future = _leaf(ca, tmp_path, "future", NOW + datetime.timedelta(days=2), 365)
    with pytest.raises(ExpiredCertificate, match=rf"TLS certificate {expired} expired on \d{{4}}-\d\d-\d\d"):
        check_dates(expired.read_bytes(), expired)
    warning = check_dates(soon.read_bytes(), soon)
    assert warning is not None and warning.startswith(f"TLS certificate {soon} expires on ") and "in 9 days" in warning
    assert check_dates(later.read_bytes(), later) is None
    assert "is not valid until" in (check_dates(future.read_bytes(), future) or "")
    # the day it turns: the same certificate, read 11 days later, is refused
    with pytest.raises(ExpiredCertificate):
        check_dates(soon.read_bytes(), soon, now=NOW + datetime.timedelta(days=11))


def test_an_expired_certificate_stops_edgeserver_in_one_line(ca: trustme.CA, tmp_path: Path) -> None:
    cert = _leaf(ca, tmp_path, "expired", NOW - datetime.timedelta(days=40), 30)
    key = tmp_path / "expired.key.pem"
    argv = [
        "--model",
        "squeezenet",
        "--weights",
        "random",
        "--port",
        "0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]
    code = f"import sys\nfrom edgeinfer.server.cli import main\nsys.exit(main({argv!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "listening" not in out.stdout
    [line] = out.stderr.splitlines()
    assert line.startswith(f"edgeserver: error: TLS certificate {cert} expired on ") and "renew it" in line
    with pytest.raises(SecurityConfigError, match="expired on"):
        ServerTls(cert, key)


def test_a_soon_expiring_certificate_serves_with_a_warning(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgeinfer.server.security")
    cert = _leaf(ca, tmp_path, "soon", NOW - datetime.timedelta(days=85), 90)
    ServerTls(cert, tmp_path / "soon.key.pem")
    assert f"TLS certificate {cert} expires on" in caplog.text and "in 4 days" in caplog.text


def test_rotation_to_an_expired_certificate_keeps_the_old_one(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgeinfer.server.security")
    served = tmp_path / "served"
    served.mkdir()
    good = _leaf(ca, tmp_path, "good", NOW - datetime.timedelta(days=1), 365)
    expired = _leaf(ca, tmp_path, "expired", NOW - datetime.timedelta(days=40), 30)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def install(cert: Path) -> None:  # as a deploy tool does: each file swapped whole
        for src, name in ((cert, "cert.pem"), (cert.with_name(cert.name.replace("cert", "key")), "key.pem")):
            shutil.copyfile(src, served / f".{name}")
            os.replace(served / f".{name}", served / name)

    install(good)
    tls = ServerTls(served / "cert.pem", served / "key.pem")
    daemon = Daemon(["localhost:0"], tls=tls).start()
    try:
        daemon.mark_ready()
        install(expired)
        for _ in range(2):  # each new connection asks for the files; the expired pair is never taken
            with EdgeClient(f"localhost:{daemon.port}", tls_ca=ca_file, timeout=10) as client:
                assert client.models() == []
        assert tls.reloads == 0
        refusals = [r.getMessage() for r in caplog.records if "expired on" in r.getMessage()]
        assert len(refusals) == 1 and "new connections keep the previous certificate" in refusals[0]
        install(good)  # a good one again: taken
        with EdgeClient(f"localhost:{daemon.port}", tls_ca=ca_file, timeout=10) as client:
            assert client.models() == []
        assert tls.reloads == 1
    finally:
        daemon.stop(grace=0)


def test_edgeserver_warns_in_its_log_format_about_a_certificate_near_its_end(ca: trustme.CA, tmp_path: Path) -> None:
    cert = _leaf(ca, tmp_path, "soon", NOW - datetime.timedelta(days=85), 90)
    argv = ["--model", "alexnet", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "soon.key.pem")]
    code = f"import sys\nfrom edgeinfer.server.cli import main\nsys.exit(main({argv!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    warning, error = out.stderr.splitlines()  # the warning, then the mistake that stops it (an unknown model)
    assert f"WARNING edgeinfer.server.security: TLS certificate {cert} expires on " in warning
    assert out.returncode == 2 and error.startswith("edgeserver: error: argument --model: unknown model 'alexnet'")
