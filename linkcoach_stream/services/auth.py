"""Access tokens (JWT, HMAC) and rotating refresh tokens.

Security choices, on purpose:
- The accepted algorithm list is pinned to the one configured algorithm, so a token
  signed with `none` or any other algorithm is refused before its signature is read.
- `exp`, `iss`, `aud` and `sub` are required and checked on every request.
- API keys are compared with `hmac.compare_digest` against every configured key (no
  early exit), so timing tells nothing about which key or how much of it matched.
- Refresh tokens are random, stored only as SHA-256 hashes, single-use; presenting a
  used one revokes its whole family (the token was stolen or replayed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import OctKey

from ..config import DEV_API_KEY, Settings
from ..db.repositories import refresh_tokens, users
from ..errors import Unauthorized


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    email: str | None
    leadership_type: str | None
    jti: str
    expires_at: int


def unknown_user() -> Unauthorized:
    """A valid token whose user was deleted (or never existed)."""
    return Unauthorized("the token's user does not exist", code="unknown_user")


async def confirm_user(conn: asyncpg.Connection, user: Principal) -> None:
    """Raise `unknown_user` unless the token's user exists and is not deleted."""
    if not await users.is_active(conn, user_id=user.user_id):
        raise unknown_user()


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int

    def body(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_in": self.refresh_expires_in,
        }


def _hash_refresh(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._key = OctKey.import_key(settings.jwt_secret_key)
        self._algorithms = [settings.jwt_algorithm]
        self._claims = jwt.JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": settings.jwt_issuer},
            aud={"essential": True, "value": settings.jwt_audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        # Settings.validate() refuses to start without keys wherever the dev key is not
        # allowed; this check keeps the dev key out even for unvalidated settings.
        keys = settings.api_keys or ((DEV_API_KEY,) if settings.dev_defaults_allowed else ())
        self._api_keys = tuple(k.encode() for k in keys)

    def check_api_key(self, presented: str | None) -> None:
        if not presented:
            raise Unauthorized("an API key is required (X-API-Key header)", code="missing_api_key")
        candidate = presented.encode()
        matched = False
        for key in self._api_keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthorized("the API key is not valid", code="invalid_api_key")

    def mint_access(
        self,
        *,
        user_id: str,
        email: str | None = None,
        leadership_type: str | None = None,
        ttl_s: int | None = None,
        now: int | None = None,
    ) -> tuple[str, int]:
        issued = int(time.time()) if now is None else now
        ttl = self.settings.access_token_ttl_s if ttl_s is None else ttl_s
        claims: dict[str, object] = {
            "sub": user_id,
            "iat": issued,
            "exp": issued + ttl,
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "jti": uuid.uuid4().hex,
        }
        if email:
            claims["email"] = email
        if leadership_type:
            claims["leadership_type"] = leadership_type
        header = {"alg": self.settings.jwt_algorithm, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=self._algorithms), ttl

    def verify_access(self, token: str) -> Principal:
        try:
            decoded = jwt.decode(token, self._key, algorithms=self._algorithms)
        except jose_errors.BadSignatureError as exc:
            raise Unauthorized("token signature is invalid", code="invalid_token") from exc
        except jose_errors.UnsupportedAlgorithmError as exc:
            raise Unauthorized("token algorithm is not accepted", code="invalid_token") from exc
        except (jose_errors.JoseError, ValueError, TypeError, UnicodeError) as exc:
            raise Unauthorized("token is malformed", code="invalid_token") from exc
        claims = decoded.claims
        try:
            self._claims.validate(claims)
        except jose_errors.ExpiredTokenError as exc:
            raise Unauthorized("token has expired", code="token_expired") from exc
        except jose_errors.JoseError as exc:
            raise Unauthorized(
                f"token claims are not valid: {getattr(exc, 'description', '') or exc}",
                code="invalid_token",
            ) from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("token has no subject", code="invalid_token")
        lt = claims.get("leadership_type")
        email = claims.get("email")
        return Principal(
            user_id=sub,
            email=email if isinstance(email, str) else None,
            leadership_type=lt if isinstance(lt, str) else None,
            jti=str(claims.get("jti", "")),
            expires_at=int(claims.get("exp", 0)),
        )

    async def issue_pair(
        self,
        conn: asyncpg.Connection,
        *,
        user_id: str,
        email: str | None,
        leadership_type: str | None,
        family_id: uuid.UUID | None = None,
    ) -> TokenPair:
        access, ttl = self.mint_access(
            user_id=user_id, email=email, leadership_type=leadership_type
        )
        refresh = secrets.token_urlsafe(32)
        await refresh_tokens.insert(
            conn,
            user_id=user_id,
            family_id=family_id or uuid.uuid4(),
            token_hash=_hash_refresh(refresh),
            expires_at=datetime.now(UTC) + timedelta(seconds=self.settings.refresh_token_ttl_s),
        )
        return TokenPair(access, ttl, refresh, self.settings.refresh_token_ttl_s)

    async def mint_for_user(
        self,
        conn: asyncpg.Connection,
        *,
        user_id: str,
        email: str | None,
        leadership_type: str | None,
    ) -> TokenPair:
        async with conn.transaction():
            await users.upsert_user(
                conn, user_id=user_id, email=email, leadership_type=leadership_type
            )
            return await self.issue_pair(
                conn, user_id=user_id, email=email, leadership_type=leadership_type
            )

    async def rotate(self, conn: asyncpg.Connection, *, refresh_token: str) -> TokenPair:
        reused = False
        async with conn.transaction():
            row = await refresh_tokens.get_for_update(conn, token_hash=_hash_refresh(refresh_token))
            if row is None:
                raise Unauthorized("refresh token is not valid", code="invalid_refresh_token")
            if row["revoked_at"] is not None:
                raise Unauthorized("refresh token was revoked", code="invalid_refresh_token")
            if row["used_at"] is not None:
                await refresh_tokens.revoke_family(conn, family_id=row["family_id"])
                reused = True
            elif row["expires_at"] <= datetime.now(UTC):
                raise Unauthorized("refresh token has expired", code="invalid_refresh_token")
            elif row["deleted_at"] is not None:
                raise Unauthorized("user no longer exists", code="invalid_refresh_token")
            else:
                await refresh_tokens.mark_used(conn, token_id=row["id"])
                return await self.issue_pair(
                    conn,
                    user_id=row["user_id"],
                    email=row["email"],
                    leadership_type=row["leadership_type"],
                    family_id=row["family_id"],
                )
        # Raised outside the transaction so the family revocation is committed.
        assert reused
        raise Unauthorized(
            "refresh token was already used; every token of its family is revoked",
            code="refresh_token_reused",
        )
