"""A real OpenLDAP ``slapd`` (Debian's package) as a child process on a loopback port.

It gets its own temporary directory and a generated ``slapd.conf``: an mdb database for
``dc=example,dc=org``, the memberof overlay, and ``allow bind_anon_dn`` (so the server
itself *accepts* a bind with a DN and an empty password, the anonymous-bind trap the login
must not fall into). The people are loaded offline with ``slapadd``; the groups are added
online once the server runs, so that the memberof overlay writes each member's ``memberOf``.

Install: ``DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

import ldap3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import escape_rdn

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
PEOPLE = f"ou=people,{BASE_DN}"
GROUPS = f"ou=groups,{BASE_DN}"
SERVICE_DN = f"cn=switchboard,ou=services,{BASE_DN}"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Person:
    uid: str
    password: str
    name: str
    mail: str
    department: str | None = None

    @property
    def dn(self) -> str:
        return f"uid={escape_rdn(self.uid)},{PEOPLE}"


# Who is in the directory, and in which groups (group cn -> member uids).
PEOPLE_LIST = (
    Person("alice", "alice-pw-1", "Alice Admin", "alice@example.org", "Engineering"),
    Person("bob", "bob-pw-2", "Bob Builder", "bob@example.org", "Finance"),
    Person("carol", "carol-pw-3", "Carol NoGroup", "carol@example.org"),
    Person("dave", "dave-pw-4", "Dave Two-Groups", "dave@example.org"),
)
GROUP_MEMBERS = {
    "sb-admins": ("alice",),
    "engineering": ("alice", "dave"),
    "finance": ("bob", "dave"),
    "sb-users": ("alice", "bob", "dave"),
}


def ssha(password: str) -> str:
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # LDAP's {SSHA} scheme
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def write_certificates(directory: Path) -> None:
    """A throw-away CA (ca.pem) and a server certificate for 127.0.0.1 signed by it
    (server.pem, server.key), so the tests can check LDAPS and StartTLS with verification."""
    now = datetime.now(UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Switchboard test CA"))
        .issuer_name(name("Switchboard test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _require_installed() -> None:
    missing = [p for p in (SLAPD, SLAPADD) if not os.access(p, os.X_OK)]
    if missing:
        raise RuntimeError(
            f"OpenLDAP's slapd is required for the LDAP tests but {', '.join(missing)} is "
            "missing; install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "slapd ldap-utils"
        )


class Slapd:
    """``with Slapd() as ldap: ...`` — ``ldap.url``, ``ldap.admin_password``, the people."""

    def __init__(self) -> None:
        _require_installed()
        self.admin_password = "admin-" + secrets.token_hex(8)
        self.service_password = "service-" + secrets.token_hex(8)
        self.port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.tls_port = _free_port()
        self.ldaps_url = f"ldaps://127.0.0.1:{self.tls_port}"
        self._dir = Path(tempfile.mkdtemp(prefix="sb-slapd-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.people = {p.uid: p for p in PEOPLE_LIST}
        self.ca_file = self._dir / "ca.pem"

    def _config(self) -> str:
        schemas = "\n".join(
            f"include {SCHEMA_DIR / name}.schema"
            for name in ("core", "cosine", "nis", "inetorgperson")
        )
        return f"""{schemas}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload memberof
TLSCACertificateFile {self.ca_file}
TLSCertificateFile {self._dir / "server.pem"}
TLSCertificateKeyFile {self._dir / "server.key"}
pidfile {self._dir / "slapd.pid"}
argsfile {self._dir / "slapd.args"}
allow bind_anon_cred bind_anon_dn
sizelimit 500

database mdb
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ssha(self.admin_password)}
directory {self._dir / "data"}
maxsize 16777216
index objectClass eq
index uid eq
index member eq
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by dn.exact="{SERVICE_DN}" read
  by self read
  by users read
  by * none
"""

    def _people_ldif(self) -> str:
        entries = [
            f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\n"
            "dc: example\no: Example\n",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n",
            f"dn: {SERVICE_DN}\nobjectClass: person\nobjectClass: simpleSecurityObject\n"
            f"cn: switchboard\nsn: service\nuserPassword: {ssha(self.service_password)}\n",
        ]
        for p in PEOPLE_LIST:
            entry = (
                f"dn: {p.dn}\nobjectClass: inetOrgPerson\nuid: {p.uid}\ncn: {p.name}\n"
                f"sn: {p.name.split()[-1]}\nmail: {p.mail}\nuserPassword: {ssha(p.password)}\n"
            )
            if p.department:
                entry += f"departmentNumber: {p.department}\n"
            entries.append(entry)
        return "\n".join(entries)

    def start(self) -> Self:
        (self._dir / "data").mkdir()
        write_certificates(self._dir)
        conf = self._dir / "slapd.conf"
        conf.write_text(self._config())
        ldif = self._dir / "people.ldif"
        ldif.write_text(self._people_ldif())
        subprocess.run(
            [SLAPADD, "-f", str(conf), "-l", str(ldif)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        with (self._dir / "slapd.log").open("wb") as log:  # the child keeps its own copy
            self._process = subprocess.Popen(  # -d 0: stay in the foreground, log nothing
                [SLAPD, "-d", "0", "-f", str(conf), "-h", f"{self.url}/ {self.ldaps_url}/"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
            self._add_groups()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"slapd exited at start-up: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                with self.admin_connection():
                    return
            except (OSError, LDAPException):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"slapd was not ready within {START_TIMEOUT} s: {self.log()}"
                    ) from None
                time.sleep(0.05)

    @contextmanager
    def admin_connection(self) -> Iterator[ldap3.Connection]:
        """Bound as the directory's root DN; unbound (socket closed) on leaving."""
        server = ldap3.Server(self.url, connect_timeout=2, get_info=ldap3.NONE)
        conn = ldap3.Connection(
            server, ADMIN_DN, self.admin_password, receive_timeout=5, raise_exceptions=True
        )
        try:
            conn.bind()
            yield conn
        finally:
            conn.unbind()

    def _add_groups(self) -> None:
        with self.admin_connection() as conn:
            for cn, uids in GROUP_MEMBERS.items():
                conn.add(  # type: ignore[no-untyped-call]
                    f"cn={cn},{GROUPS}",
                    ["groupOfNames"],
                    {"cn": cn, "member": [self.people[u].dn for u in uids]},
                )

    def add_person(self, uid: str, password: str, groups: tuple[str, ...] = ()) -> Person:
        """Add someone now (e.g. with a name that needs escaping), in existing groups."""
        person = Person(uid, password, f"Test {uid}", f"{secrets.token_hex(4)}@example.org")
        with self.admin_connection() as conn:
            conn.add(  # type: ignore[no-untyped-call]
                person.dn,
                ["inetOrgPerson"],
                {
                    "uid": uid,
                    "cn": person.name,
                    "sn": "Test",
                    "mail": person.mail,
                    "userPassword": password,
                },
            )
            for cn in groups:
                conn.modify(  # type: ignore[no-untyped-call]
                    f"cn={cn},{GROUPS}", {"member": [(ldap3.MODIFY_ADD, [person.dn])]}
                )
        self.people[uid] = person
        return person

    def log(self) -> str:
        path = self._dir / "slapd.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(STOP_TIMEOUT)
        self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
