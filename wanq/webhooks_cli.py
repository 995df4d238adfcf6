"""`wanq webhooks ...`: manage the tenant's default endpoint and signing secret, and read a job's deliveries.

Client commands: they talk to the API like the others (--url / --api-key, or WANQ_URL / WANQ_API_KEY).
The delivery process itself is `wanq webhook-delivery` (api/daemons/webhooks.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.webhooks import EVENTS
from wanq.client_cli import call

SUBCOMMANDS = ("show", "set-endpoint", "delete-endpoint", "rotate-secret", "deliveries")


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("webhooks", help="the tenant's webhook endpoint and signing secret; a job's deliveries")
    sub = parser.add_subparsers(dest="webhooks_command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    def pick_one(args: argparse.Namespace) -> None:
        # Not argparse's `required=True`: its message could not say where the delivery process went.
        parser.error(f"pick a subcommand: {', '.join(SUBCOMMANDS)} (the delivery process is `wanq webhook-delivery`)")

    parser.set_defaults(func=pick_one)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help="server URL (WANQ_URL, default http://127.0.0.1:8000)")
        p.add_argument("--api-key", default=None, help="API key (WANQ_API_KEY)")
        p.add_argument("--tenant", default=None, help="admins: act for this tenant")

    p = sub.add_parser("show", help="the tenant's endpoint and secret status")
    common(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("set-endpoint", help="set the default endpoint; prints the signing secret if it was just created")
    p.add_argument("endpoint_url")
    p.add_argument("--event", dest="events", action="append", choices=EVENTS, help="repeat to filter events (default: lifecycle)")
    common(p)
    p.set_defaults(func=cmd_set_endpoint)

    p = sub.add_parser("delete-endpoint", help="remove the default endpoint (the secret stays)")
    common(p)
    p.set_defaults(func=cmd_delete_endpoint)

    p = sub.add_parser("rotate-secret", help="create or rotate the signing secret; prints it once")
    p.add_argument("--previous-valid-s", type=int, default=None, help="how long the old secret keeps signing")
    common(p)
    p.set_defaults(func=cmd_rotate_secret)

    p = sub.add_parser("deliveries", help="a job's webhook deliveries and their attempts")
    p.add_argument("id")
    common(p)
    p.set_defaults(func=cmd_deliveries)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _secret_note(out: dict[str, Any]) -> None:
    if "secret" in out:
        print("wanq: the signing secret is shown this once; store it where your receiver can read it", file=sys.stderr)


def cmd_show(args: argparse.Namespace) -> None:
    _print(call(args, lambda c: c.webhook_endpoint(tenant=args.tenant)))


def cmd_set_endpoint(args: argparse.Namespace) -> None:
    out = call(args, lambda c: c.set_webhook_endpoint(args.endpoint_url, events=args.events, tenant=args.tenant))
    _print(out)
    _secret_note(out)


def cmd_delete_endpoint(args: argparse.Namespace) -> None:
    _print(call(args, lambda c: c.delete_webhook_endpoint(tenant=args.tenant)))


def cmd_rotate_secret(args: argparse.Namespace) -> None:
    out = call(args, lambda c: c.rotate_webhook_secret(previous_valid_s=args.previous_valid_s, tenant=args.tenant))
    _print(out)
    _secret_note(out)


def cmd_deliveries(args: argparse.Namespace) -> None:
    for d in call(args, lambda c: c.webhook_deliveries(args.id))["data"]:
        last = d["attempts"][-1] if d["attempts"] else {}
        outcome = last.get("status_code") or last.get("error") or "-"
        print(f"{d['id']}  {d['event']:<16} {d['status']:<9} attempts={len(d['attempts'])}  last={outcome}  {d['url']}")
