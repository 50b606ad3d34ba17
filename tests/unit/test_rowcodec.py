"""The Valkey store's packed row encoding, without a server: layouts, strings, old rows."""

from __future__ import annotations

import numpy as np
import pytest

from strata.features.online import FeatureSpec
from strata.features.online.rowcodec import RowLayout, decode, encode


def _layout(**specs: FeatureSpec) -> RowLayout:
    return RowLayout(tuple(specs), specs)


def test_roundtrip_every_dtype_and_absent_rows() -> None:
    lay = _layout(
        f=FeatureSpec("float32"), d=FeatureSpec("float64"), i=FeatureSpec("int32"),
        n=FeatureSpec("int64"), s=FeatureSpec("string"), e=FeatureSpec("float32", 3),
        h=FeatureSpec("int64", 2), t=FeatureSpec("string"),
    )  # fmt: skip
    vals = {
        "f": np.array([1.5, -2.0], np.float32), "d": np.array([1e300, 2.0]),
        "i": np.array([-7, 2**31 - 1], np.int32), "n": np.array([2**40, -1]),
        "s": np.array(["héllo", ""], dtype=object),
        "e": np.arange(6, dtype=np.float32).reshape(2, 3),
        "h": np.array([[1, -1], [2**50, 3]]), "t": np.array(["a" * 70_000, "z"], dtype=object),
    }  # fmt: skip
    rows = encode(lay, 2, vals)
    found, out = decode(lay, [rows[1], None, rows[0]], ["t", "e", "n", "s", "d", "f", "i", "h"])
    np.testing.assert_array_equal(found, [True, False, True])
    assert list(out) == ["t", "e", "n", "s", "d", "f", "i", "h"]
    for name, col in vals.items():
        got = out[name]
        assert got.dtype == col.dtype if name not in ("s", "t") else got.dtype == object
        assert got.flags.c_contiguous and got.dtype.isnative
        np.testing.assert_array_equal(got[[2, 0]], col)
    assert out["s"][1] == "" and out["n"][1] == 0 and (out["e"][1] == 0).all()


def test_rows_written_before_a_feature_was_appended_read_it_as_zero() -> None:
    old = _layout(a=FeatureSpec("float64"), s=FeatureSpec("string"))
    new = old.extended({"b": FeatureSpec("int64", 2), "u": FeatureSpec("string")})
    assert new.names == ("a", "s", "b", "u") and old.extended({"a": FeatureSpec("float64")}) is old
    before = encode(old, 1, {"a": np.array([4.0]), "s": np.array(["x"], dtype=object)})
    after = encode(new, 1, {"a": np.array([5.0]), "b": np.array([[1, 2]]),
                            "u": np.array(["y"], dtype=object)})  # fmt: skip
    found, out = decode(new, [before[0], after[0]], ["a", "b", "s", "u"])
    assert found.all()
    np.testing.assert_array_equal(out["a"], [4.0, 5.0])
    np.testing.assert_array_equal(out["b"], [[0, 0], [1, 2]])
    assert out["s"].tolist() == ["x", ""] and out["u"].tolist() == ["", "y"]


def test_a_missing_column_is_written_as_zero_and_too_wide_rows_are_refused() -> None:
    lay = _layout(a=FeatureSpec("float32"), b=FeatureSpec("int64"))
    _, out = decode(lay, encode(lay, 2, {"b": np.array([3, 4])}), ["a", "b"])
    np.testing.assert_array_equal(out["a"], [0.0, 0.0])
    np.testing.assert_array_equal(out["b"], [3, 4])
    with pytest.raises(ValueError, match="exceeds"):
        encode(_layout(v=FeatureSpec("float32", 20_000)), 1, {})
