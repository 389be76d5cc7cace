"""Taguchi orthogonal arrays: shapes, balance, strength 2, the GF(4) field, and choosing an array for factors."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest

from apoptosis.core.errors import ApoptosisError
from apoptosis.search.arrays import (
    ARRAYS,
    OrthogonalArray,
    array,
    assign,
    design,
    galois_field,
    has_strength_2,
    is_balanced,
    rao_hamming,
)

EXPECTED = {
    "L4": (4, (2,) * 3),
    "L8": (8, (2,) * 7),
    "L9": (9, (3,) * 4),
    "L12": (12, (2,) * 11),
    "L16": (16, (2,) * 15),
    "L16b": (16, (4,) * 5),
    "L18": (18, (2,) + (3,) * 7),
    "L25": (25, (5,) * 6),
    "L27": (27, (3,) * 13),
    "L32": (32, (2,) * 31),
}

# Published Taguchi tables (levels 1..s), to pin down the row and column order of the constructions.
STANDARD = {
    "L8": [
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 2, 2, 2, 2],
        [1, 2, 2, 1, 1, 2, 2],
        [1, 2, 2, 2, 2, 1, 1],
        [2, 1, 2, 1, 2, 1, 2],
        [2, 1, 2, 2, 1, 2, 1],
        [2, 2, 1, 1, 2, 2, 1],
        [2, 2, 1, 2, 1, 1, 2],
    ],
    "L9": [
        [1, 1, 1, 1],
        [1, 2, 2, 2],
        [1, 3, 3, 3],
        [2, 1, 2, 3],
        [2, 2, 3, 1],
        [2, 3, 1, 2],
        [3, 1, 3, 2],
        [3, 2, 1, 3],
        [3, 3, 2, 1],
    ],
    "L16b": [
        [1, 1, 1, 1, 1],
        [1, 2, 2, 2, 2],
        [1, 3, 3, 3, 3],
        [1, 4, 4, 4, 4],
        [2, 1, 2, 3, 4],
        [2, 2, 1, 4, 3],
        [2, 3, 4, 1, 2],
        [2, 4, 3, 2, 1],
        [3, 1, 3, 4, 2],
        [3, 2, 4, 3, 1],
        [3, 3, 1, 2, 4],
        [3, 4, 2, 1, 3],
        [4, 1, 4, 2, 3],
        [4, 2, 3, 1, 4],
        [4, 3, 2, 4, 1],
        [4, 4, 1, 3, 2],
    ],
    "L18": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 2, 2, 2, 2, 2, 2],
        [1, 1, 3, 3, 3, 3, 3, 3],
        [1, 2, 1, 1, 2, 2, 3, 3],
        [1, 2, 2, 2, 3, 3, 1, 1],
        [1, 2, 3, 3, 1, 1, 2, 2],
        [1, 3, 1, 2, 1, 3, 2, 3],
        [1, 3, 2, 3, 2, 1, 3, 1],
        [1, 3, 3, 1, 3, 2, 1, 2],
        [2, 1, 1, 3, 3, 2, 2, 1],
        [2, 1, 2, 1, 1, 3, 3, 2],
        [2, 1, 3, 2, 2, 1, 1, 3],
        [2, 2, 1, 2, 3, 1, 3, 2],
        [2, 2, 2, 3, 1, 2, 1, 3],
        [2, 2, 3, 1, 2, 3, 2, 1],
        [2, 3, 1, 3, 2, 3, 1, 2],
        [2, 3, 2, 1, 3, 1, 2, 3],
        [2, 3, 3, 2, 1, 2, 3, 1],
    ],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_array_shape_levels_balance_and_strength(name: str) -> None:
    runs, levels = EXPECTED[name]
    oa = array(name)
    assert oa.name == name
    assert oa.table.shape == (runs, len(levels))
    assert (oa.runs, oa.columns, oa.levels) == (runs, len(levels), levels)
    assert np.issubdtype(oa.table.dtype, np.integer)
    assert is_balanced(oa.table)
    assert has_strength_2(oa.table)
    assert not oa.table[0].any()  # first run all at level 0


def test_registry_names() -> None:
    assert list(ARRAYS) == list(EXPECTED)
    assert array("L16(4^5)") is array("L16b")
    assert array("l18(2^1 3^7)") is array("L18")
    assert array("L16b").notation == "L16(4^5)"
    assert array("L18").notation == "L18(2^1 3^7)"


@pytest.mark.parametrize("name", list(STANDARD))
def test_constructions_reproduce_the_published_tables(name: str) -> None:
    np.testing.assert_array_equal(array(name).table + 1, np.array(STANDARD[name]))


def test_l12_is_plackett_burman() -> None:
    table = array("L12").table
    assert not table[0].any()
    generator = np.array([1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0])
    for shift in range(11):
        np.testing.assert_array_equal(table[1 + shift], np.roll(generator, shift))


def test_rao_hamming_column_count() -> None:
    for q, k in [(2, 2), (2, 6), (3, 2), (3, 4), (4, 3), (5, 3)]:
        table = rao_hamming(q, k)
        assert table.shape == (q**k, (q**k - 1) // (q - 1))
        assert has_strength_2(table)


def test_arrays_are_read_only() -> None:
    with pytest.raises(ValueError):
        array("L8").table[0, 0] = 1


def test_broken_arrays_are_detected() -> None:
    table = array("L8").table
    duplicated = np.vstack([table, table[:1]])
    assert not has_strength_2(duplicated)
    assert not is_balanced(duplicated)
    # balanced columns, but two of them equal: pairs (0, 1) and (1, 0) never occur
    copied = np.column_stack([table, table[:, 0]])
    assert is_balanced(copied)
    assert not has_strength_2(copied)


def test_invalid_tables_are_rejected() -> None:
    with pytest.raises(ApoptosisError, match="levels 0..s-1"):
        OrthogonalArray("bad", np.array([[0, 0], [2, 1]]))
    with pytest.raises(ApoptosisError, match="2-D"):
        OrthogonalArray("bad", np.array([0, 1]))


@pytest.mark.parametrize("q", [2, 3, 4, 5])
def test_galois_fields_are_fields(q: int) -> None:
    field = galois_field(q)
    add, mul = field.add, field.mul
    elements = range(q)
    for a in elements:
        assert add[a, 0] == a and mul[a, 1] == a and mul[a, 0] == 0
        assert sum(add[a, b] == 0 for b in elements) == 1  # additive inverse
        if a:
            assert sum(mul[a, b] == 1 for b in elements) == 1  # multiplicative inverse
    for a, b in product(elements, repeat=2):
        assert add[a, b] == add[b, a] and mul[a, b] == mul[b, a]
    for a, b, c in product(elements, repeat=3):
        assert add[add[a, b], c] == add[a, add[b, c]]
        assert mul[mul[a, b], c] == mul[a, mul[b, c]]
        assert mul[a, add[b, c]] == add[mul[a, b], mul[a, c]]


def test_gf4_is_not_integers_mod_4() -> None:
    mul = galois_field(4).mul
    a, a1 = 2, 3  # a and a + 1
    assert mul[a, a] == a1  # a^2 = a + 1
    assert mul[a, a1] == 1
    assert mul[a1, a1] == a


def test_unsupported_field() -> None:
    with pytest.raises(ApoptosisError, match="GF\\(6\\)"):
        galois_field(6)


@pytest.mark.parametrize(
    ("levels", "name"),
    [
        ([2] * 2, "L4"),
        ([2] * 3, "L4"),
        ([2] * 4, "L8"),
        ([2] * 7, "L8"),
        ([2] * 8, "L12"),
        ([2] * 11, "L12"),
        ([2] * 12, "L16"),
        ([2] * 15, "L16"),
        ([2] * 16, "L32"),
        ([2] * 31, "L32"),
        ([3], "L9"),
        ([3] * 4, "L9"),
        ([3] * 5, "L18"),
        ([3] * 7, "L18"),
        ([3] * 8, "L27"),
        ([3] * 13, "L27"),
        ([2, 3], "L18"),
        ([3, 3, 2, 3, 3, 3, 3, 3], "L18"),
        ([4], "L16b"),
        ([4] * 5, "L16b"),
        ([5] * 6, "L25"),
    ],
)
def test_assign_picks_the_smallest_array(levels: list[int], name: str) -> None:
    oa, columns = assign(levels)
    assert oa.name == name
    assert len(set(columns)) == len(columns) == len(levels)
    assert [oa.levels[j] for j in columns] == levels


def test_assign_with_a_name() -> None:
    oa, columns = assign([2, 2, 2], name="L8")
    assert oa.name == "L8" and columns == [0, 1, 2]
    oa, columns = assign([3, 2], name="L18")
    assert columns == [1, 0]
    oa, columns = assign([4, 4], name="L16(4^5)")
    assert oa.name == "L16b"


def test_design_is_the_assigned_columns() -> None:
    oa, matrix = design([3, 2, 3])
    assert oa.name == "L18"
    np.testing.assert_array_equal(matrix, oa.table[:, [1, 0, 2]])
    assert matrix.shape == (18, 3)
    assert is_balanced(matrix) and has_strength_2(matrix)
    matrix[0, 0] = 2  # a copy, the cached array is untouched
    assert array("L18").table[0, 1] == 0


def test_assign_errors() -> None:
    with pytest.raises(ApoptosisError, match="factor 1 has 6 levels; supported level counts are 2, 3, 4, 5"):
        assign([2, 6])
    with pytest.raises(ApoptosisError, match="factor 0 has 1 level; a factor needs at least 2"):
        assign([1, 2])
    with pytest.raises(ApoptosisError, match="no factors"):
        assign([])
    with pytest.raises(ApoptosisError, match="unknown orthogonal array 'L7'; known: L4, L8, L9, L12, L16, L16b"):
        assign([2], name="L7")
    with pytest.raises(ApoptosisError, match="unknown orthogonal array"):
        array("L64")
    with pytest.raises(
        ApoptosisError,
        match="L8 has 7 two-level columns and no three-level column; the factors need 3 two-level columns and 1 three",
    ):
        assign([2, 2, 2, 3], name="L8")
    with pytest.raises(ApoptosisError, match="L4 has 3 two-level columns; the factors need 4 two-level columns"):
        design([2] * 4, name="L4")
    with pytest.raises(ApoptosisError, match="no orthogonal array has 32 two-level columns; supported arrays: L4"):
        assign([2] * 32)
    with pytest.raises(ApoptosisError, match="no orthogonal array has 2 two-level columns and 1 three-level column"):
        assign([2, 2, 3])
    with pytest.raises(ApoptosisError, match="no orthogonal array has 1 two-level column and 1 four-level column"):
        assign([2, 4])
