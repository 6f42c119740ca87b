"""Compiled in-place optimizer updates.

``*_flat`` kernels update every element of a contiguous parameter from a
dense gradient of the same size (both passed as 1-D views); ``*_rows``
kernels update only the rows of a 2-D parameter listed in a row-sparse
gradient.  Scalars arrive already cast to the parameter's dtype, so float32
parameters are updated in float32 arithmetic.

Decaying state (momentum velocity, Adam's moments) is flushed to zero once
it falls below `tiny`, the dtype's smallest normal number: moments of
weights whose gradient stays zero otherwise decay into subnormal floats,
and arithmetic on those is ~100x slower on x86 (measured: a dense Adam step
of a 784-500-500-10 MLP went from 0.35 ms to 30 ms after ~800 steps).  The
change to any value is below ``tiny`` (1.2e-38 in float32).
"""
import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

from .._config import JIT_OPTIONS

#: The bias-corrected Adam scalars are computed without fast-math flags, so
#: that they round as the same float64 expressions do in Python.
_EXACT_OPTIONS = dict(JIT_OPTIONS, fastmath=False)


@njit(**JIT_OPTIONS)
def check_rows(rows, nrows):
    """0 if `rows` increase strictly within ``[0, nrows)``; 1 if one lies outside; 2 if unordered or repeated.

    The CPU twin of the CUDA ``check_rows`` kernel, run before a row update:
    the bounds are those of every entry, whatever their order.
    """
    status = 0
    for t in range(rows.shape[0]):
        r = rows[t]
        if r < 0 or r >= nrows:
            return 1
        if t > 0 and rows[t - 1] >= r:
            status = 2
    return status


@njit(**JIT_OPTIONS)
def sgd_flat(p, g, lr):
    for t in range(p.shape[0]):
        p[t] -= lr * g[t]


@njit(**JIT_OPTIONS)
def sgd_rows(P, rows, values, lr):
    for j in range(rows.shape[0]):
        r = rows[j]
        for t in range(P.shape[1]):
            P[r, t] -= lr * values[j, t]


@njit(**JIT_OPTIONS)
def _flush(a, tiny):
    """`a`, or zero if its magnitude is below `tiny` (a select, no branch)."""
    return a if abs(a) >= tiny else a * 0


@njit(**JIT_OPTIONS)
def momentum_flat(p, vel, g, lr, mu, tiny):
    for t in range(p.shape[0]):
        vel[t] = _flush(mu * vel[t] + g[t], tiny)
        p[t] -= lr * vel[t]


@njit(**JIT_OPTIONS)
def momentum_rows(P, V, rows, values, lr, mu, tiny):
    for j in range(rows.shape[0]):
        r = rows[j]
        for t in range(P.shape[1]):
            V[r, t] = _flush(mu * V[r, t] + values[j, t], tiny)
            P[r, t] -= lr * V[r, t]


@njit(**JIT_OPTIONS)
def adam_flat(p, m, v, g, step_size, b1, b2, eps_hat, tiny):
    one = p.dtype.type(1)
    for t in range(p.shape[0]):
        m[t] = _flush(b1 * m[t] + (one - b1) * g[t], tiny)
        v[t] = _flush(b2 * v[t] + (one - b2) * g[t] * g[t], tiny)
        p[t] -= step_size * m[t] / (np.sqrt(v[t]) + eps_hat)


@njit(**JIT_OPTIONS)
def adam_rows(P, M, V, rows, values, step_size, b1, b2, eps_hat, tiny):
    one = P.dtype.type(1)
    for j in range(rows.shape[0]):
        r = rows[j]
        for t in range(P.shape[1]):
            gt = values[j, t]
            M[r, t] = _flush(b1 * M[r, t] + (one - b1) * gt, tiny)
            V[r, t] = _flush(b2 * V[r, t] + (one - b2) * gt * gt, tiny)
            P[r, t] -= step_size * M[r, t] / (np.sqrt(V[r, t]) + eps_hat)


@njit(**JIT_OPTIONS)
def adagrad_flat(p, acc, g, lr, eps):
    for t in range(p.shape[0]):
        acc[t] += g[t] * g[t]
        p[t] -= lr * g[t] / (np.sqrt(acc[t]) + eps)


@njit(**JIT_OPTIONS)
def adagrad_rows(P, A, rows, values, lr, eps):
    for j in range(rows.shape[0]):
        r = rows[j]
        for t in range(P.shape[1]):
            gt = values[j, t]
            A[r, t] += gt * gt
            P[r, t] -= lr * gt / (np.sqrt(A[r, t]) + eps)


@njit(**JIT_OPTIONS)
def count_nonfinite(a, big):
    """The number of NaN or +-Inf entries of the 1-D array `a`; `big` is its dtype's largest finite value.

    ``abs(x) <= big`` is false exactly for NaN and +-Inf (the kernels' fast-math
    flags keep NaN/Inf semantics), and the count vectorises.
    """
    bad = 0
    for t in range(a.shape[0]):
        bad += not abs(a[t]) <= big
    return bad


