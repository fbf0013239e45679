"""Property-based tests (hypothesis) of the validation edge: ``Task`` and what it carries.

Malformed, wrong-typed, oversized, negative, NaN, unknown enum values and deadlines in the past
each get a ``pydantic.ValidationError`` naming the field. (That nothing invalid enters the queue
is tests/unit/test_core_properties.py.)

Most tests draw each field of a dict from "missing", "valid" or "invalid" and keep track of which
fields were drawn invalid, so the property is exact: the errors name every invalid field and only
those; with no invalid field, the cross-field rules (one deadline form, a known pool, the payload
the pool's kind needs) decide, and a valid result satisfies the documented invariants.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from pydantic import ValidationError

from raysched.core import CoreTask, Priority
from raysched.models import (
    DEFAULT_POOL_BY_KIND,
    MAX_FEATURES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_SLA_MS,
    Task,
)
from tests.strategies import (
    CONTEXT,
    FAST,
    INF,
    NAME_RE,
    PAYLOAD_FIELDS,
    PER_CASE,
    POOLS,
    REQUIREMENT_FIELDS,
    TASK_CORRUPTIONS,
    TASK_FIELDS,
    TOP_FIELDS,
    assert_names_exactly,
    corruptions,
    extra_keys,
    get_path,
    mentions,
    names,
    pool_kind,
    set_path,
    valid_task_dicts,
    work,
)


def test_the_task_field_table_names_real_fields():
    """The table stays in step with the models (a field renamed or removed fails here), and
    every kind's default pool is one of the default config's pools."""
    models = {"payload": PAYLOAD_FIELDS, "requirements": REQUIREMENT_FIELDS}
    for path in TASK_FIELDS:
        parent, _, leaf = path.rpartition(".")
        assert leaf in (models[parent] if parent else TOP_FIELDS), path
    assert set(DEFAULT_POOL_BY_KIND.values()) <= POOLS


_TRUTH = {True: True, False: False, "yes": True, "no": False, "true": True, "off": False}


def cross_field_errors(data: dict[str, Any], pools: Collection[str] | None) -> set[str]:
    """The documented cross-field rules a field-wise valid ``data`` breaks, as the field each
    rule's message names."""
    sla = get_path(data, "sla_ms")
    deadline = get_path(data, "deadline_s")
    best_effort = _TRUTH[data.get("best_effort", False)]
    broken: set[str] = set()
    if sla is not None and deadline is not None:
        broken.add("sla_ms")
    if sla is None and deadline is None and not best_effort:
        broken.add("sla_ms")
    kind = data.get("kind")
    pool = get_path(data, "requirements.pool") or DEFAULT_POOL_BY_KIND.get(kind, "cpu")
    if not NAME_RE.fullmatch(pool) or (pools is not None and pool not in pools):
        broken.add("requirements.pool")
    prompt = get_path(data, "payload.prompt")
    max_new = get_path(data, "payload.max_new_tokens")
    features = get_path(data, "payload.features")
    fn = get_path(data, "payload.fn")
    if pool_kind(pool, pools) == "llm":
        if prompt is None:
            broken.add("payload.prompt")
        if max_new is None:
            broken.add("payload.max_new_tokens")
        # A callable or features would never run there (the one pool is an LLM pool).
        if fn is not None:
            broken.add("payload.fn")
        elif features is not None:
            broken.add("payload.features")
    elif kind == "classification" and features is None and fn is None:
        broken.add("payload.features")
    elif kind != "classification" and fn is None:
        broken.add("payload.fn")  # the documented rule; see _features_instead_of_fn
    return broken


def _features_instead_of_fn(data: Any) -> bool:
    """The known gap of test_features_do_not_stand_in_for_fn: features, no fn, a kind other than
    classification, on a pool not of the llm kind. The general properties leave it out."""
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        return False
    kind = data.get("kind")
    pool = get_path(data, "requirements.pool") or DEFAULT_POOL_BY_KIND.get(kind, "cpu")
    return (kind != "classification" and isinstance(pool, str) and pool_kind(pool, None) != "llm"
            and data["payload"].get("features") is not None and data["payload"].get("fn") is None)


