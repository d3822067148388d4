"""DescribeInstances answers exact record filters and pages in SQL: what it lists is exactly what the
filters and pages applied to the whole listing give (the Python path, taken with a wildcard, is the reference)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clouds import RunningCloud, default_image, error_code


@pytest.fixture(scope="module")
def ec2(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.new_user("insql")


def ids(answer: dict[str, Any]) -> list[str]:
    return [i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]]


def test_filters_and_pages_in_sql_match_the_whole_listing(ec2: Any) -> None:
    image = default_image(ec2)
    small = ec2.run_instances(ImageId=image, MinCount=4, MaxCount=4, InstanceType="t2.micro")["Instances"]
    large = ec2.run_instances(ImageId=image, MinCount=3, MaxCount=3, InstanceType="t2.small")["Instances"]
    launched = [i["InstanceId"] for i in small + large]
    try:
        everything = ids(ec2.describe_instances())
        assert everything == launched  # launch order, the reservations in turn
        one = launched[5]
        # exact (SQL) and wildcard (Python) filters agree
        assert ids(ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [one]}])) == [one]
        assert ids(ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [one[:-1] + "?"]}])) == [one]
        typed = [{"Name": "instance-type", "Values": ["t2.small"]}]
        assert ids(ec2.describe_instances(Filters=typed)) == launched[4:]
        assert ids(ec2.describe_instances(Filters=[{"Name": "instance-type", "Values": ["t2.sma*"]}])) == launched[4:]
        both = typed + [{"Name": "instance-id", "Values": [launched[0], launched[6]]}]
        assert ids(ec2.describe_instances(Filters=both)) == [launched[6]]
        # a reservation's instances keep their reservation when a page is read in SQL
        page = ec2.describe_instances(Filters=typed, MaxResults=5)
        assert [len(r["Instances"]) for r in page["Reservations"]] == [3] and "NextToken" not in page
        # pages of 5 through the whole listing give the listing
        seen, token = [], None
        while True:
            page = ec2.describe_instances(MaxResults=5, **({"NextToken": token} if token else {}))
            seen += ids(page)
            token = page.get("NextToken")
            if not token:
                break
        assert seen == everything
        # a SQL-answered filter with a filter SQL cannot answer (tags): the Python path, same answer
        mixed = ec2.describe_instances(Filters=typed + [{"Name": "tag-key", "Values": ["*"]}])
        assert ids(mixed) == []
        with pytest.raises(ClientError) as bad:
            ec2.describe_instances(MaxResults=5, NextToken="OTk5OQ==")  # offset 9999: past the end
        assert error_code(bad) == "InvalidNextToken"
    finally:
        ec2.terminate_instances(InstanceIds=launched)
