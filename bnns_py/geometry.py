"""Convolution size arithmetic shared by validation, the functional API and the CLI.

Conventions: ``pad_before``/``pad_after`` are left/right (x) or top/bottom (y); a stride or
dilation of 0 is read as 1, as BNNS does.
"""


def effective_kernel(kernel, dilation):
    """Extent of a dilated kernel: dilation*(k-1)+1."""
    return max(dilation, 1) * (kernel - 1) + 1


def max_output_size(in_size, kernel, stride, dilation, pad_before, pad_after):
    """Largest output a standard convolution can produce (PyTorch's floor formula); may be <= 0."""
    span = in_size + pad_before + pad_after - effective_kernel(kernel, dilation)
    return span // max(stride, 1) + 1 if span >= 0 else 0


def transposed_output_size(in_size, kernel, stride, dilation, pad_before, pad_after, output_padding=0):
    """Output of a transposed convolution: (in-1)*stride + dilation*(k-1) + 1 - pads + output_padding."""
    return ((in_size - 1) * max(stride, 1) + effective_kernel(kernel, dilation)
            - pad_before - pad_after + output_padding)


def standard_size_ok(in_size, out_size, kernel, stride, dilation, pad_before, pad_after):
    """BNNS's (macOS 14 SDK) rule: in + pads >= stride*(out-1) + dilation*(k-1) + 1, out >= 1."""
    return out_size >= 1 and (in_size + pad_before + pad_after
                              >= max(stride, 1) * (out_size - 1) + effective_kernel(kernel, dilation))


def transposed_size_ok(in_size, out_size, kernel, stride, dilation, pad_before, pad_after):
    """The standard rule with input and output swapped (the adjoint): out + pads >= stride*(in-1) + k_eff."""
    return standard_size_ok(out_size, in_size, kernel, stride, dilation, pad_before, pad_after)
