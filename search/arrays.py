"""Taguchi orthogonal arrays, built from their algebraic constructions rather than copied tables.

Why: a hyperparameter search over a few factors of 2 to 5 levels each can estimate every main effect from a
handful of runs when the runs are the rows of an orthogonal array of strength 2 (every pair of columns shows
every pair of levels equally often). Building the arrays by construction (Galois fields, the Bose/Rao-Hamming
construction, a Plackett-Burman generator row, a difference scheme) keeps the module short, and the tests prove
balance and strength 2 for every array instead of trusting a transcription.

Levels are coded 0..s-1; row 0 of every array is all zeros.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import combinations

import numpy as np

from apoptosis.core.errors import ApoptosisError

__all__ = [
    "ALIASES",
    "ARRAYS",
    "GaloisField",
    "OrthogonalArray",
    "array",
    "assign",
    "design",
    "galois_field",
    "has_strength_2",
    "is_balanced",
    "rao_hamming",
]


# --- Galois fields -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GaloisField:
    """GF(q) as addition and multiplication tables over the elements 0..q-1, so arrays are built by indexing.

    For GF(4) the elements 0, 1, 2, 3 stand for 0, 1, a, a+1 with a^2 = a + 1.
    """

    order: int
    add: np.ndarray
    mul: np.ndarray


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _gf4_mul(x: int, y: int) -> int:
    """Product in GF(2)[a]/(a^2 + a + 1): bit 1 is the coefficient of a, bit 0 the constant."""
    product = 0
    for bit in range(2):
        if (y >> bit) & 1:
            product ^= x << bit
    if product & 0b100:  # a^2 = a + 1
        product ^= 0b111
    return product


@cache
def galois_field(q: int) -> GaloisField:
    """The field of order q, for q prime (arithmetic mod q) or q = 4 (polynomials mod a^2 + a + 1).

    Why only these: the Taguchi arrays need GF(2), GF(3), GF(4) and GF(5); GF(4) is not the integers mod 4
    (2 * 2 = 0 there), so it gets its own tables.
    """
    elements = np.arange(q)
    if _is_prime(q):
        add = (elements[:, None] + elements[None, :]) % q
        mul = (elements[:, None] * elements[None, :]) % q
    elif q == 4:
        add = elements[:, None] ^ elements[None, :]
        mul = np.array([[_gf4_mul(x, y) for y in range(q)] for x in range(q)])
    else:
        raise ApoptosisError(f"GF({q}) is not supported; supported orders are primes and 4")
    add.flags.writeable = False
    mul.flags.writeable = False
    return GaloisField(order=q, add=add, mul=mul)


# --- the arrays ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OrthogonalArray:
    """A named design: `table[run, column]` is the level (0..s-1) of that column in that run.

    The table is stored read-only so that the cached arrays returned by `array` cannot be changed by a caller.
    """

    name: str
    table: np.ndarray

    def __post_init__(self) -> None:
        table = np.array(self.table, copy=True)
        if table.ndim != 2 or table.size == 0 or not np.issubdtype(table.dtype, np.integer):
            raise ApoptosisError(f"{self.name}: an orthogonal array is a non-empty 2-D integer table")
        for j, column in enumerate(table.T):
            if not np.array_equal(np.unique(column), np.arange(int(column.max()) + 1)):
                raise ApoptosisError(f"{self.name}: column {j} does not use exactly the levels 0..s-1")
        table = table.astype(np.int64)
        table.flags.writeable = False
        object.__setattr__(self, "table", table)

    @property
    def runs(self) -> int:
        """Number of rows: the number of experiments the design costs."""
        return int(self.table.shape[0])

    @property
    def columns(self) -> int:
        """Number of columns: the most factors the design can hold."""
        return int(self.table.shape[1])

    @property
    def levels(self) -> tuple[int, ...]:
        """Level count of each column, in column order."""
        return tuple(int(column.max()) + 1 for column in self.table.T)

    @property
    def notation(self) -> str:
        """Taguchi notation such as "L18(2^1 3^7)", for messages."""
        counts = Counter(self.levels)
        return f"L{self.runs}(" + " ".join(f"{s}^{counts[s]}" for s in sorted(counts)) + ")"


def rao_hamming(q: int, k: int) -> np.ndarray:
    """The Bose/Rao-Hamming array over GF(q): q^k runs, (q^k - 1)/(q - 1) columns of q levels, strength 2.

    Why it works: the rows are all vectors x in GF(q)^k and each column is a linear form c.x; two forms that are
    not multiples of each other take every pair of values equally often, so one form per line through the origin
    (coefficients normalised) gives the most columns.

    Column order follows the published Taguchi tables (L4, L8, L16, L32, L9, L27, L16(4^5), L25 come out exactly
    as printed): base variable 0 varies slowest over the rows; a coefficient vector c is read as the number
    sum(c[i] * q**i), columns are taken in increasing order of that number, and each is normalised so that its
    last nonzero coefficient (that of the newest base variable) is 1. For two levels this is the familiar L8
    order 1=A, 2=B, 3=AB, 4=C, 5=AC, 6=BC, 7=ABC.
    """
    if k < 1:
        raise ApoptosisError(f"a Rao-Hamming array needs at least one base column, got k={k}")
    field = galois_field(q)
    runs = q**k
    # rows: the full factorial, base variable 0 the most significant digit (slowest)
    x = (np.arange(runs)[:, None] // q ** np.arange(k - 1, -1, -1)[None, :]) % q
    # columns: coefficient vectors in Taguchi order, last nonzero coefficient 1
    digits = (np.arange(1, runs)[:, None] // q ** np.arange(k)[None, :]) % q
    last_nonzero = np.array([row[np.flatnonzero(row)[-1]] for row in digits])
    coefficients = digits[last_nonzero == 1]
    table = np.zeros((runs, len(coefficients)), dtype=np.int64)
    for i in range(k):
        table = field.add[table, field.mul[x[:, i][:, None], coefficients[None, :, i]]]
    return table


def _bose(name: str, q: int, k: int) -> Callable[[], OrthogonalArray]:
    return lambda: OrthogonalArray(name, rao_hamming(q, k))


# Plackett-Burman generator for 12 runs; "+" is level 1, "-" level 0.
_PB12_GENERATOR = "++-+++---+-"


def _plackett_burman_12() -> OrthogonalArray:
    """L12(2^11): the all-minus run, then the 11 cyclic shifts (to the right) of the Plackett-Burman generator.

    Why this array: with 8 < n <= 11 two-level factors it costs 12 runs instead of L16's 16, and its interactions
    are spread thinly over all columns instead of aliased wholly with one. Its rows and columns are ordered
    differently from the printed Taguchi L12, which is the same design up to row and column permutations.
    """
    generator = np.array([1 if sign == "+" else 0 for sign in _PB12_GENERATOR])
    shifts = [np.roll(generator, shift) for shift in range(len(generator))]
    return OrthogonalArray("L12", np.vstack([np.zeros_like(generator), *shifts]))


# The difference scheme D(6, 6; 3) behind the standard L18: for any two columns, the entrywise differences over
# GF(3) take each value exactly twice. Rows are indexed by 3 * g + h, with g and h the first two columns of L18.
_L18_DIFFERENCE_SCHEME = (
    (0, 0, 0, 0, 0, 0),
    (0, 0, 1, 1, 2, 2),
    (0, 1, 0, 2, 1, 2),
    (0, 2, 2, 1, 1, 0),
    (0, 1, 2, 0, 2, 1),
    (0, 2, 1, 2, 0, 1),
)


def _l18() -> OrthogonalArray:
    """L18(2^1 3^7): the standard Taguchi table, built from a difference scheme.

    Why it works: expanding the 6x6 difference scheme D over GF(3) (row r of D plus x, for x = 0, 1, 2) gives 18 runs
    with a six-level column r and six three-level columns of strength 2; the six-level column is then split into
    a two-level column r // 3 and a three-level column r % 3, which are a full factorial of each other. With the
    rows of D in the order above, the result is the printed Taguchi L18, row for row.
    """
    scheme = np.array(_L18_DIFFERENCE_SCHEME)
    rows = []
    for r, scheme_row in enumerate(scheme):
        for x in range(3):
            rows.append([r // 3, r % 3, *((scheme_row + x) % 3)])
    return OrthogonalArray("L18", np.array(rows))


ARRAYS: dict[str, Callable[[], OrthogonalArray]] = {
    "L4": _bose("L4", 2, 2),
    "L8": _bose("L8", 2, 3),
    "L9": _bose("L9", 3, 2),
    "L12": _plackett_burman_12,
    "L16": _bose("L16", 2, 4),
    "L16b": _bose("L16b", 4, 2),
    "L18": _l18,
    "L25": _bose("L25", 5, 2),
    "L27": _bose("L27", 3, 3),
    "L32": _bose("L32", 2, 5),
}
"""Builders of the supported arrays by short name, smallest first; "L16b" is L16(4^5)."""

ALIASES: dict[str, str] = {
    "L4(2^3)": "L4",
    "L8(2^7)": "L8",
    "L9(3^4)": "L9",
    "L12(2^11)": "L12",
    "L16(2^15)": "L16",
    "L16(4^5)": "L16b",
    "L18(2^1 3^7)": "L18",
    "L25(5^6)": "L25",
    "L27(3^13)": "L27",
    "L32(2^31)": "L32",
}
"""Full Taguchi notations accepted by `array` besides the short names."""

_LOOKUP = {short.upper(): short for short in ARRAYS} | {alias.upper(): short for alias, short in ALIASES.items()}


def array(name: str) -> OrthogonalArray:
    """The named array ("L8", "L16b", "L16(4^5)", ...; case does not matter), built once and cached."""
    short = _LOOKUP.get(name.strip().upper())
    if short is None:
        raise ApoptosisError(f"unknown orthogonal array {name!r}; known: {', '.join(ARRAYS)} (L16b is L16(4^5))")
    return _built(short)


@cache
def _built(short: str) -> OrthogonalArray:
    return ARRAYS[short]()


# --- properties ----------------------------------------------------------------------------------------------------


def is_balanced(table: np.ndarray) -> bool:
    """True when each column shows each of its levels equally often: every level is tried equally."""
    table = np.asarray(table)
    for column in table.T:
        _, counts = np.unique(column, return_counts=True)
        if np.any(counts != counts[0]):
            return False
    return True


def has_strength_2(table: np.ndarray) -> bool:
    """True when every pair of columns shows every pair of their levels equally often.

    Why it matters: this is what lets a main effect be estimated free of the other main effects. With fewer than
    two columns it reduces to balance.
    """
    table = np.asarray(table)
    if table.ndim != 2 or table.shape[1] < 2:
        return is_balanced(table)
    codes = []
    for column in table.T:
        values, inverse = np.unique(column, return_inverse=True)
        codes.append((inverse.reshape(-1), len(values)))
    for (a, sa), (b, sb) in combinations(codes, 2):
        counts = np.bincount(a * sb + b, minlength=sa * sb)
        if np.any(counts != counts[0]):
            return False
    return True


# --- assigning factors to columns -----------------------------------------------------------------------------------

_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def _count_phrase(n: int, levels: int) -> str:
    word = _WORDS.get(levels, str(levels))
    if n == 0:
        return f"no {word}-level column"
    return f"{n} {word}-level column" + ("" if n == 1 else "s")


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _check_factors(levels_per_factor: Sequence[int]) -> Counter[int]:
    if len(levels_per_factor) == 0:
        raise ApoptosisError("no factors given; a design needs at least one factor")
    supported = sorted({s for short in ARRAYS for s in _built(short).levels})
    for i, n in enumerate(levels_per_factor):
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise ApoptosisError(f"factor {i} has level count {n!r}; level counts are integers")
        if n < 2:
            raise ApoptosisError(f"factor {i} has {n} level{'' if n == 1 else 's'}; a factor needs at least 2 levels")
        if n not in supported:
            raise ApoptosisError(
                f"factor {i} has {n} levels; supported level counts are {', '.join(map(str, supported))} "
                "(exact arrays only, no dummy levels or merged columns)"
            )
    return Counter(int(n) for n in levels_per_factor)


def _fits(oa: OrthogonalArray, need: Counter[int]) -> bool:
    have = Counter(oa.levels)
    return all(have[s] >= n for s, n in need.items())


def assign(levels_per_factor: list[int], name: str | None = None) -> tuple[OrthogonalArray, list[int]]:
    """Pick an array for factors with these level counts and give each factor its own column.

    Without `name`, the array with the fewest runs that has enough columns of exactly each needed level count
    (ties: fewer columns, then the order of `ARRAYS`). With `name`, that array, or an error saying why it does
    not fit. Factor i gets the lowest-numbered unused column with its level count. Main effects are then clear
    of each other; they are clear of interactions only when those are negligible (the usual premise).

    Deliberately exact: no dummy levels (a 3-level factor in a 4-level column) and no merged columns (two
    2-level columns for a 4-level factor), so every design returned is balanced with strength 2 as given.
    """
    need = _check_factors(levels_per_factor)
    need_phrase = _join([_count_phrase(n, s) for s, n in sorted(need.items())])
    if name is not None:
        oa = array(name)
        if not _fits(oa, need):
            have = Counter(oa.levels)
            have_parts = [_count_phrase(have[s], s) for s in sorted(have)]
            have_parts += [_count_phrase(0, s) for s in sorted(need) if s not in have]
            raise ApoptosisError(f"{oa.name} has {_join(have_parts)}; the factors need {need_phrase}")
    else:
        order = list(ARRAYS)
        candidates = [_built(short) for short in order if _fits(_built(short), need)]
        if not candidates:
            supported = ", ".join(_built(short).notation for short in order)
            raise ApoptosisError(f"no orthogonal array has {need_phrase}; supported arrays: {supported}")
        oa = min(candidates, key=lambda a: (a.runs, a.columns, order.index(a.name)))
    free = {s: [j for j, level in enumerate(oa.levels) if level == s] for s in need}
    return oa, [free[int(n)].pop(0) for n in levels_per_factor]


def design(levels_per_factor: list[int], name: str | None = None) -> tuple[OrthogonalArray, np.ndarray]:
    """The runs x factors matrix of level indices (0..s-1) for these factors, and the array it came from.

    Row i is the setting of every factor in experiment i; see `assign` for how the array and columns are chosen.
    """
    oa, columns = assign(levels_per_factor, name)
    return oa, oa.table[:, columns].copy()
