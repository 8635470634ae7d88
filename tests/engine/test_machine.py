"""The generic state machine: building, composing, running, exporting; property tests over random machines.

Random machines have states s0..sN with a random transition table. Each state function is driven by a drawn script of
choices (legal or not), and a plain-Python reference walk over the table says what must happen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.machine as machine_module
from engine.errors import IllegalTransition
from engine.loops.fit import FIT_STATES, build_fit_machine
from engine.machine import DONE, Machine

__all__: list[str] = []

NOWHERE = "nowhere"  # a name no machine has: always an illegal choice


# -- helpers ------------------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What the state functions of a random machine share: the script of choices and the trace of states run."""

    script: list[int]
    options: list[str]
    pos: int = 0
    trace: list[str] = field(default_factory=list)


class ScriptExhausted(Exception):
    """A state function ran out of drawn choices."""


def scripted(name: str):
    def fn(ctx: Ctx) -> str:
        ctx.trace.append(name)
        if ctx.pos >= len(ctx.script):
            raise ScriptExhausted(name)
        choice = ctx.options[ctx.script[ctx.pos] % len(ctx.options)]
        ctx.pos += 1
        return choice
    fn.__qualname__ = f"scripted_{name}"
    return fn


def passthrough(name: str):
    """An inserted state that records itself and continues where it was going."""
    def fn(ctx: Ctx) -> None:
        ctx.trace.append(name)
        return None
    return fn


def build(trans: dict[str, set[str]]) -> Machine:
    m = Machine("rand", initial="s0")
    for name, targets in trans.items():
        m.add_state(name, scripted(name), to=targets)
    return m


def options_for(trans: dict[str, set[str]]) -> list[str]:
    return sorted(trans) + [DONE, NOWHERE]


def reference(trans: dict[str, set[str]], script: list[int], initial: str = "s0") -> tuple[list[str], tuple]:
    """Walk the table by hand: the states visited and how the run ends."""
    options = options_for(trans)
    trace, state, pos = [], initial, 0
    while state != DONE:
        trace.append(state)
        if pos >= len(script):
            return trace, ("exhausted", state)
        nxt = options[script[pos] % len(options)]
        pos += 1
        if nxt not in trans[state]:
            return trace, ("illegal", state, nxt)
        state = nxt
    return trace, ("done",)


def run(m: Machine, trans: dict[str, set[str]], script: list[int]) -> tuple[Ctx, tuple, list[tuple[str, str]]]:
    """Run `m` on the script; return the context, the outcome and the transitions taken."""
    ctx = Ctx(list(script), options_for(trans))
    taken: list[tuple[str, str]] = []
    m.on_transition = lambda src, dst: taken.append((src, dst))
    try:
        m.run(ctx)
    except IllegalTransition as exc:
        return ctx, ("illegal", exc.src, exc.dst), taken
    except ScriptExhausted as exc:
        return ctx, ("exhausted", exc.args[0]), taken
    return ctx, ("done",), taken


@st.composite
def random_tables(draw) -> tuple[dict[str, set[str]], list[int]]:
    n = draw(st.integers(1, 6))
    names = [f"s{i}" for i in range(n)]
    targets = st.lists(st.sampled_from(names + [DONE]), unique=True, max_size=n + 1)
    trans = {name: set(draw(targets)) for name in names}
    script = draw(st.lists(st.integers(0, 50), max_size=25))
    return trans, script


def linear() -> Machine:
    """a -> b -> done, each state returning the next."""
    m = Machine("lin", initial="a")
    m.add_state("a", lambda ctx: (ctx.append("a"), "b")[1], to={"b"})
    m.add_state("b", lambda ctx: (ctx.append("b"), DONE)[1], to={DONE})
    return m


# -- building -----------------------------------------------------------------------------------------------------
def test_add_state_and_allow_build_the_table() -> None:
    m = Machine("m", initial="a")
    assert m.add_state("a", lambda c: "b", to={"b"}) is m
    m.add_state("b", lambda c: DONE)
    m.allow("b", DONE, "a")
    assert m.transitions == {"a": {"b"}, "b": {DONE, "a"}}
    m.validate()


