"""Message signing (Celery's auth serializer): signed jobs run; an unsigned message is refused."""

from __future__ import annotations

import datetime
import json
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kombu import Connection, Exchange, Producer

from tests.conftest import wait_until


def _key_and_cert(directory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    (directory / "worker.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (directory / "certs").mkdir()
    (directory / "certs" / "worker.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / "worker.key", directory / "certs" / "worker.pem", str(directory / "certs" / "*.pem")


def test_signed_messages_run_and_unsigned_ones_are_refused(make_settings, redis_url, sqlite_url, tmp_path,
                                                          start_worker, run_cli):
    key, cert, store = _key_and_cert(tmp_path)
    settings = make_settings(broker_url=redis_url, database_url=sqlite_url, security_key=key,
                             security_certificate=cert, security_cert_store=store)
    worker = start_worker(settings, wait=False)
    wait_until(lambda: "ready" in worker.output() or worker.proc.poll() is not None, timeout=30,
               message="the signing worker")
    assert worker.proc.poll() is None, worker.output()[-3000:]
    out = run_cli(settings, "enqueue", "system.ping", "-d", "message=signed", "--wait", "--timeout", "30",
                  "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"]["message"] == "signed"

    with Connection(redis_url) as conn:  # a forger without the key publishes plain JSON
        Producer(conn).publish({"message": "forged"}, exchange=Exchange("default", type="direct"),
                               routing_key="default", serializer="json",
                               headers={"id": "forged-1", "task": "system.ping", "lang": "py",
                                        "argsrepr": "()", "kwargsrepr": "{}"}, declare=[])
    wait_until(lambda: "forged-1" in worker.output() or "untrusted" in worker.output().lower()
               or "Refusing" in worker.output(), timeout=20, message="the worker to refuse it")
    time.sleep(0.5)
    assert worker.proc.poll() is None
    shown = run_cli(settings, "jobs", "show", "forged-1")
    assert shown.returncode == 1  # never ran, never recorded