def check_task_invariants(task: Task, pools: Collection[str] | None, now_s: float = 1e6) -> None:
    """What a validated ``Task`` promises (the model's docstrings), and its core view."""
    assert isinstance(task.priority, Priority) and 1 <= int(task.priority) <= 4
    assert 1 <= len(task.id) <= 128 and 1 <= len(task.tenant) <= 64
    assert NAME_RE.fullmatch(task.kind)
    assert not (task.sla_ms is not None and task.deadline_s is not None)
    assert task.sla_ms is not None or task.deadline_s is not None or task.best_effort
    if task.sla_ms is not None:
        assert math.isfinite(task.sla_ms) and 0 < task.sla_ms <= MAX_SLA_MS
    if task.deadline_s is not None:
        assert math.isfinite(task.deadline_s) and task.deadline_s > 0
    assert NAME_RE.fullmatch(task.pool)
    if pools is not None:
        assert task.pool in pools
    p = task.payload
    if p.prompt is not None:
        assert p.prompt.strip() and len(p.prompt) <= MAX_PROMPT_CHARS
    if p.max_new_tokens is not None:
        assert 1 <= p.max_new_tokens <= MAX_NEW_TOKENS
    if p.features is not None:
        assert 1 <= len(p.features) <= MAX_FEATURES and all(math.isfinite(x) for x in p.features)
    if pool_kind(task.pool, pools) == "llm":
        assert p.prompt is not None and p.max_new_tokens is not None
    elif p.fn is None:
        assert task.kind == "classification" and p.features is not None
    else:
        assert callable(p.fn)
    r = task.requirements
    assert math.isfinite(r.num_gpus) and 0 <= r.num_gpus <= 64
    assert r.context_tokens is None or 1 <= r.context_tokens <= 1_048_576

    core = task.to_core(now_s)
    assert isinstance(core, CoreTask)
    assert (core.task_id, core.kind, core.pool, core.priority, core.best_effort, core.tenant) == \
        (task.id, task.kind, task.pool, task.priority, task.best_effort, task.tenant)
    if task.deadline_s is not None:
        assert core.deadline_s == task.deadline_s
    elif task.sla_ms is not None:
        assert core.deadline_s == pytest.approx(now_s + task.sla_ms / 1e3)
        assert core.deadline_s >= now_s
    else:
        assert core.deadline_s == INF
    assert core.num_prompt_tokens == (math.ceil(len(p.prompt) / 4) if p.prompt else 0)
    assert core.max_new_tokens == (p.max_new_tokens or 0) >= 0
    assert core.min_context_tokens == (r.context_tokens or 0)


@st.composite
def mixed_task_dicts(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """Every field drawn missing, valid or invalid; returns the dict and the invalid paths.

    A third of the dicts are "clean" (no field invalid), so the cross-field rules get their turn.
    """
    data: dict[str, Any] = {}
    invalid: set[str] = set()
    containers = {}
    clean = draw(st.integers(0, 2)) == 0
    modes = ["missing", "valid", "valid"] + ([] if clean else ["invalid"])
    for parent in ("payload", "requirements"):
        mode = draw(st.sampled_from(["dict", "dict", "dict", "missing"] + modes[3:]))
        containers[parent] = mode
        if mode == "invalid":
            data[parent] = draw(st.sampled_from([5, "x", None, [], 1.5]))
            invalid.add(parent)
        elif mode == "dict":
            data[parent] = {}
    for path, (valid, bad) in TASK_FIELDS.items():
        parent = path.split(".")[0] if "." in path else None
        if parent is not None and containers[parent] != "dict":
            continue
        mode = draw(st.sampled_from(modes))
        if path == "kind" and mode == "missing" and not clean:
            invalid.add("kind")  # required
        elif mode == "valid" or path == "kind":
            set_path(data, path, draw(valid))
        elif mode == "invalid":
            set_path(data, path, draw(bad))
            invalid.add(path)
    if not clean and draw(st.integers(0, 5)) == 0:
        key = draw(extra_keys.filter(lambda k: k not in TOP_FIELDS))
        data[key] = draw(st.integers())
        invalid.add(key)
    return data, invalid


# -- Task validation ------------------------------------------------------------------------------


@FAST
@given(valid_task_dicts())
def test_valid_tasks_validate_and_keep_their_invariants(data):
    task = Task.model_validate(data, context=CONTEXT)
    check_task_invariants(task, POOLS)
    # The client revalidates a Task through model_dump (client.validate): a fixed point.
    assert Task.model_validate(task.model_dump(), context=CONTEXT) == task


@PER_CASE
@given(data=st.data())
@pytest.mark.parametrize("what", TASK_CORRUPTIONS)
def test_each_single_field_corruption_is_rejected_naming_that_field(what, data):
    good = data.draw(valid_task_dicts(), label="valid")
    fields, bad = data.draw(corruptions(good, what), label="corrupted")
    note(f"the error must name {sorted(fields)}")
    with pytest.raises(ValidationError) as info:
        Task.model_validate(bad, context=CONTEXT)
    assert_names_exactly(info.value, fields)


@FAST
@given(mixed_task_dicts())
def test_arbitrary_task_dicts_are_valid_or_name_every_bad_field(drawn):
    data, invalid = drawn
    assume(invalid or not _features_instead_of_fn(data))
    try:
        task = Task.model_validate(data, context=CONTEXT)
    except ValidationError as exc:
        if invalid:
            assert_names_exactly(exc, invalid)
        else:
            broken = cross_field_errors(data, POOLS)
            assert broken, f"rejected a valid task:\n{exc}"
            errors = exc.errors()
            assert len(errors) == 1 and errors[0]["loc"] == ()
            assert any(mentions(errors[0]["msg"], f) for f in broken), (broken, errors[0]["msg"])
        return
    assert not invalid, f"accepted invalid fields {sorted(invalid)}: {task!r}"
    assert not cross_field_errors(data, POOLS)
    check_task_invariants(task, POOLS)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


@FAST
@given(st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(sorted(TOP_FIELDS)), st.text(max_size=8)),
                    json_values, max_size=8),
    json_values))
