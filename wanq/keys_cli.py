"""`wanq keys ...`: create, list and revoke API keys, straight in Redis (an operator's commands, no API needed).

`wanq keys create` prints the new key once, on stdout alone (pipe it into a secret store); every
other line goes to stderr. Keys are stored hashed: a lost key cannot be shown again, only revoked.

The Redis is WANQ_REDIS_URL's; without it, that of the `wanq dev` running in this directory (.wanq/dev.json),
else the default. The first line on stderr says which.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared import redisconn
from shared.apikeys import KeyStore
from shared.errors import WanqError
from wanq.config import DEV_STACK_FILE, DevStack, UsageError, load_settings, reaching_redis, shown_redis_url


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


@contextmanager
def _keystore() -> Iterator[KeyStore]:
    """The key store on the Redis these commands use; Redis and key errors end the command in one line."""
    settings = load_settings()
    dev = None if "url" in settings.redis.model_fields_set else DevStack.read()
    if "url" in settings.redis.model_fields_set:
        source = "WANQ_REDIS_URL"
    elif dev is not None:
        settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": dev.redis_url})})
        source = f"from {DEV_STACK_FILE}: the `wanq dev` running here"
    else:
        source = "the default; WANQ_REDIS_URL is not set"
    print(f"wanq keys: using Redis at {shown_redis_url(settings.redis.url)} ({source})", file=sys.stderr)
    try:
        with reaching_redis("keys", settings.redis.url):
            yield KeyStore(redisconn.connect(settings.redis), settings.auth, prefix=settings.redis.key_prefix)
    except WanqError as exc:
        raise UsageError(f"wanq keys: {exc.message}") from None


def cmd_keys_create(args: argparse.Namespace) -> None:
    with _keystore() as keys:
        key, record = keys.create(args.tenant, admin=args.admin, name=args.name)
    role = "admin key" if record.admin else "key"
    print(f"created {role} {record.id} for tenant {record.tenant!r}; it is shown only this once:", file=sys.stderr)
    print(key)


def cmd_keys_list(args: argparse.Namespace) -> None:
    with _keystore() as keys:
        records = [r for r in keys.records() if args.tenant in (None, r.tenant)]
    print(f"{'id':<17} {'prefix':<9} {'tenant':<20} {'admin':<5} {'source':<8} {'created':<20} revoked")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at)) if r.created_at else "-"
        print(
            f"{r.id:<17} {r.prefix or '-':<9} {r.tenant:<20} {'yes' if r.admin else 'no':<5} {r.source:<8} {created:<20} "
            f"{'yes' if r.revoked else 'no'}"
        )


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    with _keystore() as keys:
        record = keys.revoke(args.ref)
    print(f"revoked {record.id} ({record.prefix or 'seeded key'}) of tenant {record.tenant!r}", file=sys.stderr)
