"""The public keys that may sign in over SFTP as an instance: added by its owner (bot) or an operator
(CLI), read by the SFTP endpoint at every sign-in, so a key removed is refused at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import asyncssh
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.events import record
from foundry_fleet.services.instance_views import instance_row
from foundry_fleet.store.models import SftpKeyRow

MAX_KEY_TEXT = 16 * 1024  # an RSA-16384 public key is about 2.8 kB; more is not a public key
MIN_RSA_BITS = 2048
MAX_KEYS = 20  # per instance
# DSA is 1024-bit only, and OpenSSH itself no longer accepts it.
REFUSED_TYPES = {"ssh-dss"}


@dataclass(frozen=True)
class SftpKey:
    id: int
    instance: str
    fingerprint: str
    key_type: str
    comment: str
    added_by: str
    added_at: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ParsedKey:
    key_type: str
    fingerprint: str
    text: str  # the one-line OpenSSH form, as stored
    comment: str


def parse_public_key(text: str) -> ParsedKey:
    """One public key in OpenSSH (or RFC 4716) form, checked to be one that may guard a tenant's files."""
    text = text.strip()
    if not text:
        raise InvalidInput("no key given", "paste the one line of your .pub file, e.g. ~/.ssh/id_ed25519.pub")
    if len(text) > MAX_KEY_TEXT:
        raise InvalidInput("that is too long for a public key", "paste the one line of your .pub file")
    if "PRIVATE KEY" in text:
        # Said plainly: whoever sent it should make a new key, as it has now been shown to someone else.
        raise InvalidInput("that is a private key, which must never leave your computer",
                           "send the .pub file's line instead, and make a new key pair: this one has been exposed")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError, TypeError) as e:
        raise InvalidInput(f"not a public key I can read ({e})",
                           "paste the one line of your .pub file, e.g. ~/.ssh/id_ed25519.pub") from None
    algorithm = key.get_algorithm()
    if algorithm in REFUSED_TYPES:
        raise InvalidInput(f"{algorithm} keys are too weak", "make an Ed25519 key: ssh-keygen -t ed25519")
    if algorithm == "ssh-rsa":
        bits = key.pyca_key.key_size
        if bits < MIN_RSA_BITS:
            raise InvalidInput(f"an RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS})",
                               "make an Ed25519 key: ssh-keygen -t ed25519")
    comment = (key.get_comment() or "")[:100]
    if comment:
        key.set_comment(comment)
    line = key.export_public_key("openssh").decode().strip()
    return ParsedKey(algorithm, key.get_fingerprint("sha256"), line, comment)


def _view(row: SftpKeyRow) -> SftpKey:
    parts = row.public_key.split(None, 2)
    return SftpKey(row.id, row.instance, row.fingerprint, row.key_type, parts[2] if len(parts) > 2 else "",
                   row.added_by, row.added_at)


class SftpKeys:
    def __init__(self, sessions: sessionmaker[Session], actor: str) -> None:
        self.sessions = sessions
        self.actor = actor

    def add(self, instance: str, text: str, actor: str | None = None) -> SftpKey:
        parsed = parse_public_key(text)
        actor = actor or self.actor
        try:
            with self.sessions.begin() as s:
                instance_row(s, instance)
                count = len(s.scalars(select(SftpKeyRow.id).where(SftpKeyRow.instance == instance)).all())
                if count >= MAX_KEYS:
                    raise Conflict(f"{instance} already has {MAX_KEYS} SFTP keys", "remove one first")
                row = SftpKeyRow(instance=instance, fingerprint=parsed.fingerprint, key_type=parsed.key_type,
                                 public_key=parsed.text, added_by=actor)
                s.add(row)
                s.flush()
                record(s, actor, "sftp.key.add", instance, Outcome.OK, parsed.fingerprint)
                return _view(row)
        except IntegrityError:
            raise Conflict(f"that key ({parsed.fingerprint}) is already registered for {instance}",
                           "see the list of its keys") from None

    def list(self, instance: str) -> list[SftpKey]:
        with self.sessions() as s:
            instance_row(s, instance)
            rows = s.scalars(select(SftpKeyRow).where(SftpKeyRow.instance == instance).order_by(SftpKeyRow.id))
            return [_view(r) for r in rows]

    def remove(self, instance: str, key: str, actor: str | None = None) -> SftpKey:
        """Remove a key by its id or its fingerprint (with or without the SHA256: prefix)."""
        key = key.strip()
        with self.sessions.begin() as s:
            instance_row(s, instance)
            rows = s.scalars(select(SftpKeyRow).where(SftpKeyRow.instance == instance)).all()
            for row in rows:
                if key in (str(row.id), row.fingerprint, row.fingerprint.removeprefix("SHA256:")):
                    view = _view(row)
                    s.delete(row)
                    record(s, actor or self.actor, "sftp.key.remove", instance, Outcome.OK, row.fingerprint)
                    return view
        raise NotFound(f"{instance} has no SFTP key {key!r}", "list its keys to see their ids and fingerprints")

    def authorized(self, instance: str) -> list[str]:
        """The keys that may sign in as `instance` now (none for an unknown name)."""
        with self.sessions() as s:
            return list(s.scalars(select(SftpKeyRow.public_key).where(SftpKeyRow.instance == instance)))
