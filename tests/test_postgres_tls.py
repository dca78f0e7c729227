"""TLS to PostgreSQL (POSTGRES_TLS, POSTGRES_CA_FILE; postgres.tls_context): required and verified,
never a silent fall back to plain text. Against a PostgreSQL of the test's own with TLS on."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import pytest
from private_pg import PrivatePostgres, server_ids, system_binaries

from energy_worker.adapters import config, postgres


@pytest.fixture(scope="module")
def certs() -> Iterator[dict[str, Path]]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    folder = Path(tempfile.mkdtemp(prefix="ew-test-pg-tls-"))
    folder.chmod(0o711)  # the server's user reads its certificate and key here
    names = ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "other.key", "other.pem")
    files = {name: folder / name for name in names}

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", files["ca.key"], "-out", files["ca.pem"],
            "-days", "2", "-subj", "/CN=energy-worker test CA")  # fmt: skip
    openssl("req", "-x509", *ec, "-keyout", files["other.key"], "-out", files["other.pem"],
            "-days", "2", "-subj", "/CN=another CA")  # fmt: skip
    openssl("req", *ec, "-keyout", files["server.key"], "-out", files["server.csr"],
            "-subj", "/CN=localhost")  # fmt: skip
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", files["server.csr"], "-CA", files["ca.pem"], "-CAkey",
            files["ca.key"], "-CAcreateserial", "-out", files["server.pem"], "-days", "2",
            "-extfile", ext)  # fmt: skip
    for path in folder.iterdir():
        path.chmod(0o644)
    files["server.key"].chmod(0o600)
    ids = server_ids()
    if ids is not None:
        os.chown(files["server.key"], *ids)
    yield files
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_server(certs: dict[str, Path]) -> Iterator[PrivatePostgres]:
    options = {
        "ssl": "on",
        "ssl_cert_file": str(certs["server.pem"]),
        "ssl_key_file": str(certs["server.key"]),
    }
    bin_dir = system_binaries()  # pgserver's build has no TLS
    if bin_dir is None:
        pytest.skip("no PostgreSQL of the machine's own, built with TLS")
    server = PrivatePostgres(["host all all 127.0.0.1/32 trust"], options, bin_dir)
    try:
        yield server
    finally:
        server.stop()


def settings(port: int, **tls: object) -> config.PostgresSettings:
    return config.PostgresSettings("127.0.0.1", port, "postgres", "postgres", **tls)  # type: ignore[arg-type]


def test_tls_with_the_servers_ca_connects_encrypted(tls_server, certs):
    con = postgres.connect(
        settings(tls_server.port, tls=True, ca_file=str(certs["ca.pem"])), "test"
    )
    try:
        assert con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[True]]
    finally:
        con.close()


def test_without_tls_it_is_plain_text_even_where_the_server_offers_tls(tls_server):
    """tls off is plain text, not pg8000's default of an unverified TLS where offered."""
    con = postgres.connect(settings(tls_server.port), "test")
    try:
        assert con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[False]]
    finally:
        con.close()


@pytest.mark.parametrize("ca", ["other.pem", None])
def test_a_certificate_of_another_ca_is_refused(tls_server, certs, ca):
    """Another CA, or the system's CAs (which never signed the test's certificate)."""
    ca_file = str(certs[ca]) if ca else None
    with pytest.raises(postgres.ERRORS) as err:
        postgres.connect(settings(tls_server.port, tls=True, ca_file=ca_file), "test")
    assert "CERTIFICATE_VERIFY_FAILED" in repr(err.value) or "certificate verify" in str(err.value)


def test_a_server_without_tls_is_refused_not_used_in_plain_text(pg_server, certs):
    """The shared test server has TLS off: with tls the connection fails, it never falls back."""
    host, port = pg_server.host, pg_server.port
    if host.startswith("/"):
        pytest.skip("the test server is a unix socket")
    off = config.PostgresSettings(host, port, "postgres", pg_server.user, tls=True)
    with pytest.raises(pg8000.native.InterfaceError) as err:
        postgres.connect(off, "test")
    assert "SSL" in str(err.value)
    plain = postgres.connect(
        config.PostgresSettings(host, port, "postgres", pg_server.user), "test"
    )
    plain.close()  # without tls the same server answers: it is the setting that refused


def test_the_ini_holds_the_tls_settings(tmp_path: Path, certs):
    ini = tmp_path / "postgres.ini"
    base = "[postgresql]\nhost = postgres.example\nport = 5432\ndatabase = energy\nuser = me\n"
    ini.write_text(base + f"tls = true\nca_file = {certs['ca.pem']}\n")
    parsed = config.postgres_settings(ini)
    assert parsed.tls and parsed.ca_file == str(certs["ca.pem"])
    assert parsed.describe().endswith("(TLS)")
    ini.write_text(base + "tls = \n")  # the entrypoint's default: plain, for postgres-db
    assert not config.postgres_settings(ini).tls
    for bad, named in (
        ("tls = yes\n", "must be true or false"),
        (f"tls = false\nca_file = {certs['ca.pem']}\n", "tls is not"),
        ("tls = true\nca_file = /nonexistent/ca.pem\n", "cannot read POSTGRES_CA_FILE"),
    ):
        ini.write_text(base + bad)
        with pytest.raises(config.ConfigError, match=named):
            config.postgres_settings(ini)
    # and written back as read (the set-up's owner login)
    written = tmp_path / "written.ini"
    config.write_postgres_ini(parsed, written)
    assert config.postgres_settings(written) == parsed
