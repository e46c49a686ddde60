"""export.onnx_export.fp16_rounded against the fp16 converter's own function (onnxconverter_common), the oracle whose
rounding every fp16 graph's weights follow: bit for bit, on the values where the two could part (the clamps' edges,
subnormals, zeros of both signs, inf, NaN) and on ordinary weights."""

from __future__ import annotations

import warnings

import numpy as np
from onnxconverter_common.float16 import convert_np_to_float16

from export.onnx_export import fp16_rounded


def test_fp16_rounding_is_the_converters_bit_for_bit():
    edges = np.array([0.0, -0.0, 1e-7, -1e-7, 9.99e-8, -9.99e-8, 1.01e-7, 5e-8, -5e-8, 1e-45, -1e-45, 6.1e-5, 5.96e-8,
                      1e4, -1e4, 9999.0, 10001.0, -10001.0, 65504.0, 7e4, -7e4, 3e38, np.inf, -np.inf, np.nan, 1.0, -2.5],
                     dtype=np.float32)  # fmt: skip
    rng = np.random.default_rng(0)
    ordinary = rng.standard_normal(4096).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 4096)
    for values in (edges, ordinary, ordinary.reshape(64, 64).T):  # a transposed view too: the weight map's forms
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            want = convert_np_to_float16(np.ascontiguousarray(values))
        got = fp16_rounded(values)
        assert got.dtype == np.float16 and got.shape == values.shape
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