@njit(**JIT_OPTIONS)
def row_gradient_status(rows, nrows, values, big):
    """:func:`check_rows` of `rows`, then, if they are in order, 3 where `values` holds NaN or +-Inf.

    `values` is 2-D and C-contiguous (read as one flat array by
    :func:`count_nonfinite`). One call for the checks a row update needs
    before it changes anything:
    0 valid; 1 a row outside ``[0, nrows)``; 2 unordered or repeated rows (the
    values are not looked at: they are summed before being checked); 3 a
    NaN or +-Inf value.
    """
    status = check_rows(rows, nrows)
    if status != 0:
        return status
    return 3 if count_nonfinite(values.reshape(-1), big) else 0


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 `address` as a pointer to elements of `like`'s dtype (an array or a number class)."""
    dtype = like.dtype if isinstance(like, types.Array) else like.instance_type
    pointer = types.CPointer(dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


#: Columns of the table :func:`adam_table` takes, one row per parameter.
(TABLE_KIND, TABLE_NROWS, TABLE_WIDTH, TABLE_COUNT, TABLE_PARAM, TABLE_EXP_AVG, TABLE_EXP_AVG_SQ, TABLE_STEP,
 TABLE_VALUES, TABLE_ROWS, TABLE_GROUP) = range(11)


@njit(**_EXACT_OPTIONS)
def adam_scalars(lr, b1, b2, eps, t):
    """``(step_size, eps_hat)`` of Adam's t-th step in float64, as the Python step computes them."""
    c2 = np.sqrt(1.0 - b2 ** t)
    return lr * c2 / (1.0 - b1 ** t), eps * c2


@njit(**_EXACT_OPTIONS)
def advance_step(step):
    """Add 1 to the float32 step count `step[0]` (stored as float32) and return it as a float64."""
    step[0] = np.float32(np.float64(step[0]) + 1.0)
    return np.float64(step[0])


@njit(**JIT_OPTIONS)
def _table_entry_status(entry, like, big):
    """:func:`row_gradient_status` (rows) or :func:`count_nonfinite` (dense, 0 or 3) of one table row."""
    count = entry[TABLE_COUNT]
    if entry[TABLE_KIND] == 0:
        return 3 if count_nonfinite(carray(_pointer(entry[TABLE_VALUES], like), count), big) else 0
    width = entry[TABLE_WIDTH]
    rows = carray(_pointer(entry[TABLE_ROWS], np.int64), count)
    values = carray(_pointer(entry[TABLE_VALUES], like), (count, width))
    return row_gradient_status(rows, entry[TABLE_NROWS], values, big)


@njit(**JIT_OPTIONS)
def adam_table(table, hyper, like, big, tiny):
    """One Adam step of every parameter listed in `table`, all gradients checked before any change.

    `table` is int64 ``(n, 11)`` (columns ``TABLE_*``): per parameter its kind (0 a
    dense gradient of ``count`` elements, 1 a row-sparse one of ``count``
    rows of ``width``), its rows, width, the addresses of the contiguous
    parameter, ``exp_avg`` and ``exp_avg_sq`` (all of `like`'s dtype), of
    the float32 step count, of the gradient values and (row-sparse) of its
    int64 rows, and the index of its row of `hyper` (float64
    ``(lr, beta1, beta2, eps)``).  The caller keeps every addressed tensor
    alive and checked (shapes, dtypes, contiguity).  Returns 0 after the
    step, or ``1 + j`` when entry j's gradient fails :func:`row_gradient_status`
    (then nothing has changed).  Parameters are updated last entry first
    (their gradients were checked last, still in cache), each exactly as
    :func:`adam_rows` / :func:`adam_flat`.
    """
    n = table.shape[0]
    for j in range(n):
        if _table_entry_status(table[j], like, big):
            return j + 1
    cast = like.dtype.type
    for j in range(n - 1, -1, -1):
        entry = table[j]
        lr, b1, b2, eps = hyper[entry[TABLE_GROUP]]
        t = advance_step(carray(_pointer(entry[TABLE_STEP], np.float32), 1))
        step_size, eps_hat = adam_scalars(lr, b1, b2, eps, t)
        count, nrows, width = entry[TABLE_COUNT], entry[TABLE_NROWS], entry[TABLE_WIDTH]
        if entry[TABLE_KIND] == 0:
            adam_flat(carray(_pointer(entry[TABLE_PARAM], like), count),
                      carray(_pointer(entry[TABLE_EXP_AVG], like), count),
                      carray(_pointer(entry[TABLE_EXP_AVG_SQ], like), count),
                      carray(_pointer(entry[TABLE_VALUES], like), count),
                      cast(step_size), cast(b1), cast(b2), cast(eps_hat), tiny)
        else:
            adam_rows(carray(_pointer(entry[TABLE_PARAM], like), (nrows, width)),
                      carray(_pointer(entry[TABLE_EXP_AVG], like), (nrows, width)),
                      carray(_pointer(entry[TABLE_EXP_AVG_SQ], like), (nrows, width)),
                      carray(_pointer(entry[TABLE_ROWS], np.int64), count),
                      carray(_pointer(entry[TABLE_VALUES], like), (count, width)),
                      cast(step_size), cast(b1), cast(b2), cast(eps_hat), tiny)
    return 0
