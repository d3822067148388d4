"""Scheduling policies (cloudlab.cc.scheduler): GREEDY packs, ROUNDROBIN spreads, place() never overcommits."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cloudlab.cc import scheduler
from cloudlab.cc.scheduler import (
    Greedy,
    InstanceRequest,
    NodeView,
    RoundRobin,
    SchedulingPolicy,
    load_policy,
    place,
    policy_names,
    register_policy,
)


def node(
    name: str,
    vcpus: int = 4,
    memory_mb: int = 1024,
    *,
    free_vcpus: int | None = None,
    free_memory: int | None = None,
    instances: int = 0,
) -> NodeView:
    return NodeView(
        name,
        vcpus,
        memory_mb,
        vcpus if free_vcpus is None else free_vcpus,
        memory_mb if free_memory is None else free_memory,
        instances,
    )


def req(i: int | str, vcpus: int = 1, memory_mb: int = 256) -> InstanceRequest:
    return InstanceRequest(f"i-{i}", vcpus, memory_mb)


# -- a student's policy, loadable as module:Class ------------------------------------------------------


class MostFree:
    """The docstring's example: the node with the most free vCPUs (ties: the first by name)."""

    name = "MOSTFREE"

    def choose(self, request: InstanceRequest, nodes: Sequence[NodeView]) -> str | None:
        fitting = [n for n in nodes if n.fits(request)]
        return max(fitting, key=lambda n: n.vcpus_free).name if fitting else None


class NoChoose:
    """Has a name but no choose(): not a policy."""

    name = "NOCHOOSE"


NOT_A_CLASS = 42


class Liar:
    """A buggy policy that always names the same node, fitting or not."""

    name = "LIAR"

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def choose(self, request: InstanceRequest, nodes: Sequence[NodeView]) -> str | None:
        return self.answer


# -- NodeView.fits ------------------------------------------------------------------------------------------


def test_fits_needs_both_vcpus_and_memory() -> None:
    n = node("a", free_vcpus=2, free_memory=512)
    assert n.fits(req(1, 2, 512))  # exactly full is fine
    assert not n.fits(req(1, 3, 256))
    assert not n.fits(req(1, 1, 513))


# -- GREEDY ---------------------------------------------------------------------------------------------------


def test_greedy_takes_the_first_node_that_fits_in_the_given_order() -> None:
    nodes = [node("a", free_vcpus=0), node("b", free_vcpus=1), node("c")]
    assert Greedy().choose(req(1), nodes) == "b"
    assert Greedy().choose(req(1, vcpus=2), nodes) == "c"


def test_greedy_returns_none_when_nothing_fits() -> None:
    assert Greedy().choose(req(1, vcpus=5), [node("a"), node("b")]) is None
    assert Greedy().choose(req(1), []) is None


def test_greedy_packs_onto_as_few_nodes_as_possible() -> None:
    placements = place(Greedy(), [req(i) for i in range(6)], [node("b"), node("a"), node("c")])
    # nodes are taken in name order: a fills up (4 vCPUs) before b is used, c stays empty
    assert placements == {"i-0": "a", "i-1": "a", "i-2": "a", "i-3": "a", "i-4": "b", "i-5": "b"}


# -- ROUNDROBIN -------------------------------------------------------------------------------------------------