def test_add_state_rejects_duplicates_and_the_final_state() -> None:
    m = linear()
    with pytest.raises(ValueError, match=r"state 'a' already exists; use replace\('a', fn\)"):
        m.add_state("a", lambda c: None)
    with pytest.raises(ValueError, match="'done' is the final state and has no function"):
        m.add_state(DONE, lambda c: None)


def test_unknown_states_are_named_with_the_known_ones() -> None:
    m = linear()
    for call in (lambda: m.allow("zz", "a"), lambda: m.replace("zz", lambda c: None),
                 lambda: m.insert("x", lambda c: None, after="zz"), lambda: m.insert("x", lambda c: None, before="zz")):
        with pytest.raises(KeyError, match="machine 'lin' has no state 'zz'; states: a, b"):
            call()


def test_replace_swaps_the_function_and_keeps_the_targets() -> None:
    m = linear()
    m.replace("a", lambda ctx: (ctx.append("A"), "b")[1])
    assert m.transitions["a"] == {"b"}
    log: list[str] = []
    m.run(log)
    assert log == ["A", "b"]


def test_insert_needs_exactly_one_anchor() -> None:
    m = linear()
    with pytest.raises(ValueError, match=r"insert\('x'\) needs exactly one of after= or before="):
        m.insert("x", lambda c: None)
    with pytest.raises(ValueError, match="exactly one of after= or before="):
        m.insert("x", lambda c: None, after="a", before="b")


def test_insert_after_takes_over_the_anchor_targets() -> None:
    m = linear()
    m.insert("x", lambda ctx: ctx.append("x"), after="a")
    assert m.transitions["a"] == {"x"}
    assert m.transitions["x"] == {"b"}
    log: list[str] = []
    m.run(log)
    assert log == ["a", "x", "b"]
    m.validate()


def test_insert_after_twice_chains_in_insertion_order() -> None:
    """Two states after one anchor run in insertion order (ENGINE BUG: the second insert makes a's exit illegal)."""
    m = linear()
    m.insert("x", lambda ctx: ctx.append("x"), after="a")
    m.insert("y", lambda ctx: ctx.append("y"), after="a")
    log: list[str] = []
    m.run(log)
    assert log == ["a", "x", "y", "b"]
    assert m.transitions["a"] == {"x"} and m.transitions["x"] == {"y"} and m.transitions["y"] == {"b"}


def test_inserted_follower_may_choose_one_of_the_anchor_targets() -> None:
    m = Machine("m", initial="a")
    m.add_state("a", lambda ctx: (ctx.append("a"), "b")[1], to={"b", "c"})
    m.add_state("b", lambda ctx: (ctx.append("b"), DONE)[1], to={DONE})
    m.add_state("c", lambda ctx: (ctx.append("c"), DONE)[1], to={DONE})
    m.insert("x", lambda ctx: (ctx.append("x"), "c")[1], after="a")
    log: list[str] = []
    m.run(log)
    assert log == ["a", "x", "c"]
    m.replace("x", lambda ctx: "a")
    with pytest.raises(IllegalTransition, match="illegal transition 'x' -> 'a'; legal targets from 'x' are: b, c"):
        m.run([])


def test_insert_before_runs_on_every_entry_including_the_initial_one() -> None:
    m = Machine("m", initial="a")
    m.add_state("a", lambda ctx: (ctx.append("a"), "a" if ctx.count("a") < 3 else DONE)[1], to={"a", DONE})
    m.insert("pre", lambda ctx: ctx.append("pre"), before="a")
    assert m.initial == "pre"
    log: list[str] = []
    m.run(log)
    assert log == ["pre", "a", "pre", "a", "pre", "a"]
    m.validate()


def test_insert_before_the_final_state() -> None:
    m = linear()
    m.insert("last", lambda ctx: ctx.append("last"), before=DONE)
    assert m.transitions["b"] == {"last"} and m.transitions["last"] == {DONE}
    log: list[str] = []
    m.run(log)
    assert log == ["a", "b", "last"]