@pytest.mark.parametrize("context", [CONTEXT, None], ids=["known-pools", "no-context"])
def test_any_input_is_a_task_or_a_validation_error(context, data):
    """Whatever comes in (JSON from the CLI, say), validation raises nothing but
    ValidationError, and what it accepts keeps the invariants."""
    try:
        task = Task.model_validate(data, context=context)
    except ValidationError as exc:
        assert exc.errors()
        return
    assume(not _features_instead_of_fn(data))
    check_task_invariants(task, POOLS if context else None)


@FAST
@given(valid_task_dicts(), st.sampled_from(sorted(POOLS)))
def test_unknown_pool_is_rejected_only_against_known_pools(data, missing_pool):
    """The pool check needs the scheduler's pools: a task for a pool the scheduler lacks is
    rejected naming requirements.pool; with that pool known, it is accepted."""
    pool = Task.model_validate(data, context=CONTEXT).pool
    assert Task.model_validate(data).pool == pool  # without context the pool is not checked
    others = POOLS - {missing_pool}
    if pool == missing_pool:
        with pytest.raises(ValidationError) as info:
            Task.model_validate(data, context={"pools": others})
        assert_names_exactly(info.value, {"requirements.pool"})
        assert missing_pool in str(info.value)
    else:
        Task.model_validate(data, context={"pools": others})




# -- the payload a pool needs follows the pool's kind, not its name -------------------------------

PROMPT = {"prompt": "Summarise this.", "max_new_tokens": 16}


def _on(pool: str, payload: dict[str, Any], kind: str = "job") -> dict[str, Any]:
    return {"kind": kind, "sla_ms": 800, "requirements": {"pool": pool}, "payload": payload}


@pytest.mark.parametrize("pool,kind,payload,field", [
    ("gpu-big", "llm", {"fn": work}, "payload.prompt"),
    ("gpu-big", "llm", {"prompt": "Summarise this."}, "payload.max_new_tokens"),
    ("gpu-big", "llm", {"max_new_tokens": 16}, "payload.prompt"),
    ("llm-fast", "cpu", PROMPT, "payload.fn"),
    ("llm-7b", "cpu", PROMPT, "payload.fn"),
], ids=["llm-kind-fn", "llm-kind-no-max-new", "llm-kind-no-prompt", "cpu-kind-llm-name",
        "cpu-kind-default-llm-name"])
def test_a_payload_the_pools_kind_does_not_take_is_rejected(pool, kind, payload, field):
    """A scheduler passes its pools as ``{name: kind}``: an llm pool called "gpu-big" needs a
    prompt and max_new_tokens, a cpu pool called "llm-fast" needs a callable."""
    with pytest.raises(ValidationError) as info:
        Task.model_validate(_on(pool, payload), context={"pools": {pool: kind, "cpu": "cpu"}})
    assert_names_exactly(info.value, {field})
    assert pool in str(info.value)


@pytest.mark.parametrize("pool,kind,payload", [
    ("gpu-big", "llm", PROMPT),
    ("llm-fast", "cpu", {"fn": work}),
    ("llm-7b", "cpu", {"fn": work}),
], ids=["llm-kind", "cpu-kind-llm-name", "cpu-kind-default-llm-name"])
def test_a_payload_the_pools_kind_takes_is_accepted(pool, kind, payload):
    task = Task.model_validate(_on(pool, payload), context={"pools": {pool: kind}})
    core = task.to_core(0.0)
    assert task.pool == core.pool == pool
    assert core.max_new_tokens == payload.get("max_new_tokens", 0)


@FAST
@given(pool=st.one_of(names, st.sampled_from(["gpu-big", "llm-fast", "llm-7b", "cpu"])),
       kind=st.sampled_from(["cpu", "llm"]), llm_payload=st.booleans(),
       task_kind=st.sampled_from(["job", "summarization", "agent"]))
