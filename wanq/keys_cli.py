"""`wanq keys ...`: create, list and revoke API keys, straight in Redis (an operator's commands, no API needed).

`wanq keys create` prints the new key once, on stdout alone (pipe it into a secret store); every
other line goes to stderr. Keys are stored hashed: a lost key cannot be shown again, only revoked.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from wanq.config import load_settings


def add_commands(sub: Any) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys (talks to Redis)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    c = keys.add_parser("create", help="create a key for a tenant; prints it once")
    c.add_argument("--tenant", required=True)
    c.add_argument("--admin", action="store_true", help="may see and cancel every tenant's jobs and use /v1/admin")
    c.add_argument("--name", default="", help="a note to recognise the key by")
    c.set_defaults(func=cmd_keys_create)
    c = keys.add_parser("list", help="list keys: id, prefix, tenant, admin, revoked (never the keys)")
    c.add_argument("--tenant")
    c.set_defaults(func=cmd_keys_list)
    c = keys.add_parser("revoke", help="revoke a key by id (key_...) or prefix (wq_...)")
    c.add_argument("ref")
    c.set_defaults(func=cmd_keys_revoke)


def _keystore() -> Any:
    import redis

    from shared.apikeys import KeyStore

    settings = load_settings()
    client = redis.Redis.from_url(settings.redis.url, socket_connect_timeout=5, socket_timeout=10)
    return KeyStore(client, settings.auth, prefix=settings.redis.key_prefix)


def cmd_keys_create(args: argparse.Namespace) -> None:
    from shared.errors import WanqError

    try:
        key, record = _keystore().create(args.tenant, admin=args.admin, name=args.name)
    except WanqError as exc:
        raise SystemExit(f"wanq keys: {exc.message}") from None
    role = "admin key" if record.admin else "key"
    print(f"created {role} {record.id} for tenant {record.tenant!r}; it is shown only this once:", file=sys.stderr)
    print(key)


def cmd_keys_list(args: argparse.Namespace) -> None:
    records = [r for r in _keystore().records() if args.tenant in (None, r.tenant)]
    print(f"{'id':<17} {'prefix':<9} {'tenant':<20} {'admin':<5} {'source':<8} {'created':<20} revoked")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at)) if r.created_at else "-"
        print(
            f"{r.id:<17} {r.prefix or '-':<9} {r.tenant:<20} {'yes' if r.admin else 'no':<5} {r.source:<8} {created:<20} "
            f"{'yes' if r.revoked else 'no'}"
        )


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    from shared.errors import WanqError

    try:
        record = _keystore().revoke(args.ref)
    except WanqError as exc:
        raise SystemExit(f"wanq keys: {exc.message}") from None
    print(f"revoked {record.id} ({record.prefix or 'seeded key'}) of tenant {record.tenant!r}", file=sys.stderr)
