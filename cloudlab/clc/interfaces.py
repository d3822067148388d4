"""Instances in subnets: where a launch goes (subnet, zone, groups, private address) and its network interface.

An instance launched into a VPC has one network interface (``eni-``) in one subnet, with a private
address from the subnet's range (the first free one after EC2's four reserved addresses, or the one
asked for), the security groups of the subnet's VPC, and a stable MAC. The interface lives and dies
with its instance (EC2's ``DeleteOnTermination``): a terminated instance's address is free again.

Which subnet: the one named (``SubnetId``, or ``NetworkInterfaces[0].SubnetId``), else the default
subnet of the account's default VPC in the zone asked for (``Placement.AvailabilityZone``), else in
the first zone. The subnet decides the zone, and so the cluster; a zone that contradicts the
subnet's is refused, as EC2 refuses it.

A cluster whose network still runs Eucalyptus' managed mode (a VLAN per security group, see
:mod:`cloudlab.clc.network`) plumbs no subnets: its instances are EC2-Classic instances, without a
VPC interface, and a launch that names a subnet there is refused with a clear error.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudlab.clc.groups import SecurityGroups
from cloudlab.clc.network import mac_for
from cloudlab.clc.users import User
from cloudlab.clc.vpcs import Subnet, Vpcs
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id


@dataclass(frozen=True)
class LaunchNetwork:
    """Where a RunInstances request's instances go: the zone, and in a VPC, the subnet and address."""

    zone: str | None
    group_ids: tuple[str, ...]
    subnet: Subnet | None = None  # None: an EC2-Classic launch (a managed-mode cluster)
    private_ip: str | None = None  # asked for (one instance only)
    public_ip: bool = False  # each instance gets an auto-assigned public address (MapPublicIpOnLaunch)
    #: the subnet's addresses held so far, read once per launch (a launch of 1,000 reads them once, not 1,000 times)
    held: set[str] = field(default_factory=set, compare=False)
    cursor: list[Iterator[str]] = field(default_factory=list, compare=False)  # where the next free one is sought


@dataclass(frozen=True)
class Interface:
    interface_id: str
    instance_id: str
    owner: str
    subnet_id: str
    vpc_id: str
    zone: str
    private_ip: str
    mac: str
    created: float
    state: str  # the instance's


def _classic_refusal(zone: str) -> CloudError:
    return CloudError(
        "InvalidParameterCombination",
        f"the cluster of {zone} runs Eucalyptus' managed network (a VLAN per security group, EC2-Classic):"
        " its instances are not in VPC subnets; launch without SubnetId there",
    )


