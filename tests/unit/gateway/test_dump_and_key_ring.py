"""Pure parts of backups and key rotation: the password never reaches a tool's command line; the
key ring reads a configured retired-keys directory (a mounted secret), prefers a private half
over a public copy of the same key, and ignores a copy of the current key; a cursor codec opens
what a retired key sealed and seals with the current one."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from consent.receipts import key_id
from gateway import keys
from gateway.errors import BadRequestError
from gateway.settings import Settings
from gateway.storage import dump, readings_query


@pytest.mark.parametrize(
    ("dsn", "clean", "env"),
    [
        (
            "postgresql://meterpoort:s3cr%21t@db.internal:5433/meterpoort?sslmode=require",
            "postgresql://meterpoort@db.internal:5433/meterpoort?sslmode=require",
            {"PGPASSWORD": "s3cr!t"},
        ),
        (
            "postgresql://postgres:@/postgres?host=/var/lib/meterpoort/pg",
            "postgresql://postgres@/postgres?host=/var/lib/meterpoort/pg",
            {"PGPASSWORD": ""},
        ),
        ("postgresql://u@[::1]/db", "postgresql://u@[::1]/db", {}),
        ("postgresql://u:pw@[::1]:5432/db", "postgresql://u@[::1]:5432/db", {"PGPASSWORD": "pw"}),
    ],
)
def test_the_password_travels_in_the_environment(dsn: str, clean: str, env: dict[str, str]) -> None:
    assert dump._without_password(dsn) == (clean, env)


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def test_a_configured_retired_keys_directory(tmp_path: Path) -> None:
    current_file = tmp_path / "secrets" / "signing-key.pem"
    current = keys.load_or_create_ed25519(current_file)
    retired_dir = tmp_path / "secrets" / "retired"
    old = keys.load_or_create_ed25519(retired_dir / "a-private.pem")
    (retired_dir / "b-public-copy.pem").write_bytes(_public_pem(old))
    older = Ed25519PrivateKey.generate()
    (retired_dir / "c-public.pem").write_bytes(_public_pem(older))
    (retired_dir / "d-current-copy.pem").write_bytes(_public_pem(current))
    (retired_dir / "notes.txt").write_text("not a key, not a *.pem")
    settings = Settings(
        data_dir=tmp_path / "nowhere",
        signing_key_file=current_file,
        retired_signing_keys_dir=retired_dir,
    )
    ring = keys.key_ring(settings)
    assert [(k.path.name, k.private_key is not None) for k in ring.retired] == [
        ("a-private.pem", True),
        ("c-public.pem", False),
    ]
    served = ring.jwks()["keys"]
    assert [k["kid"] for k in served] == [
        ring.signing_kid,
        key_id(old.public_key()),
        key_id(older.public_key()),
    ]
    assert [k.get("retired", False) for k in served] == [False, True, True]
    assert ring.retired_secret_material() == [keys._raw_private(old)]
    assert ring.webhook_signing_keys == (ring.signing_key,)
    assert not (tmp_path / "nowhere").exists()  # nothing generated in the data directory


def test_cursors_sealed_by_a_retired_key_open_and_new_ones_use_the_current_key() -> None:
    old, new, other = (readings_query.cursor_key(bytes([n]) * 32) for n in (1, 2, 3))
    before = readings_query.CursorCodec(old)
    after = readings_query.CursorCodec(new, [old])
    sealed = before.encode("fp", 871600000000000001, "2026-12-01T00:00:00+00:00")
    assert after.decode(sealed, "fp")[0] == 871600000000000001
    resealed = after.encode("fp", 871600000000000001, "2026-12-01T00:00:00+00:00")
    assert resealed != sealed
    with pytest.raises(BadRequestError):
        before.decode(resealed, "fp")  # sealed with the new key, which the old codec lacks
    with pytest.raises(BadRequestError):
        readings_query.CursorCodec(new, [other]).decode(sealed, "fp")
