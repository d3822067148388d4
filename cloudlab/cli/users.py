"""Users, their access keys and quotas (``user ...``) and their credential bundles (``creds``).

Everything here reads and changes the state folder through :mod:`cloudlab.clc.offline`, so it works whether
the cloud runs or not (a running cloud sees every change at once).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cloudlab import servicectl
from cloudlab.clc.quotas import RESOURCES, quota_columns
from cloudlab.cli.common import CliError, print_table, state_admin, state_layout, when, writing
from cloudlab.cli.registry import arg, command, group

NAME = arg("name", help="the user")
JSON = arg("--json", action="store_true", help="machine-readable output")

group(
    "user",
    help="add, list, disable and enable users and manage their access keys (cloud up or down)",
    description="Users and their EC2 access keys, read and changed in the cloud's state folder: works whether "
    "the cloud runs or not (a running cloud sees every change at once).",
)


@command(
    "user add",
    help="add a user (certificate, account id, first access key)",
    args=[
        arg("name", help="1-64 letters, digits, '.', '_' or '-'"),
        arg("--admin", action="store_true", help="an administrator: sees and manages every user's resources"),
    ],
)
def user_add(args: argparse.Namespace) -> int:
    with state_admin(state_layout(args)) as admin:
        user, key = admin.add_user(args.name, admin=args.admin)
    kind = "admin user" if user.is_admin else "user"
    print(f"{kind} {user.name} added: account {user.user_id}, access key {key.access_key}")
    print(
        f"its secret is in the bundle 'cloudlab creds {user.name}' writes (or make another: cloudlab user keys create)"
    )
    return 0


@command("user list", help="list users: account id, admin, enabled, active keys", args=[JSON])
def user_list(args: argparse.Namespace) -> int:
    with state_admin(state_layout(args)) as admin:
        counts = admin.users.active_key_counts()
        rows = [
            {
                "name": u.name,
                "account_id": u.user_id,
                "admin": u.is_admin,
                "enabled": u.enabled,
                "active_keys": counts.get(u.name, 0),
                **quota_columns(admin.quotas.usage(u.name), admin.quotas.of(u.name), as_text=not args.json),
            }
            for u in admin.users.list()
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, "no users (the admin user is created by the first 'cloudlab up')")
    return 0


@command(
    "user quota",
    help="show or set a user's quotas (-1: the default)",
    args=[
        NAME,
        *(
            arg(f"--{resource}", type=int, metavar="N", help=f"at most N {RESOURCES[resource].noun} at once")
            for resource in RESOURCES
        ),
    ],
)
def user_quota(args: argparse.Namespace) -> int:
    """Set a user's quotas (``-1``: back to the default) and print them with what the user holds."""
    wanted = {r: getattr(args, r) for r in RESOURCES if getattr(args, r) is not None}
    with state_admin(state_layout(args)) as admin:
        admin.users.require(args.name)
        changes = {r: None if v < 0 else v for r, v in wanted.items()}
        limits = admin.quotas.set(args.name, changes) if changes else admin.quotas.of(args.name)
        usage = admin.quotas.usage(args.name)
    print(f"user {args.name}: " + ", ".join(f"{r} {t}" for r, t in quota_columns(usage, limits).items()))
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    with state_admin(state_layout(args)) as admin:
        before = admin.users.require(args.name)
        admin.users.set_enabled(args.name, enabled)
    word = "enabled" if enabled else "disabled"
    if before.enabled == enabled:
        print(f"user {args.name} was already {word}")
    elif enabled:
        print(f"user {args.name} enabled: its active keys work again")
    else:
        print(f"user {args.name} disabled: every request signed with its keys now fails with AuthFailure")
    return 0


@command("user disable", help="disable a user: its keys fail with AuthFailure", args=[NAME])
def user_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


@command("user enable", help="enable a disabled user again", args=[NAME])
def user_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


group("user keys", help="a user's access keys: create, list, delete")


@command("user keys create", help="create an access key and print its secret (once)", args=[NAME, JSON])
def user_keys_create(args: argparse.Namespace) -> int:
    with state_admin(state_layout(args)) as admin:
        key = admin.users.create_key(args.name)
    if args.json:
        print(json.dumps({"user": key.user_name, "access_key": key.access_key, "secret_key": key.secret_key}))
        return 0
    print(f"access key id:     {key.access_key}")
    print(f"secret access key: {key.secret_key}")
    print("keep the secret: this command shows it once")
    return 0


@command("user keys list", help="list a user's access keys, revoked ones included", args=[NAME, JSON])
def user_keys_list(args: argparse.Namespace) -> int:
    with state_admin(state_layout(args)) as admin:
        records = admin.users.key_records(args.name)
    rows = [{"access_key": k.access_key, "active": k.active, "created": when(k.created)} for k in records]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, f"user {args.name} has no access keys: cloudlab user keys create {args.name}")
    return 0


@command(
    "user keys delete",
    help="revoke an access key (it then fails with AuthFailure)",
    args=[NAME, arg("access_key", metavar="ACCESS_KEY_ID", help="the key to revoke (AKIA...)")],
)
def user_keys_delete(args: argparse.Namespace) -> int:
    with state_admin(state_layout(args)) as admin:
        revoked = admin.revoke_key(args.name, args.access_key)
    if not revoked:
        print(f"access key {args.access_key} of user {args.name} was already revoked")
        return 0
    print(f"access key {args.access_key} of user {args.name} revoked: requests signed with it fail with AuthFailure")
    return 0


@command(
    "creds",
    help="write a user's credential bundle: certificate, key, AWS CLI/boto3 profile, eucarc",
    description="Write NAME.crt/NAME.key (the user's certificate from the cloud CA), cloud-ca.crt, an AWS "
    "config + credentials pair with the profile cloudlab-NAME, and a eucarc. Needs the cloud running (the "
    "files name its endpoint URL).",
    args=[NAME, arg("--out", metavar="DIR", help="folder to write to (default <state>/credentials/NAME/)")],
)
def creds(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from cloudlab.credentials import usage_lines, write_bundle

    layout = state_layout(args)
    with state_admin(layout) as admin:
        user = admin.users.require(args.name)
        info = servicectl.endpoint(layout)
        if info is None:
            raise CliError(
                f"the cloud is not running (state {layout.root}), so its endpoint URL is not known: "
                "start it with 'cloudlab up' and run this again"
            )
        assert admin.ca is not None  # state_admin(need_ca=True)
        key = admin.active_key(user.name)
        identity = admin.ca.identity(user.name, "user")
        key_pem = identity.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        folder = Path(args.out) if args.out else layout.credentials / user.name
        bundle = writing(
            "the credential bundle",
            folder,
            lambda: write_bundle(
                folder,
                user.name,
                endpoint_url=info["url"],
                s3_url=info.get("s3_url"),
                region=info["region"],
                access_key=key.access_key,
                secret_key=key.secret_key,
                certificate_pem=identity.certificate_pem,
                private_key_pem=key_pem,
                ca_pem=admin.ca.ca_pem,
            ),
        )
    files = ", ".join(p.name for p in (bundle.certificate, bundle.private_key, bundle.ca_certificate))
    print(
        f"wrote the credentials of {user.name} (access key {key.access_key}) to {bundle.folder}: {files}, "
        "config, credentials, eucarc"
    )
    for line in usage_lines(bundle):
        print(f"  {line}")
    if not user.enabled:
        print(f"note: user {user.name} is disabled; enable it with: cloudlab user enable {user.name}", file=sys.stderr)
    return 0
