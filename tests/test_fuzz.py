"""Fuzz the public API: random names, values, dtypes, shapes, reductions and weights.

Every call must either be accepted (and then count, exactly as ``reference.py`` says) or raise a
:class:`distlog.DistlogError` that names the key, with nothing buffered. The oracle below says
which, from the documented rules alone; it does not look at distlog's code. Each flush's row must
equal the reference, the run log must hold the same rows and parse, and every key whose value
is not finite must warn exactly once (the documented default policy).
"""

from __future__ import annotations

import math
import tempfile
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_row

import distlog
from distlog.runlog import RESERVED_KEYS

REDUCTIONS = ("mean", "sum", "min", "max", "last")
SUFFIXES = ("rank_min", "rank_max", "rank_std", "rank_argmax")
FUZZ_EXAMPLES = 300
CASES_RUN = {"examples": 0, "calls": 0, "errors": 0, "rows": 0}

# ----------------------------------------------------------------------------- the oracle


class Invalid(Exception):
    """The oracle's verdict: distlog must raise for this call."""


def oracle_float(value: Any) -> float:
    """The float a logged object stands for, or Invalid."""
    if isinstance(value, bool | np.bool_):
        return float(bool(value))
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.numel() != 1:
            raise Invalid
        return float(value.reshape(()).item())
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "biuf":
            raise Invalid
        return float(value.reshape(()).item())
    if isinstance(value, int | float | np.integer | np.floating):
        try:
            return float(value)
        except OverflowError:
            raise Invalid from None
    raise Invalid


def oracle_key(key: Any) -> str:
    if not isinstance(key, str) or not key or key != key.strip() or key in RESERVED_KEYS:
        raise Invalid
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in key):
        raise Invalid
    return key


@dataclass
class Model:
    """What distlog should hold: registered specs, this flush's samples, precomputed values."""

    specs: dict[str, tuple[str, bool]] = field(default_factory=dict)
    samples: list[tuple[str, float, str, float]] = field(default_factory=list)
    precomputed: dict[str, float] = field(default_factory=dict)

    def check(self, key: Any, value: Any, reduce: Any, weight: Any, spread: Any):
        """The sample one log_scalar call adds, or Invalid. Does not change the model."""
        if self.specs.get(key) != (reduce, spread):
            key = oracle_key(key)
            if reduce not in REDUCTIONS or not isinstance(spread, bool) or key in self.specs:
                raise Invalid
            base, _, suffix = key.rpartition("/")
            if suffix in SUFFIXES and self.specs.get(base, ("", False))[1]:
                raise Invalid
            if spread and any(f"{key}/{s}" in self.specs for s in SUFFIXES):
                raise Invalid
        if weight is not None and reduce != "mean":
            raise Invalid
        v = oracle_float(value)
        w = 1.0
        if weight is not None:
            w = oracle_float(weight)
            if not (w >= 0 and math.isfinite(w)):
                raise Invalid
        return key, v, reduce, w, spread

    def commit(self, sample) -> None:
        key, v, reduce, w, spread = sample
        self.specs.setdefault(key, (reduce, spread))
        self.samples.append((key, v, reduce, w))

    def row(self) -> dict[str, float]:
        row = reference_row([self.samples])
        for key, (_, spread) in self.specs.items():
            if spread and key in row:
                row.update(spread_reference(key, row[key]))
        row.update(self.precomputed)
        self.samples, self.precomputed = [], {}
        return row


def spread_reference(key: str, v: float) -> dict[str, float]:
    """One rank's spread columns: its own value; the std of one value (NaN for non-finite)."""
    nan = math.nan
    if math.isnan(v):
        return {f"{key}/{s}": nan for s in SUFFIXES}
    return {
        f"{key}/rank_min": v,
        f"{key}/rank_max": v,
        f"{key}/rank_std": 0.0 if math.isfinite(v) else nan,
        f"{key}/rank_argmax": 0.0,
    }


# ----------------------------------------------------------------------------- strategies

