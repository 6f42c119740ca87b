"""CUDA kernels of the in-place optimizer updates (CPU twin: :mod:`meprop_numba._cpu.optim`).

One thread per element of the touched rows: a dense gradient, a lazy
row-sparse one (only its rows), or a row-sparse one applied to every row
(``lazy=False``), each row finding its gradient row by binary search in the
sorted ``rows`` (absent rows see a zero gradient).

The rows of a row-sparse gradient are checked on the device before any
write (sorted, distinct, inside the parameter): a repeat would race, an
unsorted list would be missed by the binary search, and a row outside the
parameter would write out of bounds.
"""
import math

import numpy as np

from .device import (MAX_GRID_ROWS, _as_2d, _cols_grid, _rows_grid, as_device, cuda, empty, launch_1d, launch_nonfinite,
                     launch_stream, raise_if_nonfinite, read_status, require_cuda, zeros)

_KERNELS = {}


def _kernels():
    """Build (once) the update kernels."""
    if "optim" in _KERNELS:
        return _KERNELS["optim"]

    @cuda.jit
    def check_rows(rows, nrows, status):
        # status[1] = 1 if a row lies outside [0, nrows); status[2] = 1 unless rows increase strictly.
        start = cuda.grid(1)
        for t in range(start, rows.shape[0], cuda.gridsize(1)):
            r = rows[t]
            if r < 0 or r >= nrows:
                status[1] = 1
            if t > 0 and rows[t - 1] >= r:
                status[2] = 1

    @cuda.jit(device=True)
    def gradient_row(mode, r, rows):
        # Map launch row r to (parameter row, gradient row); gradient row -1 means a zero gradient.
        # mode 0: dense gradient; 1: lazy, r walks the listed rows; 2: every row, looked up in rows.
        if mode == 0:
            return r, r
        if mode == 1:
            return rows[r], r
        lo = 0
        hi = rows.shape[0]
        while lo < hi:
            mid = (lo + hi) // 2
            if rows[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        if lo < rows.shape[0] and rows[lo] == r:
            return r, lo
        return r, -1

    @cuda.jit
    def sgd_update(param, grad, rows, n_launch_rows, mode, velocity, use_momentum, lr, momentum, zero):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= param.shape[1]:
            return
        for r in range(cuda.blockIdx.y, n_launch_rows, cuda.gridDim.y):
            prow, grow = gradient_row(mode, r, rows)
            gv = grad[grow, c] if grow >= 0 else zero
            if use_momentum:
                v = momentum * velocity[prow, c] + gv
                velocity[prow, c] = v
                param[prow, c] -= lr * v
            elif grow >= 0:
                param[prow, c] -= lr * gv

    @cuda.jit
    def adam_update(param, grad, rows, n_launch_rows, mode, m, v, step_size, b1, b2, one_minus_b1, one_minus_b2, eps_hat, zero):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= param.shape[1]:
            return
        for r in range(cuda.blockIdx.y, n_launch_rows, cuda.gridDim.y):
            prow, grow = gradient_row(mode, r, rows)
            gv = grad[grow, c] if grow >= 0 else zero
            mv = b1 * m[prow, c] + one_minus_b1 * gv
            vv = b2 * v[prow, c] + one_minus_b2 * gv * gv
            m[prow, c] = mv
            v[prow, c] = vv
            param[prow, c] -= step_size * mv / (math.sqrt(vv) + eps_hat)

    @cuda.jit
    def adagrad_update(param, grad, rows, n_launch_rows, mode, accum, lr, eps):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= param.shape[1]:
            return
        for r in range(cuda.blockIdx.y, n_launch_rows, cuda.gridDim.y):
            prow, grow = gradient_row(mode, r, rows)
            if grow >= 0:  # a zero gradient changes neither the sum nor the weight
                gv = grad[grow, c]
                a = accum[prow, c] + gv * gv
                accum[prow, c] = a
                param[prow, c] -= lr * gv / (math.sqrt(a) + eps)

    ns = dict(locals())
    _KERNELS["optim"] = ns
    return ns


def _update_plan(param, grad, lazy, workspace=None):
    """Return (param2d, grad2d, rows, n_launch_rows, mode) for an update kernel."""
    param = as_device(param, "param")
    p2 = _as_2d(param)
    if isinstance(grad, tuple):
        rows = as_device(grad[0], "rows")
        values = _as_2d(as_device(grad[1], "values"))
        if rows.ndim != 1 or np.dtype(rows.dtype).kind not in "iu":
            raise TypeError(f"rows must be a 1-D integer array, got {rows.ndim}-D {rows.dtype}")
        if values.shape[0] != rows.shape[0] or values.shape[1] != p2.shape[1]:
            raise ValueError(f"values must have shape ({rows.shape[0]}, {p2.shape[1]}), got {tuple(values.shape)}")
        if lazy:
            return p2, values, rows, rows.shape[0], 1
        return p2, values, rows, p2.shape[0], 2
    grad = _as_2d(as_device(grad, "grad"))
    # Dense mode never reads `rows`: an empty array (no device memory, nothing cached per context).
    return p2, grad, empty(0, np.int64, 0, workspace, "update.no_rows"), p2.shape[0], 0


def _grad_values(grad):
    return grad[1] if isinstance(grad, tuple) else grad


def check_gradient(grad, nrows, name="grad", finite=True, stream=None, workspace=None):
    """Check a gradient on the device before an update; one small transfer back.

    Parameters
    ----------
    grad : CUDA array or tuple (rows, values)
        A dense gradient or a row-sparse one.
    nrows : int
        Rows of the parameter.
    name : str
        Used in the messages.
    finite : bool
        Also check the values for NaN/Inf.
    stream : optional
        Default: the gradient's stream.
    workspace : Workspace, optional
        Where the device status flags come from.

    Raises
    ------
    ValueError
        NaN/Inf in the values, or rows not sorted and distinct.
    IndexError
        A row outside ``[0, nrows)``.
    """
    require_cuda()
    values = _grad_values(grad)
    s = launch_stream([values], stream)
    _check(grad, nrows, name, finite, s, workspace)


def _check(grad, nrows, name, finite, stream, workspace=None):
    rows = as_device(grad[0], "rows") if isinstance(grad, tuple) else None
    if not finite and (rows is None or rows.shape[0] == 0):
        return
    status = zeros(3, np.int64, stream, workspace, "gradient.status")
    if finite:
        launch_nonfinite(as_device(_grad_values(grad), name), status, 0, stream)
    if rows is not None and rows.shape[0]:
        launch_1d(_kernels()["check_rows"], lambda tpb: min(_cols_grid(rows.shape[0], tpb), int(MAX_GRID_ROWS)),
                  (rows, nrows, status), stream)
    host = read_status(status, stream)
    raise_if_nonfinite(host, name)
    if host[1]:
        raise IndexError(f"{name}.rows holds a row outside [0, {nrows})")
    if host[2]:
        raise ValueError(f"{name}.rows must be sorted in increasing order without repeats")


def _prepare(param, grad, lazy, check, check_rows, stream, workspace):
    """Stream, launch plan and the device checks of one update, before anything is written."""
    require_cuda()
    s = launch_stream([param, _grad_values(grad)], stream)
    plan = _update_plan(param, grad, lazy, workspace)
    if isinstance(grad, tuple) and check_rows:
        grad = (plan[2], grad[1])
    else:
        grad = _grad_values(grad)
    _check(grad, plan[0].shape[0], "grad", check, s, workspace)
    return s, plan


def _launch_update(name, p2, n_launch_rows, args, stream):
    if n_launch_rows == 0 or p2.shape[1] == 0:
        return
    launch_1d(_kernels()[name], lambda tpb: (_cols_grid(p2.shape[1], tpb), _rows_grid(n_launch_rows)), args, stream)


def sgd_step(param, grad, velocity, lr, momentum, lazy, check=True, stream=None, workspace=None, check_rows=True):
    """In-place SGD step ``v = momentum v + g; p -= lr v`` (``p -= lr g`` without momentum).

    Parameters
    ----------
    param : CUDA array
        Parameter, updated in place.
    grad : CUDA array or tuple (rows, values)
        Dense gradient of `param`'s shape, or a row-sparse one (2-D params).
    velocity : CUDA array or None
        Momentum buffer of `param`'s shape (from :func:`zeros_like`); None
        or ``momentum == 0`` for plain SGD.
    lr, momentum : float
        Cast to `param`'s dtype.
    lazy : bool
        Row-sparse gradient: update only its rows (True) or every row,
        decaying the velocity of the others (False).
    check : bool
        Check the gradient for NaN/Inf on the device first (skip when the
        caller already did).
    stream : optional
        Stream for the kernels; default the parameter's.
    workspace : Workspace, optional
        Where the device status flags of the checks come from.
    check_rows : bool
        Check the rows of a row-sparse gradient (sorted, distinct, inside
        the parameter) first; False only when the caller just did, as the
        optimizers do for the whole step before any update.

    Raises
    ------
    ValueError
        If the gradient holds NaN or Inf, or its rows are not sorted and
        distinct (nothing is modified).
    IndexError
        If a row lies outside the parameter (nothing is modified).
    """
    s, (p2, g2, rows, n_launch, mode) = _prepare(param, grad, lazy, check, check_rows, stream, workspace)
    t = p2.dtype.type
    use_momentum = velocity is not None and momentum != 0
    v2 = _as_2d(as_device(velocity, "velocity")) if use_momentum else p2
    args = (p2, g2, rows, n_launch, mode, v2, use_momentum, t(lr), t(momentum), t(0))
    _launch_update("sgd_update", p2, n_launch, args, s)


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, lazy, check=True, stream=None, workspace=None, check_rows=True):
    """In-place bias-corrected Adam step (lazy: only the gradient's rows).

    ``m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps sqrt(1-b2^t))``,
    the form of :class:`meprop_numba.Adam` (equal to the textbook one).

    Parameters
    ----------
    param : CUDA array
        Parameter, updated in place.
    grad : CUDA array or tuple (rows, values)
        Dense gradient, or a row-sparse one for a 2-D parameter.
    m, v : CUDA arrays
        Moment buffers of `param`'s shape (from :func:`zeros_like`).
    step : int
        1-based index t of this update (the global step count).
    lr, beta1, beta2, eps : float
        Hyper-parameters, cast to `param`'s dtype.
    lazy : bool
        Row-sparse gradient: update only its rows (True) or every row, the
        others with a zero gradient (False).
    check : bool
        Check the gradient for NaN/Inf on the device first.  The rows of a
        row-sparse gradient are checked unless `check_rows` is False.
    stream : optional
        Stream for the kernels; default the parameter's.
    workspace : Workspace, optional
        Where the device status flags of the checks come from.
    check_rows : bool
        Check the rows of a row-sparse gradient (sorted, distinct, inside
        the parameter) first; False only when the caller just did, as the
        optimizers do for the whole step before any update.

    Raises
    ------
    ValueError
        If the gradient holds NaN or Inf, or its rows are not sorted and
        distinct (nothing is modified).
    IndexError
        If a row lies outside the parameter (nothing is modified).
    """
    s, (p2, g2, rows, n_launch, mode) = _prepare(param, grad, lazy, check, check_rows, stream, workspace)
    t = p2.dtype.type
    c2 = math.sqrt(1.0 - beta2**step)
    step_size = lr * c2 / (1.0 - beta1**step)
    m2 = _as_2d(as_device(m, "m"))
    v2 = _as_2d(as_device(v, "v"))
    b1, b2 = t(beta1), t(beta2)
    args = (p2, g2, rows, n_launch, mode, m2, v2, t(step_size), b1, b2, t(1) - b1, t(1) - b2, t(eps * c2), t(0))
    _launch_update("adam_update", p2, n_launch, args, s)


