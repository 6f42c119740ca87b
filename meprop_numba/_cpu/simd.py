"""Vector intrinsics for the compiled CPU kernels: compares to bit masks, row-tile sums.

LLVM does not turn a loop that builds a bit mask from element-wise compares
into the vector compare and mask move the CPU has for it (on AVX-512 one
``vpcmpd`` and ``kmov`` per 16 int32). These intrinsics write that IR
directly: one vector load of a fixed number of lanes, the compare against a
broadcast scalar, and the ``<lanes x i1>`` result read as an integer, bit c
for lane c. LLVM lowers them on any x86-64 or ARM target (narrower vectors
where AVX-512 is absent).

A sum of gathered rows (the sparse backward's ``dx[b] = sum_i g[b, i] W[i]``)
vectorises under LLVM only along the row, with each partial sum stored and
reloaded per source row; the loop vectorizer, given the sum over sources as
the inner loop, gathers along it instead. :func:`_row_tile_sum` writes the
loop over sources with its partial sums held in vector registers for a tile
of one to four 64-byte vectors of the row, so each gathered vector is one
load and one fused multiply-add.

The loads are unchecked: ``a[start:start + lanes]`` must lie inside `a`.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["masked_ge_mask64", "int_gt_mask64", "int_eq_mask64", "int_gt_mask32",
           "int_eq_mask32", "popcount", "lowest_bit", "row_tile_sum4", "row_tile_sum1",
           "row_tile_add4", "row_tile_add1"]

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _load_lanes(context, builder, arrty, arr, start, lanes):
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [start])
    vty = ir.VectorType(context.get_data_type(arrty.dtype), lanes)
    return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=arrty.dtype.bitwidth // 8)


def _broadcast(builder, value, lanes):
    vty = ir.VectorType(value.type, lanes)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, _I32(0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


_INTS = (types.int32, types.int64)


def _compare_mask(lanes, op, masked):
    """An intrinsic whose uint64 result has bit c (c < lanes) set where lane c compares true.

    ``(a, start, x)``: ``a[start + c] op x``, a signed compare; `a` a 1-D
    int32/int64 array (the kernels' magnitude bits), `x` an integer,
    truncated to its dtype (it must fit). With `masked`, ``(a, start, m,
    x)``: ``(a[start + c] & m) op x``.
    """

    def check(a, start, scalars):
        return (isinstance(a, types.Array) and a.ndim == 1 and a.dtype in _INTS
                and isinstance(start, types.Integer)
                and all(isinstance(s, types.Integer) for s in scalars))

    def codegen(context, builder, signature, args):
        arrty, startty = signature.args[:2]
        start_ = context.cast(builder, args[1], startty, types.intp)
        v = _load_lanes(context, builder, arrty, args[0], start_, lanes)
        scalars = [context.cast(builder, value, ty, arrty.dtype)
                   for value, ty in zip(args[2:], signature.args[2:])]
        if masked:
            v = builder.and_(v, _broadcast(builder, scalars[0], lanes))
        cmp = builder.icmp_signed(op, v, _broadcast(builder, scalars[-1], lanes))
        bits = builder.bitcast(cmp, ir.IntType(lanes))
        return bits if lanes == 64 else builder.zext(bits, _I64)

    if masked:
        def typer(typingctx, a, start, m, x):
            return (types.uint64(a, start, m, x), codegen) if check(a, start, (m, x)) else None
    else:
        def typer(typingctx, a, start, x):
            return (types.uint64(a, start, x), codegen) if check(a, start, (x,)) else None

    return intrinsic(typer)


masked_ge_mask64 = _compare_mask(64, ">=", True)
masked_ge_mask64.__doc__ = "Bit c of the uint64 result: ``(a[start + c] & m) >= x``, c < 64."
int_gt_mask64 = _compare_mask(64, ">", False)
int_gt_mask64.__doc__ = "Bit c of the uint64 result: ``a[start + c] > x``, c < 64."
int_eq_mask64 = _compare_mask(64, "==", False)
int_eq_mask64.__doc__ = "Bit c of the uint64 result: ``a[start + c] == x``, c < 64."
int_gt_mask32 = _compare_mask(32, ">", False)
int_gt_mask32.__doc__ = "Bit c of the uint64 result: ``a[start + c] > x``, c < 32."
int_eq_mask32 = _compare_mask(32, "==", False)
int_eq_mask32.__doc__ = "Bit c of the uint64 result: ``a[start + c] == x``, c < 32."


def _bit_count(name, extra):
    def typer(typingctx, x):
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = context.cast(builder, args[0], signature.args[0], types.uint64)
            fnty = ir.FunctionType(_I64, [_I64] + [a.type for a in extra])
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            return builder.call(fn, [v] + extra)

        return types.int64(x), codegen

    return intrinsic(typer)


popcount = _bit_count("llvm.ctpop.i64", [])
popcount.__doc__ = "Number of set bits of an integer's 64-bit pattern, as int64."
# cttz with "zero is poison" false: defined (64) for x == 0.
lowest_bit = _bit_count("llvm.cttz.i64", [ir.Constant(ir.IntType(1), 0)])
lowest_bit.__doc__ = "Index of the lowest set bit of an integer's 64-bit pattern (64 for 0), as int64."


def _row_tile_sum(vectors, add):
    """An intrinsic ``(out, r, c0, src, which, coef, start, end)`` that sets one tile of an output row.

    ``out[r, c0:c0 + w] = sum over e in [start, end) of coef[e] * src[which[e], c0:c0 + w]``
    (with `add`, ``+=``: the sum starts from the tile's values, so a sum
    split into consecutive ranges of e rounds exactly as in one call)
    with ``w = vectors * lanes`` columns, ``lanes = 64 // itemsize`` (one
    64-byte vector: 16 float32 or 8 float64). The sum runs in `vectors`
    vector registers, one fused multiply-add per source row and vector, in
    the order of `e`, and is stored once: the gathered rows are read but
    nothing is written until the end. `out`, `src` (2-D, row-major, one
    float dtype) and `coef` share the dtype; `which` is an integer array.
    Unchecked: every ``which[e]`` must be a row of `src` and the tile must
    lie inside both rows.
    """

    def typer(typingctx, out, r, c0, src, which, coef, start, end):
        arrays = (out, src, which, coef)
        if not (all(isinstance(a, types.Array) for a in arrays) and out.ndim == src.ndim == 2
                and which.ndim == coef.ndim == 1 and isinstance(which.dtype, types.Integer)
                and out.dtype == src.dtype == coef.dtype and out.dtype in (types.float32, types.float64)
                and all(isinstance(i, types.Integer) for i in (r, c0, start, end))):
            return None
        return types.void(out, r, c0, src, which, coef, start, end), codegen

    def codegen(context, builder, signature, args):
        outty, _, _, srcty, whichty, coefty, _, _ = signature.args
        r, c0, start, end = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2, 6, 7))
        size = outty.dtype.bitwidth // 8
        lanes = 64 // size
        vty = ir.VectorType(context.get_data_type(outty.dtype), lanes)
        out, src, which, coef = (context.make_array(ty)(context, builder, a)
                                 for ty, a in zip((outty, srcty, whichty, coefty), (args[0], args[3], args[4], args[5])))
        src_stride = cgutils.unpack_tuple(builder, src.strides, 2)[0]
        out_stride = cgutils.unpack_tuple(builder, out.strides, 2)[0]
        col_bytes = builder.mul(c0, _I64(size))
        bytes_ptr = ir.IntType(8).as_pointer()
        src_base = builder.bitcast(src.data, bytes_ptr)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                             f"llvm.fmuladd.v{lanes}f{size * 8}")
        zero = ir.Constant(vty, [0.0] * lanes)
        target = builder.gep(builder.bitcast(out.data, bytes_ptr), [builder.add(builder.mul(r, out_stride), col_bytes)])
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
        for v, s in enumerate(sums):
            if add:
                p = builder.bitcast(builder.gep(target, [_I64(64 * v)]), vty.as_pointer())
                builder.store(builder.load(p, align=size), s)
            else:
                builder.store(zero, s)
        with cgutils.for_range_slice(builder, start, end, _I64(1), inc=True) as (e, _):
            row = builder.load(cgutils.get_item_pointer(context, builder, whichty, which, [e]))
            row = context.cast(builder, row, whichty.dtype, types.intp)
            c = _broadcast(builder, builder.load(cgutils.get_item_pointer(context, builder, coefty, coef, [e])), lanes)
            first = builder.gep(src_base, [builder.add(builder.mul(row, src_stride), col_bytes)])
            for v, s in enumerate(sums):
                p = builder.bitcast(builder.gep(first, [_I64(64 * v)]), vty.as_pointer())
                builder.store(builder.call(fma, [c, builder.load(p, align=size), builder.load(s)]), s)
        for v, s in enumerate(sums):
            p = builder.bitcast(builder.gep(target, [_I64(64 * v)]), vty.as_pointer())
            builder.store(builder.load(s), p, align=size)
        return context.get_dummy_value()

    return intrinsic(typer)


#: Tiles of four and of one 64-byte vector (:func:`_row_tile_sum`), set or added to.
row_tile_sum4 = _row_tile_sum(4, False)
row_tile_sum1 = _row_tile_sum(1, False)
row_tile_add4 = _row_tile_sum(4, True)
row_tile_add1 = _row_tile_sum(1, True)