def test_insert_after_and_before_on_the_same_edge() -> None:
    """a -> b with a state after a and one before b: both run, in that order (ENGINE BUG: IllegalTransition)."""
    m = linear()
    m.insert("after_a", lambda ctx: ctx.append("after_a"), after="a")
    m.insert("before_b", lambda ctx: ctx.append("before_b"), before="b")
    log: list[str] = []
    m.run(log)
    assert log == ["a", "after_a", "before_b", "b"]


def test_illegal_transition_into_a_guarded_state_names_what_the_function_returned() -> None:
    """A function returns a state it may not go to, which has a state inserted before it: the error must name the
    state the function returned, not the inserted one (ENGINE BUG: names 'pre_c' and suggests allow('a', 'pre_c'))."""
    m = Machine("m", initial="a")
    m.add_state("a", lambda ctx: "c", to={"b"})
    m.add_state("b", lambda ctx: "c", to={"c"})
    m.add_state("c", lambda ctx: DONE, to={DONE})
    m.insert("pre_c", lambda ctx: None, before="c")
    with pytest.raises(IllegalTransition) as info:
        m.run(None)
    assert (info.value.src, info.value.dst) == ("a", "c")
    assert "'a' -> 'c'" in str(info.value)


def test_copy_is_independent() -> None:
    m = linear()
    c = m.copy()
    c.insert("x", lambda ctx: ctx.append("x"), after="a")
    c.insert("p", lambda ctx: ctx.append("p"), before="a")
    c.replace("b", lambda ctx: (ctx.append("B"), DONE)[1])
    c.allow("b", "a")
    assert m.transitions == {"a": {"b"}, "b": {DONE}} and m.initial == "a"
    log: list[str] = []
    m.run(log)
    assert log == ["a", "b"]
    log = []
    c.run(log)
    assert log == ["p", "a", "x", "B"]
    m.allow("a", DONE)
    assert DONE not in c.transitions["a"]


def test_validate_names_unknown_targets_and_unreachable_states() -> None:
    m = Machine("v", initial="a")
    m.add_state("a", lambda c: DONE, to={DONE, "ghost"})
    with pytest.raises(ValueError, match=r"machine 'v': 'a' lists unknown target\(s\) \['ghost'\]"):
        m.validate()
    m.transitions["a"] = {DONE}
    m.add_state("island", lambda c: DONE, to={DONE})
    with pytest.raises(ValueError, match=r"machine 'v': unreachable state\(s\) \['island'\]"):
        m.validate()


# -- running ------------------------------------------------------------------------------------------------------
def test_run_checks_every_transition_and_names_the_legal_targets() -> None:
    m = Machine("m", initial="a")
    m.add_state("a", lambda ctx: "c", to={"b", DONE})
    m.add_state("b", lambda ctx: DONE, to={DONE})
    m.add_state("c", lambda ctx: DONE, to={DONE})
    with pytest.raises(IllegalTransition) as info:
        m.run(None)
    err = info.value
    assert (err.src, err.dst, err.legal) == ("a", "c", frozenset({"b", DONE}))
    assert str(err) == ("machine 'm': illegal transition 'a' -> 'c'; legal targets from 'a' are: b, done. Return one "
                        "of those from the 'a' state function, or add the edge with machine.allow('a', 'c').")


def test_a_plain_state_returning_none_is_illegal() -> None:
    m = Machine("m", initial="a")
    m.add_state("a", lambda ctx: None, to={DONE})
    with pytest.raises(IllegalTransition, match="illegal transition 'a' -> None; legal targets from 'a' are: done"):
        m.run(None)


def test_on_transition_sees_every_transition() -> None:
    m = linear()
    m.insert("x", lambda ctx: ctx.append("x"), after="a")
    seen: list[tuple[str, str]] = []
    m.on_transition = lambda src, dst: seen.append((src, dst))
    m.run([])
    assert seen == [("a", "x"), ("x", "b"), ("b", DONE)]