good_keys = st.sampled_from(["loss", "acc", "a", "a/b", "x.y", "tokens", "a/rank_min", "ünï/κ"])
bad_keys = st.sampled_from([*RESERVED_KEYS, "", " x", "x ", "x\n", "tab\tin", "\x7f", "\ud800"])
junk_keys = st.sampled_from([0, -1, None, 1.5])


def mostly(good: st.SearchStrategy, *others: st.SearchStrategy, percent: int = 80):
    """``good`` in ``percent`` % of draws, the others share the rest."""
    return st.integers(0, 99).flatmap(lambda i: good if i < percent else others[i % len(others)])


keys = mostly(good_keys, bad_keys, st.text(max_size=10), junk_keys)
finite = st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False)
special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 5e-324])
numbers_ = st.one_of(finite, special, st.integers(-(2**70), 2**70))
NP_DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"]
TORCH_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
]
SHAPES = [(), (), (), (1,), (1, 1), (2,), (0,), (2, 3)]


@st.composite
def torch_values(draw):
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(st.sampled_from(SHAPES))
    raw = draw(st.floats(-300, 300, allow_nan=False) | special)
    if dtype == torch.bool:
        base = torch.tensor(bool(raw))
    elif not dtype.is_floating_point and not dtype.is_complex:
        base = torch.tensor(0 if not math.isfinite(raw) else int(raw) % 100)
    else:
        base = torch.tensor(raw, dtype=torch.float64)
    return base.to(dtype).expand(shape).clone() if shape else base.to(dtype)


@st.composite
def numpy_values(draw):
    dtype = draw(st.sampled_from(NP_DTYPES))
    raw = draw(st.floats(-100, 100, allow_nan=False))
    kind = draw(st.sampled_from(["scalar", "0d", "1elem", "2elem"]))
    with np.errstate(all="ignore"):
        scalar = np.array(raw).astype(dtype)[()]
    if kind == "scalar":
        return scalar
    return np.full({"0d": (), "1elem": (1,), "2elem": (2,)}[kind], scalar)


values = mostly(
    st.one_of(numbers_, numbers_, torch_values(), numpy_values(), st.booleans()),
    st.sampled_from([1j, np.complex64(1), "1.0", None, [1.0], {"v": 1}, b"1", 10**400]),
    percent=92,
)
reductions = st.one_of(*[st.sampled_from(REDUCTIONS)] * 4, st.sampled_from(["avg", "", None, 1]))
weights = st.one_of(
    *[st.none()] * 6,
    st.floats(0, 1e6),
    st.sampled_from([-1.0, math.nan, math.inf, 0, "2", torch.tensor(3.0), torch.ones(2)]),
)
spreads = st.sampled_from([False] * 12 + [True, "yes"])


def usual_reduce(key: Any) -> str:
    """Most calls keep one reduction per key, as real code does; the rest try another."""
    return REDUCTIONS[sum(map(ord, str(key))) % len(REDUCTIONS)]


@st.composite
def scalar_op(draw):
    key = draw(keys)
    reduce = usual_reduce(key) if draw(st.integers(0, 9)) < 7 else draw(reductions)
    weight = draw(weights) if reduce == "mean" or draw(st.integers(0, 9)) == 0 else None
    return ("scalar", key, draw(values), reduce, weight, draw(spreads))


dict_op = st.tuples(
    st.just("dict"),
    st.dictionaries(keys.filter(lambda k: isinstance(k, str | int)), values, max_size=4),
    reductions,
)
precomputed_op = st.tuples(
    st.just("precomputed"), st.dictionaries(st.sampled_from(["val/f1", "step", "val/n"]), values)
)
ops = st.lists(
    st.one_of(scalar_op(), scalar_op(), scalar_op(), dict_op, precomputed_op, st.just(("flush",))),
    min_size=3,
    max_size=30,
)

# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module", autouse=True)
def report_case_counts():
    """Print how many cases ran (``pytest -s``): the measure the issue asks for."""
    yield
    print(f"\nfuzz cases: {CASES_RUN}")