def test_the_pools_kind_not_its_name_decides_the_payload(pool, kind, llm_payload, task_kind):
    """Whatever a pool is called, one of the llm kind takes a prompt and max_new_tokens and any
    other takes a callable ``fn``; the task's own kind does not change that."""
    data = _on(pool, dict(PROMPT) if llm_payload else {"fn": work}, task_kind)
    pools = {pool: kind}
    if llm_payload == (kind == "llm"):
        check_task_invariants(Task.model_validate(data, context={"pools": pools}), pools)
        return
    with pytest.raises(ValidationError) as info:
        Task.model_validate(data, context={"pools": pools})
    assert_names_exactly(info.value, {"payload.prompt" if kind == "llm" else "payload.fn"})


# -- gaps these tests found, now closed ---------------------------------------------------------


def _llm_task(**kw: Any) -> dict[str, Any]:
    data = {"kind": "summarization", "sla_ms": 800,
            "payload": {"prompt": "Summarise this.", "max_new_tokens": 16}}
    data.update(kw)
    return data


@pytest.mark.parametrize("data,field,context", [
    (_llm_task(kind="summarization\n", requirements={"pool": "llm-7b"}), "kind", CONTEXT),
    ({"kind": "job\n", "sla_ms": 800, "payload": {"fn": work}}, "kind", CONTEXT),
    (_llm_task(requirements={"pool": "llm-7b\n"}), "requirements.pool", None),
], ids=["kind-llm", "kind-fn", "pool-no-context"])
def test_trailing_newline_in_names(data, field, context):
    with pytest.raises(ValidationError) as info:
        Task.model_validate(data, context=context)
    assert_names_exactly(info.value, {field})


@pytest.mark.parametrize("context", [CONTEXT, None], ids=["known-pools", "no-context"])
def test_empty_pool_name_is_rejected(context):
    with pytest.raises(ValidationError) as info:
        Task.model_validate(_llm_task(requirements={"pool": ""}), context=context)
    assert_names_exactly(info.value, {"requirements.pool"})



# pydantic's lax mode would take True/False as 1/0 (sla_ms=True a 1 ms deadline).
@pytest.mark.parametrize("data,field", [
    (_llm_task(sla_ms=True), "sla_ms"),
    (_llm_task(sla_ms=None, deadline_s=True), "deadline_s"),
    (_llm_task(payload={"prompt": "x", "max_new_tokens": True}), "payload.max_new_tokens"),
    (_llm_task(requirements={"context_tokens": True}), "requirements.context_tokens"),
    (_llm_task(requirements={"num_gpus": True}), "requirements.num_gpus"),
    ({"kind": "classification", "sla_ms": 50, "payload": {"features": [True] + [0.5] * 7}},
     "payload.features.0"),
], ids=["sla_ms", "deadline_s", "max_new_tokens", "context_tokens", "num_gpus", "features"])
def test_booleans_are_not_numbers(data, field):
    with pytest.raises(ValidationError) as info:
        Task.model_validate(data, context=CONTEXT)
    assert_names_exactly(info.value, {field})


@pytest.mark.parametrize("kind", ["agent", "job"])
def test_features_do_not_stand_in_for_fn(kind):
    data = {"kind": kind, "sla_ms": 800, "requirements": {"pool": "cpu"},
            "payload": {"features": [0.1] * 8}}
    with pytest.raises(ValidationError) as info:
        Task.model_validate(data, context=CONTEXT)
    assert_names_exactly(info.value, {"payload.fn"})


@pytest.mark.parametrize("length", [1, 7, 9, MAX_FEATURES])
def test_classification_features_have_the_model_length(length):
    data = {"kind": "classification", "sla_ms": 800, "payload": {"features": [0.1] * length}}
    with pytest.raises(ValidationError) as info:
        Task.model_validate(data, context=CONTEXT)
    assert_names_exactly(info.value, {"payload.features"})


def test_classification_with_eight_features_is_accepted():
    """The counterpart: what the cpu pool's model takes is valid, on the default pool."""
    task = Task.model_validate({"kind": "classification", "sla_ms": 800,
                                "payload": {"features": [0.1] * 8}}, context=CONTEXT)
    assert task.pool == "cpu" and task.to_core(0.0).deadline_s == pytest.approx(0.8)


def test_priority_booleans_are_refused():
    """The counterpart that works today: a boolean priority is refused, naming the field."""
    for value in (True, False):
        with pytest.raises(ValidationError) as info:
            Task.model_validate(_llm_task(priority=value), context=CONTEXT)
        assert_names_exactly(info.value, {"priority"})


def test_a_kind_of_ones_own_with_a_prompt_is_told_where_it_runs() -> None:
    # A kind with no default pool runs on cpu; given a prompt instead of a callable, the error
    # says how to send it to an LLM pool.
    with pytest.raises(ValidationError) as info:
        Task.model_validate({"kind": "translation", "sla_ms": 1000, "payload": PROMPT})
    assert "payload.fn" in str(info.value) and "requirements.pool" in str(info.value)
