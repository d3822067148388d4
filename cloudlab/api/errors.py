"""EC2 API errors: one exception type carrying EC2's error code, message and HTTP status.

Everything the protocol layer (and the action handlers behind it) wants to tell a client goes
through :class:`ApiError`; the HTTP front end turns it into EC2's XML error envelope
(:func:`cloudlab.api.protocol.serialize_error`). Any other exception reaching the front end is a bug
and becomes ``InternalError`` (500).

Status codes matter more than they look: botocore retries 500/502/503/504 (and throttling codes)
and raises ``ClientError`` at once for everything else. So client mistakes must be 4xx, or boto3
would retry them with back-off before failing. The statuses below follow what EC2 itself returns.
"""

from __future__ import annotations

# -- error codes (the strings EC2 uses; boto3 users match on them) --------------------------------

INVALID_ACTION = "InvalidAction"
MISSING_PARAMETER = "MissingParameter"
INVALID_PARAMETER_VALUE = "InvalidParameterValue"
INVALID_PARAMETER_COMBINATION = "InvalidParameterCombination"
MALFORMED_QUERY_STRING = "MalformedQueryString"
AUTH_FAILURE = "AuthFailure"
SIGNATURE_DOES_NOT_MATCH = "SignatureDoesNotMatch"
INCOMPLETE_SIGNATURE = "IncompleteSignature"
MISSING_AUTHENTICATION_TOKEN = "MissingAuthenticationToken"
REQUEST_EXPIRED = "RequestExpired"
UNAUTHORIZED_OPERATION = "UnauthorizedOperation"
DRY_RUN_OPERATION = "DryRunOperation"
INTERNAL_ERROR = "InternalError"
REQUEST_LIMIT_EXCEEDED = "RequestLimitExceeded"
INSUFFICIENT_INSTANCE_CAPACITY = "InsufficientInstanceCapacity"
INSUFFICIENT_VOLUME_CAPACITY = "InsufficientVolumeCapacity"  # a server error in EC2's list, as the one above

#: HTTP status per code, where EC2 uses something other than 400. DryRunOperation is a 412 because
#: the request *would have succeeded*; botocore still raises ClientError for it, which is how boto3
#: users test permissions. 5xx codes are retried by botocore (as against real EC2).
STATUS_BY_CODE: dict[str, int] = {
    AUTH_FAILURE: 401,
    MISSING_AUTHENTICATION_TOKEN: 401,
    SIGNATURE_DOES_NOT_MATCH: 403,
    UNAUTHORIZED_OPERATION: 403,
    DRY_RUN_OPERATION: 412,
    INTERNAL_ERROR: 500,
    INSUFFICIENT_INSTANCE_CAPACITY: 500,
    INSUFFICIENT_VOLUME_CAPACITY: 500,
    REQUEST_LIMIT_EXCEEDED: 503,
}

#: Longest rendering of a client-supplied value quoted back in an error message: enough to
#: recognise it, never enough to turn an error response into an amplifier.
_MAX_QUOTED = 80


class ApiError(Exception):
    """An error to report to the API client as ``<Code>``/``<Message>`` with an HTTP status.

    ``status`` defaults to EC2's status for ``code`` (400 for the codes EC2 reports as plain client
    errors).
    """

    code: str
    message: str
    status: int

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = STATUS_BY_CODE.get(code, 400) if status is None else status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"ApiError({self.code!r}, {self.message!r}, status={self.status})"


class ResponseShapeError(Exception):
    """A handler returned output that does not fit the operation's output shape.

    Deliberately *not* an :class:`ApiError`: it is a bug in cloudlab, not a client mistake, so it
    should surface as ``InternalError`` and be logged with its traceback.
    """


def quote_value(value: str) -> str:
    """Render a client-supplied value for an error message: truncated, never huge."""
    if len(value) > _MAX_QUOTED:
        return value[: _MAX_QUOTED - 3] + "..."
    return value


def missing_parameter(name: str) -> ApiError:
    """The error EC2 gives when a required parameter is absent (``name`` as sent on the wire)."""
    return ApiError(MISSING_PARAMETER, f"The request must contain the parameter {name}")


def invalid_parameter_value(name: str, value: str, reason: str = "") -> ApiError:
    """EC2's ``InvalidParameterValue`` for one parameter, phrased the way EC2 phrases it."""
    message = f"Value ({quote_value(value)}) for parameter {name} is invalid."
    if reason:
        message = f"{message} {reason}"
    return ApiError(INVALID_PARAMETER_VALUE, message)


def invalid_action(action: str) -> ApiError:
    """EC2's reply to an Action it does not know."""
    return ApiError(INVALID_ACTION, f"The action {quote_value(action)} is not valid for this web service.")


def dry_run_operation() -> ApiError:
    """What an action raises after its permission checks pass when ``DryRun`` is true."""
    return ApiError(DRY_RUN_OPERATION, "Request would have succeeded, but DryRun flag is set.")


def internal_error() -> ApiError:
    """The opaque error for bugs: the client learns nothing about cloudlab's internals."""
    return ApiError(INTERNAL_ERROR, "An internal error has occurred")