def test_on_exception_is_called_then_the_same_exception_propagates() -> None:
    boom = KeyError("boom")

    def fail(ctx: list) -> str:
        raise boom

    m = linear()
    m.replace("b", fail)
    calls: list[tuple[object, BaseException]] = []
    m.on_exception = lambda ctx, exc: calls.append((ctx, exc))
    ctx: list[str] = []
    with pytest.raises(KeyError) as info:
        m.run(ctx)
    assert info.value is boom
    assert calls == [(ctx, boom)]


# -- display ------------------------------------------------------------------------------------------------------
def named(name: str):
    def fn(ctx: object) -> str:
        return DONE
    fn.__qualname__ = name
    return fn


def test_str_lists_states_targets_and_functions() -> None:
    m = Machine("show", initial="first")
    m.add_state("first", named("go_first"), to={"second", DONE})
    m.add_state("second", named("go_second"), to={DONE})
    assert str(m) == ("Machine 'show' (initial: first)\n"
                      "  first  -> done | second    [go_first]\n"
                      "  second -> done    [go_second]")


def test_mermaid_and_dot_have_every_edge() -> None:
    m = Machine("g", initial="a")
    m.add_state("a", named("a"), to={"a", "b"})
    m.add_state("b", named("b"), to={DONE})
    assert m.to_mermaid() == "stateDiagram-v2\n    [*] --> a\n    a --> a\n    a --> b\n    b --> [*]"
    assert m.to_dot() == 'digraph "g" {\n  rankdir=LR;\n  "a" -> "a";\n  "a" -> "b";\n  "b" -> "done";\n}'


# -- the fit machine ----------------------------------------------------------------------------------------------
def test_fit_machine_has_exactly_the_eight_states() -> None:
    m = build_fit_machine()
    expected = ("setup", "epoch_start", "batch", "backward", "optimizer_step", "validation", "epoch_end", "teardown")
    assert FIT_STATES == expected
    assert tuple(m.functions) == expected
    assert set(m.transitions) == set(expected)
    assert m.initial == "setup" and m.final == DONE
    m.validate()


def docstring_table() -> dict[str, set[str]]:
    """Parse `src -> a | b (note) | c` lines of engine/machine.py's docstring."""
    doc = machine_module.__doc__ or ""
    block = doc.split("The fit machine", 1)[1].split("Composing", 1)[0]
    table: dict[str, set[str]] = {}
    for line in block.splitlines():
        match = re.match(r"^\s+(\w+)\s+->\s+(.+)$", line)
        if match:
            targets = re.sub(r"\([^)]*\)", "", match.group(2))
            table[match.group(1)] = {t.strip() for t in targets.split("|")}
    return table


def test_docstring_table_matches_the_fit_machine() -> None:
    table = docstring_table()
    assert list(table) == list(FIT_STATES)
    assert table == build_fit_machine().transitions


# -- properties over random machines ------------------------------------------------------------------------------
SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(random_tables())
def test_run_takes_only_legal_transitions_and_matches_the_reference(case) -> None:
    trans, script = case
    m = build(trans)
    ctx, outcome, taken = run(m, trans, script)
    expected_trace, expected_outcome = reference(trans, script)
    assert ctx.trace == expected_trace
    assert outcome == expected_outcome
    for src, dst in taken:
        assert dst in trans[src]
    assert [s for s, _ in taken] == expected_trace[: len(taken)]


@SETTINGS
@given(random_tables())
def test_illegal_choices_raise_naming_src_dst_and_legal_targets(case) -> None:
    trans, script = case
    _, expected = reference(trans, script)
    m = build(trans)
    errors: list[BaseException] = []
    m.on_exception = lambda ctx, exc: errors.append(exc)
    ctx = Ctx(list(script), options_for(trans))
    if expected[0] == "illegal":
        _, src, dst = expected
        with pytest.raises(IllegalTransition) as info:
            m.run(ctx)
        err = info.value
        assert (err.src, err.dst, err.legal) == (src, dst, frozenset(trans[src]))
        assert f"illegal transition {src!r} -> {dst!r}" in str(err)
        assert f"legal targets from {src!r} are: {', '.join(sorted(trans[src])) or '(none)'}" in str(err)
        assert errors == [err]
    elif expected[0] == "exhausted":
        with pytest.raises(ScriptExhausted):
            m.run(ctx)
        assert len(errors) == 1
    else:
        m.run(ctx)
        assert errors == []


