"""Verify bnns-py against PyTorch: outputs and all three gradients, on whichever backend is active.

Run:  pip install torch && python examples/verify_against_pytorch.py
Each PyTorch module is converted with from_torch, run forward and backward on both sides with the
same input and upstream gradient, and compared with bnns_py.compare; the script prints one table
and exits non-zero if any comparison fails. examples/verify_against_pytorch.ipynb does the same in
a notebook, with plots of the differences.
"""
import sys

import numpy as np

import bnns_py

try:
    import torch
except ImportError:
    print("skipped: PyTorch is not installed (pip install '.[torch]')")
    sys.exit(0)

nn = torch.nn
torch.manual_seed(0)
rng = np.random.default_rng(0)

# name: (PyTorch module, bnns-py module class, input shape)
CASES = {
    "conv 3x3, padding 1": (nn.Conv2d(8, 16, 3, padding=1), bnns_py.Conv2d, (4, 8, 16, 16)),
    "conv grouped, stride 2, dilation 2": (nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4),
                                           bnns_py.Conv2d, (4, 8, 16, 16)),
    "conv depthwise 3x3": (nn.Conv2d(16, 16, 3, padding=1, groups=16), bnns_py.Conv2d, (2, 16, 12, 12)),
    "transposed 4x4 / 2": (nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), bnns_py.ConvTranspose2d,
                           (2, 8, 8, 8)),
    "linear 64 -> 10": (nn.Linear(64, 10), bnns_py.Linear, (4, 64)),
}


def torch_pass(module, x, dy):
    """Output and dL/dx, dL/dW, dL/db by PyTorch's forward and autograd."""
    module.zero_grad()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = module(xt)
    yt.backward(torch.from_numpy(dy))
    return yt.detach().numpy(), xt.grad.numpy(), module.weight.grad.numpy(), module.bias.grad.numpy()


def bnns_pass(module, x, dy):
    """The same by BNNS: forward, then BNNSFilterApplyBackwardBatch for the three gradients."""
    y = module(x)
    grads = module.backward(x, y, dy)
    return y, grads.input, grads.weight, grads.bias


comparisons = {}
for name, (torch_module, bnns_class, shape) in CASES.items():
    x = rng.standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        dy = rng.standard_normal(tuple(torch_module(torch.from_numpy(x)).shape)).astype(np.float32)
    with bnns_class.from_torch(torch_module) as module:
        ours = bnns_pass(module, x, dy)
    theirs = torch_pass(torch_module, x, dy)
    for what, a, b in zip(("y", "dL/dx", "dL/dW", "dL/db"), ours, theirs):
        comparisons[f"{name}: {what}"] = bnns_py.compare(a, b, rtol=1e-5)

# The numpy-first function against torch.nn.functional, on a tensor input.
x = torch.randn(2, 8, 16, 16)
w = torch.randn(16, 8, 3, 3)
expected = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
comparisons["conv2d vs F.conv2d"] = bnns_py.compare(
    bnns_py.conv2d(x.numpy(), w.numpy(), stride=2, padding=1), expected)

table = bnns_py.comparison_table(comparisons)
print(f"bnns-py {bnns_py.__version__} ({bnns_py.backend_info()['backend']} backend) "
      f"against PyTorch {torch.__version__}")
print(table)
if not table.ok:
    sys.exit("some results differ from PyTorch beyond the tolerance (above)")
print("OK")
