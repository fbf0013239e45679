"""Hypothesis strategies and error readers shared by the property tests of the edge and the core.

Task and config dicts are drawn field by field from tables of valid and field-local invalid raw
values; ``assert_names_exactly`` checks that a ``pydantic.ValidationError`` names exactly the
fields drawn invalid, both in its errors and in the text a user sees.

Booleans are left out of the "invalid" values of numeric fields: pydantic's lax mode takes them as
0/1 (see ``test_booleans_are_not_numbers``, a known gap).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from raysched.config import default_config
from raysched.core import Priority
from raysched.models import (
    DEFAULT_POOL_BY_KIND,
    DEFAULT_POOL_KINDS,
    MAX_FEATURES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_SLA_MS,
    Payload,
    Requirements,
    Task,
)

POOLS = frozenset(p.name for p in default_config().pools)
CONTEXT = {"pools": POOLS}
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
NAN, INF = float("nan"), float("inf")
MISSING = object()  # a field left out of the dict

# No "explain" phase: it reruns a failure many times over to annotate it, and a failing run of
# the queue test is slow enough already.
_PHASES = [p for p in Phase if p is not Phase.explain]
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
FAST = settings(max_examples=120, deadline=None, phases=_PHASES, suppress_health_check=_QUIET)
SLOW = settings(max_examples=40, deadline=None, phases=_PHASES, suppress_health_check=_QUIET)
# For tests parametrized over many cases, each drawing its own examples.
PER_CASE = settings(max_examples=25, deadline=None, phases=_PHASES, suppress_health_check=_QUIET)


def work(*args: Any, **kwargs: Any) -> int:
    """The callable a ``fn`` payload carries."""
    return len(args) + len(kwargs)


# -- reading errors --------------------------------------------------------------------------------


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"])


def mentions(text: str, field: str) -> bool:
    """``field`` appears in ``text`` as a word (so "id" is not found in "invalid")."""
    return re.search(rf"(?<![\w.]){re.escape(field)}(?![\w])", text) is not None


def error_names(err: dict[str, Any], field: str) -> bool:
    """One pydantic error names ``field``: by its location, or, for the error of a model check
    (located at the model: empty for the top one, ``pools.0`` for a pool), in its message."""
    loc = _loc(err)
    if loc == field or loc.startswith(field + "."):
        return True
    if not loc:
        return mentions(err["msg"], field)
    return field.startswith(loc + ".") and mentions(err["msg"], field[len(loc) + 1:])


def assert_names_exactly(exc: ValidationError, fields: set[str]) -> None:
    """Every field of ``fields`` is named by some error, and every error names one of them."""
    errors = exc.errors()
    assert errors, "a ValidationError with no errors"
    text = str(exc)
    for field in fields:
        naming = [e for e in errors if error_names(e, field)]
        assert naming, f"no error names {field!r}:\n{text}"
        # ... and so does the text a user sees: the location, and the rest in the message.
        loc = _loc(naming[0])
        rest = field[len(loc) + 1:] if loc and field.startswith(loc + ".") else field
        assert (loc in text or not loc) and rest in text, \
            f"the text does not name {field!r}:\n{text}"
    for e in errors:
        assert any(error_names(e, f) for f in fields), \
            f"error at {_loc(e) or '(model)'} names none of {sorted(fields)}: {e['msg']}"


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    if value is MISSING:
        data.pop(leaf, None)
    else:
        data[leaf] = value


def get_path(data: dict[str, Any], path: str) -> Any:
    for p in path.split("."):
        if not isinstance(data, dict) or p not in data:
            return None
        data = data[p]
    return data


# -- values ----------------------------------------------------------------------------------------

names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_.-]{0,15}\Z", fullmatch=True)
# Unknown keys: no "." (pydantic quotes such a key in its error text, `a.b`).
extra_keys = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,15}\Z", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
prompts = st.text(min_size=1, max_size=60).filter(lambda s: bool(s.strip()))
# Eight features: what the cpu pool's model takes (see test_classification_features_have_the_
# model_length), so these stay valid whether or not validation checks the length.
feature_lists = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=8, max_size=8)
non_finite = st.sampled_from([NAN, INF, -INF])
wrong_containers = st.sampled_from([[], {}, [1, 2], {"a": 1}])


def _valid_priority_text(s: str) -> bool:
    s = s.strip()
    if s.upper() in Priority.__members__:
        return True
    if s.isdigit():
        try:
            return 1 <= int(s) <= 4
        except ValueError:
            return False
    return False


valid_priorities = st.one_of(
    st.sampled_from(list(Priority)),
    st.integers(1, 4),
    st.integers(1, 4).map(str),
    st.tuples(st.sampled_from([p.name for p in Priority]),
              st.sampled_from([str.lower, str.upper, str.title, str.capitalize]),
              st.sampled_from(["", " ", "\t"])).map(lambda t: f"{t[2]}{t[1](t[0])}{t[2]}"),
)
invalid_priorities = st.one_of(
    st.sampled_from([0, 5, -1, 10**20, -(10**20), "URGENT", "urgent", "", "  ", "0", "5", "1.5",
                     "-1", "²", True, False, 2.5, 0.0, NAN, INF, None, [], {}, [1], "HIGH LOW"]),
    st.integers().filter(lambda i: not 1 <= i <= 4),
    st.text(max_size=12).filter(lambda s: not _valid_priority_text(s)),
)

# field path -> (valid raw values, field-local invalid raw values). "Field-local" means invalid
# whatever the other fields hold; cross-field rules are handled by ``cross_field_errors``.
TASK_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "id": (st.text(min_size=1, max_size=128),
           st.one_of(st.sampled_from(["", "x" * 129, 5, None, 1.5]), wrong_containers)),
    "kind": (st.one_of(st.sampled_from(sorted(DEFAULT_POOL_BY_KIND)), names),
             st.one_of(st.sampled_from(["", " ", "has space", "1abc", "-x", "_x", "x" * 65, "é",
                                        "a/b", "a\tb", "\nabc", 5, None]),
                       wrong_containers,
                       # Not ending in a newline: that case is test_trailing_newline_in_names.
                       st.text(max_size=70).filter(
                           lambda s: not NAME_RE.fullmatch(s) and not s.endswith("\n")))),
    "priority": (valid_priorities, invalid_priorities),
    "sla_ms": (st.one_of(st.none(), st.floats(0, MAX_SLA_MS, exclude_min=True), st.just(MAX_SLA_MS),
                         st.sampled_from(["800", "1e3"])),
               st.one_of(st.floats(max_value=0, allow_nan=False), non_finite,
                         st.floats(min_value=MAX_SLA_MS, exclude_min=True, allow_infinity=False),
                         st.sampled_from(["soon", "", "800ms"]), wrong_containers)),
    "deadline_s": (st.one_of(st.none(), st.floats(min_value=0, exclude_min=True,
                                                  allow_infinity=False)),
                   st.one_of(st.floats(max_value=0, allow_nan=False), non_finite,
                             st.sampled_from(["tomorrow", ""]), wrong_containers)),
    "best_effort": (st.sampled_from([True, False, "yes", "no", "true", "off", 1, 0]),
                    st.sampled_from([2, -1, 0.5, "maybe", "", None, [], {}])),
    "tenant": (st.text(min_size=1, max_size=64),
               st.one_of(st.sampled_from(["", "t" * 65, 5, None]), wrong_containers)),
    "payload.prompt": (st.one_of(st.none(), prompts, st.just("p" * MAX_PROMPT_CHARS)),
                       st.one_of(st.sampled_from(["", " ", "\n\t ", "\u3000", 5, 1.5]),
                                 st.just("p" * (MAX_PROMPT_CHARS + 1)), wrong_containers,
                                 st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003", max_size=8))),
    "payload.max_new_tokens": (st.one_of(st.none(), st.integers(1, MAX_NEW_TOKENS)),
                               st.one_of(st.integers(max_value=0),
                                         st.integers(min_value=MAX_NEW_TOKENS + 1),
                                         st.sampled_from([1.5, NAN, INF, "many", ""]),
                                         wrong_containers)),
    "payload.features": (st.one_of(st.none(), feature_lists),
                         st.one_of(st.just([]), st.just([0.0] * (MAX_FEATURES + 1)),
                                   st.lists(finite, max_size=4).flatmap(
                                       lambda xs: non_finite.map(lambda x: xs + [x])),
                                   st.sampled_from([[None], ["x"], [[1.0]], "abc", 5,
                                                    {"a": 1.0}]))),
    "payload.fn": (st.sampled_from([None, work, print, len]),
                   st.sampled_from([5, "work", [], {}, 1.5])),
    "payload.args": (st.sampled_from([(), (1,), [1, "a"], ("x", None)]),
                     st.sampled_from([5, "abc", None, {"a": 1}])),
    "payload.kwargs": (st.sampled_from([{}, {"a": 1}]), st.sampled_from([5, [], "x", None, [1]])),
    "requirements.pool": (
        # Unknown but well-formed names and bad names are invalid only through the model check.
        st.one_of(st.none(), st.sampled_from(sorted(POOLS)), names,
                  st.sampled_from(["bad name", "9lives", "llm 7b"])),
        st.sampled_from([5, 1.5, [], {}, ["cpu"]])),
    "requirements.num_gpus": (st.floats(0, 64),
                              st.one_of(st.floats(max_value=0, exclude_max=True, allow_nan=False),
                                        st.floats(min_value=64, exclude_min=True), non_finite,
                                        st.sampled_from(["lots", None]), wrong_containers)),
    "requirements.context_tokens": (st.one_of(st.none(), st.integers(1, 1_048_576)),
                                    st.one_of(st.integers(max_value=0),
                                              st.integers(min_value=1_048_577),
                                              st.sampled_from([1.5, NAN, INF, "x"]),
                                              wrong_containers)),
}
TOP_FIELDS = set(Task.model_fields)
PAYLOAD_FIELDS = set(Payload.model_fields)
REQUIREMENT_FIELDS = set(Requirements.model_fields)


def pool_kind(pool: str, pools: Collection[str] | None) -> str | None:
    """The kind ("cpu", "llm") of ``pool`` that decides what its payload must carry: from the
    validation context when it maps names to kinds, else the default pools' (None if unknown)."""
    kinds = pools if isinstance(pools, Mapping) else DEFAULT_POOL_KINDS
    return kinds.get(pool)


