"""Walrus's errors carry S3's error codes, as the EC2 core's carry EC2's.

The storage engine must not import the S3 face, yet S3 clients match on S3's codes (``NoSuchKey``,
``BucketNotEmpty``, ...). So the engine raises :class:`WalrusError` with the code and HTTP status S3
documents, and the face only wraps it in S3's XML envelope.
"""

from __future__ import annotations

from cloudlab.errors import CloudError

#: HTTP status of every code the engine raises (from the S3 API reference's error table).
STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IllegalLocationConstraintException": 400,
    "IllegalVersioningConfigurationException": 400,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "BadDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidTag": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "NoSuchBucket": 404,
    "NoSuchCORSConfiguration": 404,
    "NoSuchKey": 404,
    "NoSuchTagSet": 404,
    "NoSuchUpload": 404,
    "NoSuchVersion": 404,
    "NotModified": 304,
    "PreconditionFailed": 412,
    "QuotaExceeded": 403,  # Ceph RGW's code: S3 itself has no per-user quotas
    "TooManyBuckets": 400,
    "XAmzContentChecksumMismatch": 400,
    "XAmzContentSHA256Mismatch": 400,
    "MalformedACLError": 400,
    "InvalidObjectState": 403,
    "NoSuchLifecycleConfiguration": 404,
    "AccessForbidden": 403,
    "BadRequest": 400,
    "NotImplemented": 501,
    "IncompleteBody": 400,
    "InvalidAccessKeyId": 403,
    "SignatureDoesNotMatch": 403,
    "RequestTimeTooSkewed": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "InvalidPolicyDocument": 400,
    "MalformedPOSTRequest": 400,
    "MaxPostPreDataLengthExceededError": 400,
    "InternalError": 500,
}


class WalrusError(CloudError):
    """An S3 error: ``code`` as S3 spells it, ``status`` as S3 answers it, and what it is about."""

    def __init__(self, code: str, message: str, *, resource: str | None = None, **extra: str) -> None:
        super().__init__(code, message, STATUS.get(code, 400))
        self.resource = resource
        self.extra = extra


def no_such_bucket(bucket: str) -> WalrusError:
    return WalrusError("NoSuchBucket", "The specified bucket does not exist", resource=bucket, BucketName=bucket)


def no_such_key(bucket: str, key: str) -> WalrusError:
    return WalrusError("NoSuchKey", "The specified key does not exist.", resource=f"{bucket}/{key}", Key=key)


def access_denied(resource: str | None = None) -> WalrusError:
    return WalrusError("AccessDenied", "Access Denied", resource=resource)
