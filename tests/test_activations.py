"""The cube activation: values, gradient against finite differences, dtype kept."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from meprop_numba.nn import Cube

from reference import examples, float_elements


@settings(deadline=None, max_examples=examples(50))
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                  elements=float_elements(np.float64, bound=10.0)))
def test_cube_gradient_matches_finite_differences(x):
    cube = Cube()
    y = cube.forward(x, train=True)
    np.testing.assert_allclose(y, x * x * x, rtol=1e-12, atol=0)
    upstream = np.linspace(-1.0, 1.0, x.size).reshape(x.shape)
    grad = cube.backward(upstream)
    eps = 1e-5
    numeric = ((x + eps) ** 3 - (x - eps) ** 3) / (2 * eps) * upstream
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_cube_keeps_float32_and_needs_a_training_forward():
    cube = Cube()
    x = np.array([[1.5, -2.0, 0.5], [1.0, 2.0, 3.0]], dtype=np.float32).T  # Fortran order
    y = cube.forward(x, train=True)
    assert y.dtype == np.float32 and y[2, 1] == 27.0
    grad = cube.backward(np.ones((3, 2), np.float32))
    assert grad.dtype == np.float32 and grad[1, 0] == 12.0
    with pytest.raises(RuntimeError, match="before forward"):
        cube.backward(np.ones((3, 2), np.float32))
