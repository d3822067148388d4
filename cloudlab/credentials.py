"""A user's credential bundle: one folder that makes boto3, the AWS CLI and euca2ools-style shells work.

What ``cloudlab creds NAME`` writes (secrets with mode 0600, the folder 0700)::

    NAME.crt, NAME.key   the user's X.509 identity from the cloud CA (role ``user``)
    cloud-ca.crt         the cloud CA's certificate, to check the identities it issued
    config               an AWS config profile ``cloudlab-NAME``: region and the EC2 endpoint, both as the
                         profile's ``endpoint_url`` and as a ``services`` section (botocore reads either);
                         the S3 endpoint (Walrus) in the same ``services`` section
    credentials          the profile's access key pair (the AWS shared credentials file)
    eucarc               ``export`` lines in the Eucalyptus tradition (EC2_URL, EC2_ACCESS_KEY, ...) plus
                         the AWS_* variables boto3 and the AWS CLI read

Nothing here talks to the cloud: the caller hands in the endpoint, the key pair and the PEM material.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from cloudlab.files import write_atomic

__all__ = ["Bundle", "profile_name", "usage_lines", "write_bundle"]


def profile_name(user: str) -> str:
    """The AWS profile name of ``user``'s bundle."""
    return f"cloudlab-{user}"


@dataclass(frozen=True)
class Bundle:
    """Where a written bundle's files are."""

    folder: Path
    user: str
    profile: str
    access_key: str
    certificate: Path
    private_key: Path
    ca_certificate: Path
    config: Path
    credentials: Path
    eucarc: Path


def _write(path: Path, data: str | bytes, mode: int) -> None:
    write_atomic(path, data, mode)


def _aws_config(profile: str, region: str, endpoint_url: str, s3_url: str | None = None) -> str:
    services = f"{profile}-services"
    s3 = f"s3 =\n  endpoint_url = {s3_url}\n  addressing_style = path\n" if s3_url else ""
    return (
        f"[profile {profile}]\n"
        f"region = {region}\n"
        f"endpoint_url = {endpoint_url}\n"
        f"services = {services}\n"
        "output = json\n"
        "\n"
        f"[services {services}]\n"
        "ec2 =\n"
        f"  endpoint_url = {endpoint_url}\n"
        f"{s3}"
    )


def _aws_credentials(profile: str, access_key: str, secret_key: str) -> str:
    return f"[{profile}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"


def _eucarc(bundle: Bundle, region: str, endpoint_url: str, secret_key: str, s3_url: str | None = None) -> str:
    s3 = {"S3_URL": s3_url, "AWS_ENDPOINT_URL_S3": s3_url} if s3_url else {}
    variables = {
        "EC2_URL": endpoint_url,
        "AWS_ENDPOINT_URL_EC2": endpoint_url,
        "EC2_ACCESS_KEY": bundle.access_key,
        "EC2_SECRET_KEY": secret_key,
        "AWS_ACCESS_KEY_ID": bundle.access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": region,
        "EC2_CERT": str(bundle.certificate),
        "EC2_PRIVATE_KEY": str(bundle.private_key),
        "EUCALYPTUS_CERT": str(bundle.ca_certificate),
        **s3,
    }
    lines = [f"# cloudlab credentials of user {bundle.user}: source this file ('. {bundle.eucarc}')"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    return "\n".join(lines) + "\n"


def write_bundle(
    folder: Path,
    user: str,
    *,
    endpoint_url: str,
    region: str,
    s3_url: str | None = None,
    access_key: str,
    secret_key: str,
    certificate_pem: bytes,
    private_key_pem: bytes,
    ca_pem: bytes,
) -> Bundle:
    """Write ``user``'s bundle into ``folder`` (created, mode 0700; existing files are replaced)."""
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    profile = profile_name(user)
    bundle = Bundle(
        folder=folder,
        user=user,
        profile=profile,
        access_key=access_key,
        certificate=folder / f"{user}.crt",
        private_key=folder / f"{user}.key",
        ca_certificate=folder / "cloud-ca.crt",
        config=folder / "config",
        credentials=folder / "credentials",
        eucarc=folder / "eucarc",
    )
    _write(bundle.certificate, certificate_pem, 0o644)
    _write(bundle.private_key, private_key_pem, 0o600)
    _write(bundle.ca_certificate, ca_pem, 0o644)
    _write(bundle.config, _aws_config(profile, region, endpoint_url, s3_url), 0o600)
    _write(bundle.credentials, _aws_credentials(profile, access_key, secret_key), 0o600)
    _write(bundle.eucarc, _eucarc(bundle, region, endpoint_url, secret_key, s3_url), 0o600)
    return bundle


def usage_lines(bundle: Bundle) -> list[str]:
    """Three lines telling a person how to use the bundle from the AWS CLI, boto3 and a shell."""
    env = f"export AWS_CONFIG_FILE={shlex.quote(str(bundle.config))} "
    env += f"AWS_SHARED_CREDENTIALS_FILE={shlex.quote(str(bundle.credentials))}"
    return [
        f"AWS CLI: {env}; aws --profile {bundle.profile} ec2 describe-instances",
        f'boto3:   (same export) boto3.Session(profile_name="{bundle.profile}").client("ec2").describe_instances()',
        f"shell:   . {shlex.quote(str(bundle.eucarc))}   # EC2_URL, the keys, the region and the certificates",
    ]