def close(got: float, want: float, scale: float) -> bool:
    if math.isnan(want) or math.isinf(want):
        return got == want or (math.isnan(want) and math.isnan(got))
    return abs(got - want) <= 1e-9 * max(1.0, scale)


def assert_row(got: dict[str, float], want: dict[str, float], scale: float) -> None:
    assert sorted(got) == sorted(want), (got, want)
    for key in want:
        assert close(got[key], want[key], scale), (key, got[key], want[key])


def apply(logger: distlog.Logger, model: Model, op: tuple) -> None:
    """Run one call on distlog and on the model; they must agree on accept vs reject."""
    CASES_RUN["calls"] += 1
    kind = op[0]
    if kind == "scalar":
        _, key, value, reduce, weight, spread = op
        try:
            expected = model.check(key, value, reduce, weight, spread)
        except Invalid:
            expected = None
        try:
            logger.log_scalar(key, value, reduce, weight=weight, spread=spread)
        except distlog.DistlogError as exc:
            CASES_RUN["errors"] += 1
            assert expected is None, f"rejected a valid call {op}: {exc}"
            if isinstance(key, str):
                assert repr(key) in str(exc), (op, str(exc))
            return
        assert expected is not None, f"accepted an invalid call {op}"
        model.commit(expected)
    elif kind == "dict":
        _, mapping, reduce = op
        trial = Model(dict(model.specs))
        try:
            samples = []
            for key, value in mapping.items():
                samples.append(trial.check(key, value, reduce, None, False))
                trial.commit(samples[-1])
        except Invalid:
            samples = None
        try:
            logger.log_dict(mapping, reduce)
        except distlog.DistlogError:
            CASES_RUN["errors"] += 1
            assert samples is None, f"rejected a valid dict {op}"
            return
        assert samples is not None, f"accepted an invalid dict {op}"
        for sample in samples:
            model.commit(sample)
    elif kind == "precomputed":
        _, mapping = op
        try:
            clean = {oracle_key(k): oracle_float(v) for k, v in mapping.items()}
        except Invalid:
            clean = None
        try:
            logger.log_precomputed(mapping)
        except distlog.DistlogError:
            CASES_RUN["errors"] += 1
            assert clean is None, f"rejected valid precomputed values {op}"
            return
        assert clean is not None, f"accepted invalid precomputed values {op}"
        model.precomputed.update(clean)


def play(logger: distlog.Logger, ops: list[tuple]) -> list[tuple[dict[str, float], float]]:
    """Apply the calls, flushing where asked and at the end; each row checked at once."""
    model = Model()
    rows = []
    for op in [*ops, ("flush",)]:
        if op[0] != "flush":
            apply(logger, model, op)
            continue
        scale = max([1.0] + [abs(s[1] * s[3]) for s in model.samples if math.isfinite(s[1])])
        want = model.row()
        got = logger.flush(block=True)
        assert got is not None
        assert_row(got, want, scale)
        rows.append((got, scale))
    return rows


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=ops, async_write=st.booleans())
def test_random_calls_give_a_correct_row_or_a_clear_error(ops, async_write):
    CASES_RUN["examples"] += 1
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = distlog.Logger(run_dir=tmp, async_write=async_write, handle_signals=False)
        played = False
        try:
            rows = play(logger, ops)
            played = True
        finally:
            logger.finish(exit_code=0 if played else 1)
        written = distlog.read_metrics(tmp)
        assert len(written) == len([r for r, _ in rows if r])
        for row, (want, scale) in zip(written, [r for r in rows if r[0]], strict=True):
            assert_row({k: v for k, v in row.items() if k not in ("step", "time")}, want, scale)
        CASES_RUN["rows"] += len(written)
    # default non-finite policy: written as is, one warning per key
    nonfinite_keys = {k for r, _ in rows for k, v in r.items() if not math.isfinite(v)}
    warned = [str(w.message) for w in caught if "non-finite value" in str(w.message)]
    assert len(warned) == len(nonfinite_keys), (warned, nonfinite_keys)
    for key in nonfinite_keys:
        assert sum(f"key {key!r} has" in m for m in warned) == 1
