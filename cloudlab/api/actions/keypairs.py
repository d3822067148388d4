"""Key pair actions: CreateKeyPair, ImportKeyPair, DeleteKeyPair, DescribeKeyPairs."""

from __future__ import annotations

from typing import Any

from cloudlab.api import enrich, filters
from cloudlab.api.actions import Context, action
from cloudlab.clc.keypairs import KeyPair, KeyPairs

KEY_PAIR_FILTERS: dict[str, filters.Getter] = {
    "key-name": lambda k: k["KeyName"],
    "key-pair-id": lambda k: k["KeyPairId"],
    "fingerprint": lambda k: k["KeyFingerprint"],
    "key-type": lambda k: k["KeyType"],
}


def _key_pair(record: KeyPair, include_public_key: bool) -> dict[str, Any]:
    item = {
        "KeyPairId": record.key_pair_id,
        "KeyName": record.name,
        "KeyFingerprint": record.fingerprint,
        "KeyType": record.key_type,
        "CreateTime": record.created,
    }
    if include_public_key:
        item["PublicKey"] = record.public_key
    return item


@action("CreateKeyPair")
def create_key_pair(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    record, material = ctx.clc.service(KeyPairs).create(
        ctx.user,
        req["KeyName"],
        key_type=req.get("KeyType"),
        key_format=req.get("KeyFormat"),
        tag_specifications=req.get("TagSpecifications"),
    )
    return {
        "KeyPairId": record.key_pair_id,
        "KeyName": record.name,
        "KeyFingerprint": record.fingerprint,
        "KeyMaterial": material,
    }


@action("ImportKeyPair")
def import_key_pair(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    record = ctx.clc.service(KeyPairs).import_(
        ctx.user, req["KeyName"], req["PublicKeyMaterial"], tag_specifications=req.get("TagSpecifications")
    )
    return {"KeyPairId": record.key_pair_id, "KeyName": record.name, "KeyFingerprint": record.fingerprint}


@action("DeleteKeyPair")
def delete_key_pair(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    deleted = ctx.clc.service(KeyPairs).delete(ctx.user, name=req.get("KeyName"), key_pair_id=req.get("KeyPairId"))
    return {"Return": True, "KeyPairId": deleted}


@action("DescribeKeyPairs")
def describe_key_pairs(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    records = ctx.clc.service(KeyPairs).describe(ctx.user, names=req.get("KeyNames"), ids=req.get("KeyPairIds"))
    items = [_key_pair(r, bool(req.get("IncludePublicKey"))) for r in records]
    tags = enrich.tags_of(ctx, [i["KeyPairId"] for i in items])
    for item in items:
        item["Tags"] = tags.get(item["KeyPairId"]) or None
    return {"KeyPairs": filters.apply_filters(items, req.get("Filters"), KEY_PAIR_FILTERS, "DescribeKeyPairs")}
