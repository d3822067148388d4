"""EC2 key pairs through unmodified boto3: real keys, EC2's fingerprints, errors, filters, isolation."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cloudlab.clc.keypairs import private_key_path
from tests.clouds import RunningCloud, error_code, unique

SSH_KEYGEN = shutil.which("ssh-keygen")


def openssh(public_key: Any) -> str:
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def bob(sim_cloud: RunningCloud) -> tuple[str, Any]:
    """A second, ordinary user (made directly in the cloud's database) and a boto3 client for them."""
    user, client = sim_cloud.create_user("bob")
    return user.name, client


def describe_one(ec2: Any, name: str) -> dict[str, Any]:
    pairs = ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
    assert len(pairs) == 1
    return pairs[0]


def test_created_rsa_key_is_real(ec2: Any, sim_cloud: RunningCloud, tmp_path: Path) -> None:
    name = unique("kp")
    created = ec2.create_key_pair(KeyName=name)
    assert created["KeyName"] == name
    assert created["KeyPairId"].startswith("key-") and len(created["KeyPairId"]) == 21
    material = created["KeyMaterial"]
    assert material.startswith("-----BEGIN RSA PRIVATE KEY-----\n")  # traditional PEM, as EC2 returns
    key = serialization.load_pem_private_key(material.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    # EC2's fingerprint of a created RSA key: SHA-1 of the DER PKCS#8 private key, colon hex
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert created["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.sha1(der).digest())
    described = describe_one(ec2, name)
    assert described["KeyPairId"] == created["KeyPairId"]
    assert described["KeyType"] == "rsa"
    assert described["KeyFingerprint"] == created["KeyFingerprint"]
    assert described["PublicKey"] == openssh(key.public_key())
    assert described["CreateTime"].year >= 2024
    assert "PublicKey" not in ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"][0]
    # the cloud keeps a private copy for ``cloudlab ssh``, readable by its owner only
    copy = private_key_path(sim_cloud.layout.root, "admin", name)
    assert copy.read_text() == material
    assert copy.stat().st_mode & 0o777 == 0o600 and copy.parent.stat().st_mode & 0o777 == 0o700
    if SSH_KEYGEN:
        path = tmp_path / "key.pem"
        path.write_text(material)
        path.chmod(0o600)
        derived = subprocess.run([SSH_KEYGEN, "-y", "-f", str(path)], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == described["PublicKey"].split()
    if shutil.which("openssl"):
        pkcs8 = subprocess.run(
            ["openssl", "pkcs8", "-topk8", "-nocrypt", "-outform", "DER"],
            input=material.encode(),
            capture_output=True,
            check=True,
        ).stdout
        assert hashlib.sha1(pkcs8).hexdigest() == created["KeyFingerprint"].replace(":", "")


def test_created_ed25519_key_is_real(ec2: Any, tmp_path: Path) -> None:
    name = unique("kp")
    created = ec2.create_key_pair(KeyName=name, KeyType="ed25519", KeyFormat="pem")
    material = created["KeyMaterial"]
    assert material.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")  # as EC2 returns ed25519 keys
    key = serialization.load_ssh_private_key(material.encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    public = openssh(key.public_key())
    blob = base64.b64decode(public.split()[1])
    assert created["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()
    assert created["KeyFingerprint"].endswith("=")
    described = describe_one(ec2, name)
    assert (described["KeyType"], described["PublicKey"]) == ("ed25519", public)
    if SSH_KEYGEN:
        path = tmp_path / "key"
        path.write_text(material)
        path.chmod(0o600)
        derived = subprocess.run([SSH_KEYGEN, "-y", "-f", str(path)], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == public.split()
        listed = subprocess.run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(path)], capture_output=True, text=True)
        assert f"SHA256:{created['KeyFingerprint'].rstrip('=')} " in listed.stdout


def test_import_rsa_and_ed25519(ec2: Any) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    name = unique("kp")
    imported = ec2.import_key_pair(KeyName=name, PublicKeyMaterial=(openssh(rsa_key) + " me@laptop\n").encode())
    assert imported["KeyName"] == name and imported["KeyPairId"].startswith("key-")
    spki = rsa_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert imported["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.md5(spki).digest())
    described = describe_one(ec2, name)
    assert (described["KeyType"], described["PublicKey"]) == ("rsa", openssh(rsa_key))
    assert described["KeyFingerprint"] == imported["KeyFingerprint"]

    ed_key = ed25519.Ed25519PrivateKey.generate().public_key()
    name = unique("kp")
    imported = ec2.import_key_pair(KeyName=name, PublicKeyMaterial=openssh(ed_key).encode())
    blob = base64.b64decode(openssh(ed_key).split()[1])
    assert imported["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()
    assert describe_one(ec2, name)["KeyType"] == "ed25519"


@pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed (apt-get install openssh-client)")
def test_import_key_made_by_ssh_keygen(ec2: Any, tmp_path: Path) -> None:
    assert SSH_KEYGEN is not None
    path = tmp_path / "id_ed25519"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", str(path)], check=True)
    imported = ec2.import_key_pair(KeyName=unique("kp"), PublicKeyMaterial=path.with_suffix(".pub").read_bytes())
    listed = subprocess.run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(path)], capture_output=True, text=True)
    assert f"SHA256:{imported['KeyFingerprint'].rstrip('=')} " in listed.stdout


@pytest.mark.parametrize(
    "material",
    [
        b"not a key",
        b"",
        b"ssh-rsa !!!notbase64!!!",
        b"ssh-ed25519",
        b"\xff\xfe binary",
        # a valid ed25519 blob announced as ssh-rsa
        b"ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGLy5OYXYCVoGbvGtQ6z4OfprfVRL5qt9tmrGsxiSAjW",
    ],
)
def test_import_refuses_what_is_not_an_openssh_key(raw_ec2: Any, material: bytes) -> None:
    with pytest.raises(ClientError) as excinfo:
        raw_ec2.import_key_pair(KeyName=unique("kp"), PublicKeyMaterial=material)
    assert error_code(excinfo) in ("InvalidKey.Format", "MissingParameter")
    if material:
        assert error_code(excinfo) == "InvalidKey.Format"


def test_import_refuses_other_key_types_and_pem(ec2: Any) -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = rsa_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for material in (openssh(ecdsa).encode(), pem):
        with pytest.raises(ClientError) as excinfo:
            ec2.import_key_pair(KeyName=unique("kp"), PublicKeyMaterial=material)
        assert error_code(excinfo) == "InvalidKey.Format"


def test_duplicates_and_parameter_checks(ec2: Any, raw_ec2: Any, sim_cloud: RunningCloud) -> None:
    name = unique("kp")
    ec2.create_key_pair(KeyName=name, KeyType="ed25519")
    with pytest.raises(ClientError) as excinfo:
        ec2.create_key_pair(KeyName=name)
    assert error_code(excinfo) == "InvalidKeyPair.Duplicate"
    public = openssh(ed25519.Ed25519PrivateKey.generate().public_key()).encode()
    with pytest.raises(ClientError) as excinfo:
        ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public)
    assert error_code(excinfo) == "InvalidKeyPair.Duplicate"
    for bad in ("x" * 256, "caf\u00e9", "tab\there"):
        with pytest.raises(ClientError) as excinfo:
            ec2.create_key_pair(KeyName=bad)
        assert error_code(excinfo) == "InvalidParameterValue", bad
    with pytest.raises(ClientError) as excinfo:
        raw_ec2.create_key_pair(KeyName="")
    assert error_code(excinfo) in ("InvalidParameterValue", "MissingParameter")
    for kwargs in ({"KeyType": "dsa"}, {"KeyFormat": "ppk"}):
        with pytest.raises(ClientError) as excinfo:
            raw_ec2.create_key_pair(KeyName=unique("kp"), **kwargs)
        assert error_code(excinfo) == "InvalidParameterValue", kwargs
    with pytest.raises(ClientError) as excinfo:
        raw_ec2.create_key_pair()
    assert error_code(excinfo) == "MissingParameter"
    with pytest.raises(ClientError) as excinfo:
        raw_ec2.import_key_pair(KeyName=unique("kp"))
    assert error_code(excinfo) == "MissingParameter"
    with pytest.raises(ClientError) as excinfo:
        ec2.create_key_pair(KeyName=unique("kp"), DryRun=True)
    assert error_code(excinfo) == "DryRunOperation"
    # 255 printable ASCII characters, '/' included, are a valid name; the private copy stays one file
    odd = ("a/../" + uuid.uuid4().hex).ljust(255, "z")
    assert ec2.create_key_pair(KeyName=odd)["KeyName"] == odd
    copy = private_key_path(sim_cloud.layout.root, "admin", odd)
    assert copy.parent == sim_cloud.layout.root / "keys" / "admin" and copy.is_file()
    ec2.delete_key_pair(KeyName=odd)
    assert not copy.exists()


def test_delete(ec2: Any, raw_ec2: Any, sim_cloud: RunningCloud) -> None:
    by_name, by_id = unique("kp"), unique("kp")
    ec2.create_key_pair(KeyName=by_name)
    key_id = ec2.create_key_pair(KeyName=by_id)["KeyPairId"]
    copy = private_key_path(sim_cloud.layout.root, "admin", by_name)
    assert copy.exists()
    assert ec2.delete_key_pair(KeyName=by_name)["Return"] is True
    assert not copy.exists()
    answer = ec2.delete_key_pair(KeyPairId=key_id)
    assert answer["Return"] is True and answer["KeyPairId"] == key_id
    for name in (by_name, by_id):
        with pytest.raises(ClientError) as excinfo:
            ec2.describe_key_pairs(KeyNames=[name])
        assert error_code(excinfo) == "InvalidKeyPair.NotFound"
    # EC2: deleting a missing key pair by name succeeds; an unknown id does not
    assert ec2.delete_key_pair(KeyName=by_name)["Return"] is True
    with pytest.raises(ClientError) as excinfo:
        ec2.delete_key_pair(KeyPairId=key_id)
    assert error_code(excinfo) == "InvalidKeyPair.NotFound"
    with pytest.raises(ClientError) as excinfo:
        raw_ec2.delete_key_pair()
    assert error_code(excinfo) == "MissingParameter"
    # a name can be used again after deletion, and an imported key leaves no private copy behind
    ec2.import_key_pair(
        KeyName=by_name, PublicKeyMaterial=openssh(ed25519.Ed25519PrivateKey.generate().public_key()).encode()
    )
    assert not copy.exists()


def test_describe_filters(ec2: Any) -> None:
    prefix = unique("flt")
    ids = {
        f"{prefix}-a": ec2.create_key_pair(KeyName=f"{prefix}-a")["KeyPairId"],
        f"{prefix}-b": ec2.create_key_pair(KeyName=f"{prefix}-b", KeyType="ed25519")["KeyPairId"],
        f"{prefix}-cc": ec2.create_key_pair(KeyName=f"{prefix}-cc", KeyType="ed25519")["KeyPairId"],
    }

    def names(*filters: tuple[str, list[str]], **kwargs: Any) -> list[str]:
        flts = [{"Name": name, "Values": values} for name, values in filters]
        pairs = ec2.describe_key_pairs(Filters=flts, **kwargs)["KeyPairs"]
        return sorted(k["KeyName"] for k in pairs)

    everything = sorted(ids)
    assert names(("key-name", [f"{prefix}-*"])) == everything
    assert names(("key-name", [f"{prefix}-?"])) == everything[:2]
    assert names(("key-name", [f"{prefix}-*"]), ("key-type", ["ed25519"])) == everything[1:]
    assert names(("key-name", [f"{prefix}-a", f"{prefix}-cc"])) == [everything[0], everything[2]]
    assert names(("key-pair-id", [ids[f"{prefix}-b"]])) == [f"{prefix}-b"]
    fingerprint = ec2.describe_key_pairs(KeyNames=[f"{prefix}-a"])["KeyPairs"][0]["KeyFingerprint"]
    assert names(("fingerprint", [fingerprint])) == [f"{prefix}-a"]
    assert names(("fingerprint", [fingerprint[:8] + "*"]), ("key-name", [f"{prefix}*"])) == [f"{prefix}-a"]
    assert names(("key-name", [f"{prefix.upper()}-*"])) == []  # case-sensitive, as EC2
    assert names(("key-name", ["*"]), KeyPairIds=[ids[f"{prefix}-cc"]]) == [f"{prefix}-cc"]
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_key_pairs(Filters=[{"Name": "colour", "Values": ["blue"]}])
    assert error_code(excinfo) == "InvalidParameterValue"
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_key_pairs(KeyNames=[f"{prefix}-a", f"{prefix}-missing"])
    assert error_code(excinfo) == "InvalidKeyPair.NotFound"
    assert f"{prefix}-missing" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_key_pairs(KeyPairIds=["key-0123456789abcdef0"])
    assert error_code(excinfo) == "InvalidKeyPair.NotFound"


def test_isolation_between_users(ec2: Any, bob: tuple[str, Any]) -> None:
    bob_name, bob_ec2 = bob
    shared = unique("shared")
    admin_id = ec2.create_key_pair(KeyName=shared)["KeyPairId"]
    # bob sees none of admin's keys, and may use the same name for his own
    assert shared not in {k["KeyName"] for k in bob_ec2.describe_key_pairs()["KeyPairs"]}
    with pytest.raises(ClientError) as excinfo:
        bob_ec2.describe_key_pairs(KeyNames=[shared])
    assert error_code(excinfo) == "InvalidKeyPair.NotFound"
    with pytest.raises(ClientError) as excinfo:
        bob_ec2.describe_key_pairs(KeyPairIds=[admin_id])
    assert error_code(excinfo) == "InvalidKeyPair.NotFound"
    with pytest.raises(ClientError) as excinfo:
        bob_ec2.delete_key_pair(KeyPairId=admin_id)
    assert error_code(excinfo) == "InvalidKeyPair.NotFound"
    assert bob_ec2.delete_key_pair(KeyName=shared)["Return"] is True  # his (missing) key, not admin's
    assert describe_one(ec2, shared)["KeyPairId"] == admin_id
    bob_id = bob_ec2.create_key_pair(KeyName=shared, KeyType="ed25519")["KeyPairId"]
    assert [k["KeyPairId"] for k in bob_ec2.describe_key_pairs()["KeyPairs"]] == [bob_id]
    # the admin sees everyone's key pairs
    both = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [shared]}])["KeyPairs"]
    assert sorted(k["KeyPairId"] for k in both) == sorted([admin_id, bob_id])
    assert ec2.delete_key_pair(KeyPairId=bob_id)["KeyPairId"] == bob_id
    assert bob_ec2.describe_key_pairs()["KeyPairs"] == []
    assert bob_name.startswith("bob-")