def test_roundrobin_cycles_through_nodes_and_wraps() -> None:
    policy = RoundRobin()
    nodes = [node("a"), node("b"), node("c")]
    assert [policy.choose(req(i), nodes) for i in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_roundrobin_skips_full_nodes() -> None:
    policy = RoundRobin()
    nodes = [node("a"), node("b", free_vcpus=0), node("c")]
    assert [policy.choose(req(i), nodes) for i in range(4)] == ["a", "c", "a", "c"]


def test_roundrobin_wraps_to_the_start_when_only_earlier_nodes_fit() -> None:
    policy = RoundRobin()
    nodes = [node("a"), node("b"), node("c")]
    assert policy.choose(req(1), nodes) == "a"
    assert policy.choose(req(2), nodes) == "b"
    later = [node("a"), node("b", free_vcpus=0), node("c", free_vcpus=0)]
    assert policy.choose(req(3), later) == "a"


def test_roundrobin_continues_after_a_node_that_left() -> None:
    policy = RoundRobin()
    assert policy.choose(req(1), [node("a"), node("b"), node("c")]) == "a"
    assert policy.choose(req(2), [node("a"), node("b"), node("c")]) == "b"
    # b died: the next one after b (by name) is c, not a
    assert policy.choose(req(3), [node("a"), node("c")]) == "c"


def test_roundrobin_returns_none_when_nothing_fits() -> None:
    policy = RoundRobin()
    assert policy.choose(req(1), []) is None
    assert policy.choose(req(1, vcpus=9), [node("a"), node("b")]) is None
    # a failed choice does not move the cursor
    assert policy.choose(req(2), [node("a"), node("b")]) == "a"


def test_roundrobin_spreads_with_place() -> None:
    placements = place(RoundRobin(), [req(i) for i in range(5)], [node("c"), node("a"), node("b")])
    assert placements == {"i-0": "a", "i-1": "b", "i-2": "c", "i-3": "a", "i-4": "b"}


# -- place() ------------------------------------------------------------------------------------------------------


def test_place_subtracts_each_placement_before_the_next() -> None:
    class Recorder:
        name = "RECORDER"

        def __init__(self) -> None:
            self.seen: list[tuple[int, int, int]] = []

        def choose(self, request: InstanceRequest, nodes: Sequence[NodeView]) -> str | None:
            (only,) = nodes
            self.seen.append((only.vcpus_free, only.memory_mb_free, only.instances))
            return only.name if only.fits(request) else None

    policy = Recorder()
    placements = place(policy, [req(0, 1, 100), req(1, 2, 300), req(2, 1, 100)], [node("a", 4, 1000, instances=1)])
    assert placements == {"i-0": "a", "i-1": "a", "i-2": "a"}
    assert policy.seen == [(4, 1000, 1), (3, 900, 2), (1, 600, 3)]


def test_place_does_not_change_the_callers_views() -> None:
    nodes = [node("a")]
    place(Greedy(), [req(0), req(1)], nodes)
    assert nodes == [node("a")]


def test_place_stops_at_the_first_request_that_fits_nowhere() -> None:
    requests = [req(0, 2), req(1, 3), req(2, 1)]  # i-2 would fit, but placement stops at i-1
    assert place(Greedy(), requests, [node("a", 4)]) == {"i-0": "a"}


def test_place_with_no_nodes_places_nothing() -> None:
    assert place(Greedy(), [req(0)], []) == {}
    assert place(RoundRobin(), [req(0)], []) == {}


def test_place_refuses_a_policy_that_names_a_missing_node() -> None:
    with pytest.raises(ValueError, match="ghost"):
        place(Liar("ghost"), [req(0)], [node("a")])


def test_place_refuses_a_policy_that_overcommits() -> None:
    # the first placement fits; the liar then names the full node again
    with pytest.raises(ValueError, match="does not fit"):
        place(Liar("a"), [req(0, 4), req(1, 1)], [node("a", 4), node("b", 4)])
    with pytest.raises(ValueError):
        place(Liar("a"), [req(0, 1, 2048)], [node("a", 4, 1024)])


def test_place_with_a_student_policy() -> None:
    nodes = [node("a", free_vcpus=1), node("b", free_vcpus=3), node("c", free_vcpus=2)]
    assert place(MostFree(), [req(i) for i in range(4)], nodes) == {"i-0": "b", "i-1": "b", "i-2": "c", "i-3": "a"}


# -- load_policy / register_policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls"), [("GREEDY", Greedy), ("greedy", Greedy), ("RoundRobin", RoundRobin), ("roundrobin", RoundRobin)]
)
def test_load_policy_by_name_is_case_insensitive(spec: str, cls: type) -> None:
    policy = load_policy(spec)
    assert type(policy) is cls
    assert isinstance(policy, SchedulingPolicy)


def test_load_policy_gives_a_fresh_instance_each_time() -> None:
    a, b = load_policy("ROUNDROBIN"), load_policy("ROUNDROBIN")
    assert a is not b
    nodes = [node("a"), node("b")]
    assert a.choose(req(0), nodes) == "a"
    assert b.choose(req(0), nodes) == "a"  # b's cursor is its own


@pytest.mark.parametrize("spec", [f"{__name__}:MostFree", "tests.test_scheduler:MostFree"])
def test_load_policy_by_import_path(spec: str) -> None:
    policy = load_policy(spec)
    assert policy.name == "MOSTFREE"
    assert type(policy).__name__ == "MostFree"
    assert policy.choose(req(0), [node("a", free_vcpus=1), node("b", free_vcpus=2)]) == "b"


def test_register_policy_makes_a_class_selectable_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "_POLICIES", dict(scheduler._POLICIES))  # leave the registry as it was
    assert register_policy(MostFree) is MostFree  # usable as a decorator
    assert "MOSTFREE" in policy_names()
    assert isinstance(load_policy("mostfree"), MostFree)


def test_policy_names_lists_the_built_ins() -> None:
    assert {"GREEDY", "ROUNDROBIN"} <= set(policy_names())
    assert policy_names() == sorted(policy_names())


def test_unknown_policy_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as excinfo:
        load_policy("FASTEST")
    text = str(excinfo.value)
    assert "FASTEST" in text and "GREEDY" in text and "ROUNDROBIN" in text and "module:Class" in text


@pytest.mark.parametrize("spec", ["no_such_module_xyz:Policy", f"{__name__}:NoSuchClass"])
def test_unloadable_import_path_is_a_clear_error(spec: str) -> None:
    with pytest.raises(ValueError, match="cannot load scheduling policy"):
        load_policy(spec)


def test_a_class_without_choose_is_not_a_policy() -> None:
    with pytest.raises(ValueError, match="not a scheduling policy"):
        load_policy(f"{__name__}:NoChoose")


@pytest.mark.parametrize("attribute", ["NOT_A_CLASS", "Liar"])
def test_something_that_cannot_be_instantiated_is_not_a_policy(attribute: str) -> None:
    """``module:NAME`` naming a constant, or a class that needs constructor arguments, must give the
    same clear ValueError as any other non-policy (``--scheduler`` reports ValueErrors to the user)."""
    with pytest.raises(ValueError, match="scheduling policy"):
        load_policy(f"{__name__}:{attribute}")