def with_after(trace: list[str], outcome: tuple, anchor: str, name: str) -> list[str]:
    """The reference trace with `name` after every exit of `anchor` (not after a failing last state)."""
    out: list[str] = []
    for i, state in enumerate(trace):
        out.append(state)
        exited = i < len(trace) - 1 or outcome == ("done",)
        if state == anchor and exited:
            out.append(name)
    return out


@SETTINGS
@given(random_tables(), st.data())
def test_inserted_after_runs_exactly_once_per_exit_of_its_anchor(case, data) -> None:
    trans, script = case
    anchor = data.draw(st.sampled_from(sorted(trans)))
    m = build(trans)
    m.insert("ins", passthrough("ins"), after=anchor)
    ctx, outcome, taken = run(m, trans, script)
    expected_trace, expected_outcome = reference(trans, script)
    assert outcome == expected_outcome
    assert ctx.trace == with_after(expected_trace, expected_outcome, anchor, "ins")
    for src, dst in taken:
        assert dst in m.transitions[src]


@SETTINGS
@given(random_tables(), st.data())
def test_inserted_before_runs_exactly_once_per_entry_into_its_anchor(case, data) -> None:
    trans, script = case
    anchor = data.draw(st.sampled_from(sorted(trans)))
    m = build(trans)
    m.insert("pre", passthrough("pre"), before=anchor)
    ctx, outcome, taken = run(m, trans, script)
    expected_trace, expected_outcome = reference(trans, script)
    assert outcome[:2] == expected_outcome[:2]  # the kind of ending and the failing state (dst: see the bug test)
    assert ctx.trace == [s for state in expected_trace for s in (["pre", state] if state == anchor else [state])]
    for src, dst in taken:
        assert dst in m.transitions[src]


@SETTINGS
@given(random_tables(), st.data())
def test_after_and_before_inserts_compose(case, data) -> None:
    """Both kinds of insert on one machine behave as each alone (fails while the after/before ENGINE BUG stands)."""
    trans, script = case
    after = data.draw(st.sampled_from(sorted(trans)))
    before = data.draw(st.sampled_from(sorted(trans)))
    m = build(trans)
    m.insert("ins", passthrough("ins"), after=after)
    m.insert("pre", passthrough("pre"), before=before)
    ctx, outcome, _ = run(m, trans, script)
    expected_trace, expected_outcome = reference(trans, script)
    assert outcome[:2] == expected_outcome[:2]
    trace = with_after(expected_trace, expected_outcome, after, "ins")
    assert ctx.trace == [s for state in trace for s in (["pre", state] if state == before else [state])]


@SETTINGS
@given(random_tables(), st.data())
def test_copy_is_independent_of_the_original(case, data) -> None:
    trans, script = case
    m = build(trans)
    snapshot = ({k: set(v) for k, v in m.transitions.items()}, dict(m.functions), m.initial, str(m))
    c = m.copy()
    anchor = data.draw(st.sampled_from(sorted(trans)))
    c.insert("ins", passthrough("ins"), **{data.draw(st.sampled_from(["after", "before"])): anchor})
    c.allow(anchor, DONE, NOWHERE)
    c.replace(anchor, passthrough("replaced"))
    assert ({k: set(v) for k, v in m.transitions.items()}, dict(m.functions), m.initial, str(m)) == snapshot
    ctx, outcome, _ = run(m, trans, script)
    assert (ctx.trace, outcome) == reference(trans, script)
    copy_snapshot = ({k: set(v) for k, v in c.transitions.items()}, dict(c.functions), c.initial)
    m.allow("s0", *trans)
    m.add_state("later", passthrough("later"))
    assert ({k: set(v) for k, v in c.transitions.items()}, dict(c.functions), c.initial) == copy_snapshot