# -- generators of task dicts ----------------------------------------------------------------------


@st.composite
def valid_task_dicts(draw: st.DrawFn, *, feasible: bool = False) -> dict[str, Any]:
    """A dict ``Task.model_validate`` accepts against ``POOLS``.

    ``feasible``: small enough and with deadline far enough ahead (from t=1e6 s) that the core
    admits it at once (ids left to the default, unique).
    """
    shape = draw(st.sampled_from(["llm", "classification", "fn"]))
    data: dict[str, Any] = {}
    if shape == "llm":
        kind = draw(st.one_of(st.sampled_from(["summarization", "reasoning", "agent"]), names))
        pool = draw(st.sampled_from(["llm-7b", "llm-70b"]))
        if DEFAULT_POOL_BY_KIND.get(kind, "cpu") != pool or draw(st.booleans()):
            data["requirements"] = {"pool": pool}
        max_new = draw(st.integers(1, 256 if feasible else MAX_NEW_TOKENS))
        data["payload"] = {"prompt": draw(prompts), "max_new_tokens": max_new}
    elif shape == "classification":
        kind = "classification"
        if draw(st.booleans()):
            data["requirements"] = {"pool": "cpu"}
        data["payload"] = {"features": draw(feature_lists)}
    else:
        kind = draw(names)
        data["requirements"] = {"pool": "cpu"}
        data["payload"] = {"fn": work, "args": draw(st.sampled_from([(), (1, 2)])),
                           "kwargs": draw(st.sampled_from([{}, {"x": 1}]))}
    data["kind"] = kind
    if draw(st.booleans()):
        data["priority"] = draw(valid_priorities)
    if feasible:
        form = draw(st.sampled_from(["sla_ms", "deadline_s", "best_effort"]))
        if form == "sla_ms":
            data["sla_ms"] = draw(st.floats(60_000, MAX_SLA_MS))
        elif form == "deadline_s":
            data["deadline_s"] = 1e6 + draw(st.floats(60, 1e7))
        else:
            data["best_effort"] = True
    else:
        form = draw(st.sampled_from(["sla_ms", "deadline_s", "best_effort", "best_effort+"]))
        if form == "sla_ms":
            data["sla_ms"] = draw(st.floats(0, MAX_SLA_MS, exclude_min=True))
        elif form == "deadline_s":
            data["deadline_s"] = draw(st.floats(0, 1e12, exclude_min=True))
        else:
            data["best_effort"] = True
            if form == "best_effort+":
                key = draw(st.sampled_from(["sla_ms", "deadline_s"]))
                data[key] = draw(st.floats(1, MAX_SLA_MS))
        if draw(st.booleans()):
            data["id"] = draw(st.text(min_size=1, max_size=128))
    if draw(st.booleans()):
        data["tenant"] = draw(st.text(min_size=1, max_size=64))
    if draw(st.booleans()):
        req = data.setdefault("requirements", {})
        req["num_gpus"] = draw(st.floats(0, 64))
        if not feasible or draw(st.booleans()):
            req["context_tokens"] = draw(st.one_of(st.none(), st.integers(1, 1_048_576)))
    return data


