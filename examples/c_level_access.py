"""C-level access: create, apply and destroy a BNNS filter through cffi, with no bnns-py classes.

Run:  python examples/c_level_access.py
The C structs and functions are the ones in cdefs/ (Apple's BNNS API). On macOS this calls
Accelerate; elsewhere the portable library, which also says why it refuses a parameter set.
"""
import numpy as np

from bnns_py import DataLayout, DataType, ffi, get_backend, reference

backend = get_backend()
lib = backend.lib
print(f"backend: {backend.name}")

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)        # N, C, H, W
weights = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # out, in, kH, kW = OIHW
bias = rng.standard_normal(4).astype(np.float32)

# A convolution's parameters, field by field. Sizes run fastest axis first: width, height, channels.
params = ffi.new("BNNSLayerParametersConvolution *")   # zero-filled: strides 0 mean "packed"
for descriptor, (width, height, channels) in ((params.i_desc, (8, 8, 3)), (params.o_desc, (8, 8, 4))):
    descriptor.layout = DataLayout.image_chw
    descriptor.size[0:3] = [width, height, channels]
    descriptor.data_type = DataType.float32
params.w_desc.layout = DataLayout.convolution_weights_oihw
params.w_desc.size[0:4] = [3, 3, 3, 4]                 # kW, kH, in, out
params.w_desc.data_type = DataType.float32
params.w_desc.data = ffi.from_buffer(weights)          # BNNS copies the weights at creation
params.bias.layout = DataLayout.vector
params.bias.size[0] = 4
params.bias.data_type = DataType.float32
params.bias.data = ffi.from_buffer(bias)
params.x_padding = params.y_padding = 1
params.x_stride = params.y_stride = 1

handle = lib.BNNSFilterCreateLayerConvolution(params, ffi.NULL)
if handle == ffi.NULL:
    reason = backend.last_error() or "see the system log"   # only the portable library keeps one
    raise SystemExit(f"BNNS refused the parameters: {reason}")
try:
    out = np.empty((1, 4, 8, 8), np.float32)
    status = lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(out))
    assert status == 0, f"BNNSFilterApply returned {status}"
finally:
    lib.BNNSFilterDestroy(handle)                      # handles made this way are yours to destroy

expected = reference.conv2d(x, weights, bias, padding=1)
error = float(np.abs(out - expected).max())
print(f"BNNSFilterApply: {out.shape}, max |bnns - reference| = {error:.2e}")
assert error < 1e-4, "BNNS output disagrees with the reference"

# An invalid parameter set: BNNS returns NULL, it does not crash. The portable library keeps the
# reason, readable through its extra function bnns_portable_last_error().
params.o_desc.size[0] = 100                             # no 8-wide input gives a 100-wide output
refused = lib.BNNSFilterCreateLayerConvolution(params, ffi.NULL)
assert refused == ffi.NULL, "BNNS accepted an impossible output size"
if backend.is_portable:
    print("refused as expected:", ffi.string(lib.bnns_portable_last_error()).decode())
else:
    print("refused as expected (Accelerate writes the reason to the system log)")
print("OK")
