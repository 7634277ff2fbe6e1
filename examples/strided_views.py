"""Strided views and zero-copy: numpy views read and written in place through BNNS strides.

Run:  python examples/strided_views.py
Three cases, each checked against the same call on contiguous copies:
  1. a channel slice of a bigger array as the input (read in place),
  2. the interior of a zero-bordered buffer as the output (written in place, border untouched),
     which feeds a second layer that needs that padding, with no copy in between,
  3. a Swift-style layer whose input descriptor has row and channel strides of its own.
"""
import numpy as np

import bnns_py
from bnns_py import ConvolutionLayer, ConvolutionType, DataType, NDArrayDescriptor, Shape, reference

rng = np.random.default_rng(0)
w1 = (0.2 * rng.standard_normal((8, 6, 3, 3))).astype(np.float32)
w2 = (0.2 * rng.standard_normal((4, 8, 3, 3))).astype(np.float32)

# 1. The input is channels 2..7 of a 12-channel array: not C-contiguous, but rows are.
features = rng.standard_normal((2, 12, 16, 16)).astype(np.float32)
x = features[:, 2:8]
assert not x.flags.c_contiguous
y = bnns_py.conv2d(x, w1)
bnns_py.assert_close(y, bnns_py.conv2d(np.ascontiguousarray(x), w1), rtol=1e-6, msg="channel slice")
print(f"1. input view {x.shape} with strides {x.strides}: same result as a contiguous copy")

# 2. Write layer 1 into the interior of a buffer with a 1-pixel zero border, then run layer 2 on
#    the whole buffer: the border is layer 2's padding.
padded = np.zeros((2, 8, 16, 16), np.float32)
bnns_py.conv2d(x, w1, out=padded[:, :, 1:-1, 1:-1])
assert not padded[:, :, 0].any() and not padded[:, :, -1].any(), "the border was written"
z = bnns_py.conv2d(padded, w2)
expected = reference.conv2d(reference.conv2d(x, w1), w2, padding=1)
bnns_py.assert_close(z, expected, rtol=1e-5, msg="two layers through a padded buffer")
print(f"2. output written into the interior of {padded.shape}; border untouched; "
      f"two layers max |error| vs reference = {np.abs(z - expected).max():.1e}")

# 3. A layer whose input descriptor describes a view: rows 20 floats apart (16 used) and channels
#    20 * 18 floats apart (16 rows used), i.e. the top-left 16x16 corner of each 18x20 plane.
storage = rng.standard_normal((2, 6, 18, 20)).astype(np.float32)
view = storage[:, :, :16, :16]
input_shape = Shape.image_chw(16, 16, 6, stride=(1, 20, 20 * 18))
layer = ConvolutionLayer(
    type=ConvolutionType.standard,
    input=NDArrayDescriptor(data_type=DataType.float32, shape=input_shape),
    weights=NDArrayDescriptor(w1, Shape.convolution_weights_oihw(3, 3, 6, 8)),
    output=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(14, 14, 8)),
)
out = np.empty((2, 8, 14, 14), np.float32)
with layer:
    layer.apply(2, storage, out)   # the whole storage: BNNS reads only what the strides select
bnns_py.assert_close(out, reference.conv2d(view, w1), rtol=1e-5, msg="descriptor strides")
print(f"3. descriptor strides {input_shape.resolved_strides} (batch stride "
      f"{input_shape.batch_stride}): the 16x16 corner of each plane, read in place")
print("OK")