def adagrad_step(param, grad, accum, lr, eps, lazy, check=True, stream=None, workspace=None, check_rows=True):
    """In-place AdaGrad step ``a += g^2; p -= lr g / (sqrt(a) + eps)``.

    A zero gradient changes neither `accum` nor `param`, so ``lazy=False``
    with a row-sparse gradient gives the lazy result at dense cost.

    Parameters
    ----------
    param : CUDA array
        Parameter, updated in place.
    grad : CUDA array or tuple (rows, values)
        Dense gradient, or a row-sparse one for a 2-D parameter.
    accum : CUDA array
        Sum of squared gradients, `param`'s shape (from :func:`zeros_like`).
    lr, eps : float
        Cast to `param`'s dtype.
    lazy : bool
        Row-sparse gradient: launch over its rows only (True) or all rows.
    check : bool
        Check the gradient for NaN/Inf on the device first.  The rows of a
        row-sparse gradient are checked unless `check_rows` is False.
    stream : optional
        Stream for the kernels; default the parameter's.
    workspace : Workspace, optional
        Where the device status flags of the checks come from.
    check_rows : bool
        Check the rows of a row-sparse gradient (sorted, distinct, inside
        the parameter) first; False only when the caller just did, as the
        optimizers do for the whole step before any update.

    Raises
    ------
    ValueError
        If the gradient holds NaN or Inf, or its rows are not sorted and
        distinct (nothing is modified).
    IndexError
        If a row lies outside the parameter (nothing is modified).
    """
    s, (p2, g2, rows, n_launch, mode) = _prepare(param, grad, lazy, check, check_rows, stream, workspace)
    t = p2.dtype.type
    a2 = _as_2d(as_device(accum, "accum"))
    _launch_update("adagrad_update", p2, n_launch, (p2, g2, rows, n_launch, mode, a2, t(lr), t(eps)), s)