class NetworkInterfaces:
    """The network interfaces of instances in VPCs (``clc.service(NetworkInterfaces)``)."""

    def __init__(self, clc: Any) -> None:
        self._clc = clc
        self.store = clc.store

    @property
    def vpcs(self) -> Vpcs:
        return self._clc.service(Vpcs)

    @property
    def groups(self) -> SecurityGroups:
        return self._clc.service(SecurityGroups)

    # -- RunInstances ------------------------------------------------------------------------------------------
    def for_launch(
        self,
        user: User,
        *,
        zone: str | None,
        subnet_id: str | None,
        private_ip: str | None,
        security_groups: Sequence[str],
        associate_public_ip: bool | None = None,
        security_group_ids: Sequence[str],
        count: int,
        classic: Any,
    ) -> LaunchNetwork:
        """Resolve a launch's subnet, zone, groups and addresses (``classic(zone)``: is that zone managed-mode?);
        ``associate_public_ip`` over the subnet's ``MapPublicIpOnLaunch``."""
        if private_ip is not None and count > 1:
            raise CloudError(
                "InvalidParameterCombination", "PrivateIpAddress names one address: launch one instance with it"
            )
        if subnet_id:
            subnet = self.vpcs.get_subnet(user, subnet_id)
            if zone and zone != subnet.zone:
                raise CloudError(
                    "InvalidParameterValue",
                    f"Value ({zone}) for parameter availabilityZone is invalid: subnet {subnet.subnet_id} is in"
                    f" {subnet.zone}",
                )
            if classic(subnet.zone):
                raise _classic_refusal(subnet.zone)
        elif classic(zone):
            if private_ip is not None:
                raise _classic_refusal(zone or "the first zone")
            return LaunchNetwork(zone, tuple(self.groups.resolve_for_launch(user, security_groups, security_group_ids)))
        else:
            subnet = self.vpcs.default_subnet(user.name, zone)
        group_ids = self.groups.resolve_for_launch(user, security_groups, security_group_ids, subnet.vpc_id)
        if private_ip is not None:
            self._check_address(subnet, private_ip)
        public_ip = subnet.map_public_ip if associate_public_ip is None else bool(associate_public_ip)
        return LaunchNetwork(subnet.zone, tuple(group_ids), subnet, private_ip, public_ip)

    @staticmethod
    def _check_address(subnet: Subnet, address: str) -> None:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise CloudError(
                "InvalidParameterValue", f"Value ({str(address)[:80]}) for parameter privateIpAddress is invalid"
            ) from None
        if ip not in ipaddress.IPv4Network(subnet.cidr):
            raise CloudError(
                "InvalidParameterValue",
                f"Address {ip} does not fall within the subnet's address range ({subnet.cidr})",
            )
        if not subnet.is_host(str(ip)):
            raise CloudError(
                "InvalidParameterValue",
                f"Address {ip} is reserved by the cloud (the first four and the last address of {subnet.cidr})",
            )

    def attach(self, db: sqlite3.Connection, instance_id: str, owner: str, launch: LaunchNetwork) -> str | None:
        """Give ``instance_id`` its interface and address (inside the RunInstances transaction)."""
        subnet = launch.subnet
        if subnet is None:
            return None
        held = launch.held
        if not launch.cursor:
            held.update(
                r["private_ip"]
                for r in db.execute(
                    "SELECT n.private_ip FROM network_interfaces n JOIN instances i ON i.instance_id = n.instance_id"
                    " WHERE n.subnet_id=? AND i.state != 'terminated'",
                    (subnet.subnet_id,),
                )
            )
            launch.cursor.append(subnet.iter_hosts())
        if launch.private_ip is not None:
            if launch.private_ip in held:
                raise CloudError("InvalidIPAddress.InUse", f"Address {launch.private_ip} is in use")
            address: str | None = launch.private_ip
        else:
            address = next((a for a in launch.cursor[0] if a not in held), None)
        if address is None:
            raise CloudError(
                "InsufficientFreeAddressesInSubnet",
                f"There are not enough free addresses in subnet '{subnet.subnet_id}' ({subnet.cidr}) to satisfy"
                " the requested number of instances",
            )
        held.add(address)
        interface_id = new_id("eni")
        db.execute(
            "INSERT INTO network_interfaces (interface_id, instance_id, owner, subnet_id, vpc_id, private_ip, mac,"
            " created) VALUES (?,?,?,?,?,?,?,?)",
            (
                interface_id,
                instance_id,
                owner,
                subnet.subnet_id,
                subnet.vpc_id,
                address,
                mac_for(instance_id),
                time.time(),
            ),
        )
        return interface_id

    # -- reads -----------------------------------------------------------------------------------------------
    def _rows(self, where: str, params: Sequence[Any]) -> list[Interface]:
        rows = self.store.query(
            "SELECT n.*, s.zone, i.state FROM network_interfaces n JOIN instances i ON i.instance_id = n.instance_id"
            f" JOIN subnets s ON s.subnet_id = n.subnet_id WHERE {where} ORDER BY n.created, n.rowid",
            list(params),
        )
        return [
            Interface(
                r["interface_id"],
                r["instance_id"],
                r["owner"],
                r["subnet_id"],
                r["vpc_id"],
                r["zone"],
                r["private_ip"],
                r["mac"],
                r["created"],
                r["state"],
            )
            for r in rows
        ]

    def of_instances(self, instance_ids: Sequence[str]) -> dict[str, Interface]:
        """Each live instance's interface (terminated instances have none left, as on EC2)."""
        found: dict[str, Interface] = {}
        ids = list(dict.fromkeys(instance_ids))
        if len(ids) > 1000:  # most of a large cloud (a describe of all): one pass over the live ones, kept by id
            wanted = set(ids)
            return {n.instance_id: n for n in self._rows("i.state != 'terminated'", ()) if n.instance_id in wanted}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            where = f"n.instance_id IN ({','.join('?' * len(chunk))}) AND i.state != 'terminated'"
            found.update({n.instance_id: n for n in self._rows(where, chunk)})
        return found

    def describe(self, user: User, interface_ids: Sequence[str] | None = None) -> list[Interface]:
        for interface_id in interface_ids or []:
            if not is_valid_id(interface_id, "eni"):
                raise CloudError("InvalidNetworkInterfaceId.Malformed", f'Invalid id: "{interface_id[:80]}"')
        where, params = "i.state != 'terminated'", []
        if not user.is_admin:
            where += " AND n.owner=?"
            params.append(user.name)
        found = self._rows(where, params)
        if interface_ids:
            have = {n.interface_id for n in found}
            missing = [n for n in interface_ids if n not in have]
            if missing:
                raise CloudError(
                    "InvalidNetworkInterfaceID.NotFound", f"The networkInterface ID '{missing[0]}' does not exist"
                )
            found = [n for n in found if n.interface_id in set(interface_ids)]
        return found
