"""Issue 10 item 7 on the EC2 endpoint: a presigned request must say when it expires, and a signature's
credential scope must name this cloud's region and the ``ec2`` service (S3's side: tests/test_s3_auth.py).

Each request is signed by botocore's own signer against a real cloud (``sim_cloud``), so what is refused
is exactly what an unmodified client would send.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.clouds import RunningCloud


class _QueryAuthWithoutExpires(SigV4QueryAuth):
    """botocore's presigner, minus X-Amz-Expires (removed before the signature is computed)."""

    def _modify_request_before_signing(self, request: AWSRequest) -> None:
        super()._modify_request_before_signing(request)
        request.url = re.sub(r"&?X-Amz-Expires=[0-9]+", "", request.url)


def _credentials(cloud: RunningCloud) -> Credentials:
    creds = cloud.credentials()
    return Credentials(creds["access_key"], creds["secret_key"])


def _send(request: AWSRequest) -> tuple[int, str]:
    prepared = request.prepare()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(prepared.url, data=prepared.body or None, headers=dict(prepared.headers),
                                   method=prepared.method), timeout=10,
        ) as answer:  # fmt: skip
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _code(body: str) -> str:
    found = re.search(r"<Code>([^<]+)</Code>", body)
    return found.group(1) if found else ""


def _describe_regions(cloud: RunningCloud, auth: Any) -> tuple[int, str]:
    request = AWSRequest(method="GET", url=f"{cloud.url}?Action=DescribeRegions&Version=2016-11-15")
    auth.add_auth(request)
    return _send(request)


def test_presigned_request_without_expiry_is_refused(sim_cloud: RunningCloud) -> None:
    credentials, region = _credentials(sim_cloud), sim_cloud.info["region"]
    status, body = _describe_regions(sim_cloud, SigV4QueryAuth(credentials, "ec2", region, expires=60))
    assert (status, _code(body)) == (200, ""), body  # the same request with X-Amz-Expires is served
    status, body = _describe_regions(sim_cloud, _QueryAuthWithoutExpires(credentials, "ec2", region))
    assert status in (400, 401, 403)
    assert _code(body) in ("AuthFailure", "IncompleteSignature")
    assert "X-Amz-Expires" in body


def test_presigned_expiry_beyond_a_week_is_refused(sim_cloud: RunningCloud) -> None:
    auth = SigV4QueryAuth(_credentials(sim_cloud), "ec2", sim_cloud.info["region"], expires=604801)
    status, body = _describe_regions(sim_cloud, auth)
    assert status == 400 and _code(body) == "IncompleteSignature"


@pytest.mark.parametrize("presigned", [False, True])
def test_scope_must_name_the_clouds_region(sim_cloud: RunningCloud, presigned: bool) -> None:
    credentials = _credentials(sim_cloud)
    auth = (
        SigV4QueryAuth(credentials, "ec2", "us-east-1", 60) if presigned else SigV4Auth(credentials, "ec2", "us-east-1")
    )
    status, body = _describe_regions(sim_cloud, auth)
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch"), body
    assert "region" in body


@pytest.mark.parametrize("service", ["s3", "iam"])
def test_scope_must_name_ec2(sim_cloud: RunningCloud, service: str) -> None:
    status, body = _describe_regions(sim_cloud, SigV4Auth(_credentials(sim_cloud), service, sim_cloud.info["region"]))
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch"), body


def test_boto3_in_another_region_is_refused(sim_cloud: RunningCloud) -> None:
    assert sim_cloud.ec2().describe_regions()["Regions"]
    with pytest.raises(ClientError) as excinfo:
        sim_cloud.ec2(region_name="eu-west-1").describe_regions()
    assert excinfo.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