# How to corrupt one field of a valid task: a path of TASK_FIELDS (an invalid value there), an
# unknown key, or a cross-field corruption, invalid only given the rest of the task.
CROSS_CORRUPTIONS = ["unknown_pool", "deadline_both", "deadline_neither", "missing_payload"]
TASK_CORRUPTIONS = sorted(TASK_FIELDS) + ["unknown_key"] + CROSS_CORRUPTIONS


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}


@st.composite
def corruptions(draw: st.DrawFn, data: dict[str, Any], what: str) -> tuple[set[str], dict]:
    """``data`` with one corruption ``what``; returns the fields the error must name, and it."""
    bad = _copy(data)
    if what in TASK_FIELDS:
        set_path(bad, what, draw(TASK_FIELDS[what][1]))
        return {what}, bad
    if what == "unknown_key":
        where = draw(st.sampled_from(["", "payload.", "requirements."]))
        taken = {"": TOP_FIELDS, "payload.": PAYLOAD_FIELDS, "requirements.": REQUIREMENT_FIELDS}
        key = draw(extra_keys.filter(lambda k: k not in taken[where]))
        set_path(bad, where + key, draw(st.one_of(st.none(), st.integers(), st.text(max_size=5))))
        return {where + key}, bad
    if what == "unknown_pool":
        set_path(bad, "requirements.pool",
                  draw(st.one_of(st.sampled_from(["CPU", "LLM-7b", "llm-13b", "llm-7b.", "gpu"]),
                                 names.filter(lambda n: n not in POOLS))))
        return {"requirements.pool"}, bad
    if what == "deadline_both":
        bad["sla_ms"], bad["deadline_s"] = draw(st.floats(1, 1e6)), draw(st.floats(1, 1e12))
        return {"sla_ms", "deadline_s"}, bad
    if what == "deadline_neither":
        for key in ("sla_ms", "deadline_s", "best_effort"):
            bad.pop(key, None)
        if draw(st.booleans()):
            bad["best_effort"] = False
        return {"sla_ms", "deadline_s"}, bad
    assert what == "missing_payload", what
    pool = Task.model_validate(data, context=CONTEXT).pool
    if pool_kind(pool, POOLS) == "llm":
        path = draw(st.sampled_from(["payload.prompt", "payload.max_new_tokens"]))
    elif data["kind"] == "classification" and "fn" not in data["payload"]:
        path = "payload.features"
    else:
        path = "payload.fn"
    set_path(bad, path, draw(st.sampled_from([MISSING, None])))
    return {path}, bad

