"""Convolution size arithmetic shared by validation, the functional API and the CLI.

Conventions: ``pad_before``/``pad_after`` are left/right (x) or top/bottom (y); a stride or
dilation of 0 is read as 1, as BNNS does. Every function works on one axis at a time.
"""


def effective_kernel(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel along one axis: ``dilation * (kernel - 1) + 1``.

    Parameters
    ----------
    kernel : int
        Kernel size along the axis.
    dilation : int
        Dilation along the axis (0 is read as 1).

    Returns
    -------
    int
        The number of input positions the kernel spans.

    Examples
    --------
    >>> from bnns_py.geometry import effective_kernel
    >>> effective_kernel(3, 2)
    5
    >>> effective_kernel(3, 0)
    3
    """
    return max(dilation, 1) * (kernel - 1) + 1


def max_output_size(in_size: int, kernel: int, stride: int, dilation: int, pad_before: int,
                    pad_after: int) -> int:
    """Largest output a standard convolution can produce along one axis (PyTorch's size).

    ``(in + pads - effective_kernel) // stride + 1``, or 0 when the kernel does not fit.

    Parameters
    ----------
    in_size : int
        Input size along the axis.
    kernel, stride, dilation : int
        The layer's kernel size, stride and dilation along the axis (0 is read as 1 for the
        last two).
    pad_before, pad_after : int
        Zero padding before and after the input.

    Returns
    -------
    int
        The output size; 0 when the padded input is smaller than the dilated kernel.

    Examples
    --------
    >>> from bnns_py.geometry import max_output_size
    >>> max_output_size(32, 3, 2, 1, 1, 1)
    16
    >>> max_output_size(2, 5, 1, 1, 0, 0)
    0
    """
    span = in_size + pad_before + pad_after - effective_kernel(kernel, dilation)
    return span // max(stride, 1) + 1 if span >= 0 else 0


def transposed_output_size(in_size: int, kernel: int, stride: int, dilation: int, pad_before: int,
                           pad_after: int, output_padding: int = 0) -> int:
    """Output size of a transposed convolution along one axis.

    ``(in - 1) * stride + dilation * (kernel - 1) + 1 - pad_before - pad_after + output_padding``,
    as ``torch.nn.functional.conv_transpose2d`` computes it.

    Parameters
    ----------
    in_size : int
        Input size along the axis.
    kernel, stride, dilation : int
        The layer's kernel size, stride and dilation along the axis.
    pad_before, pad_after : int
        Padding removed from the output's two ends.
    output_padding : int, optional
        Extra rows or columns added at the end (PyTorch's ``output_padding``).

    Returns
    -------
    int
        The output size (may be <= 0 for impossible arguments; callers check it).

    Examples
    --------
    >>> from bnns_py.geometry import transposed_output_size
    >>> transposed_output_size(8, 4, 2, 1, 1, 1)
    16
    >>> transposed_output_size(8, 3, 2, 1, 1, 1, output_padding=1)
    16
    """
    return ((in_size - 1) * max(stride, 1) + effective_kernel(kernel, dilation)
            - pad_before - pad_after + output_padding)


def standard_size_ok(in_size: int, out_size: int, kernel: int, stride: int, dilation: int,
                     pad_before: int, pad_after: int) -> bool:
    """Whether BNNS accepts ``out_size`` for a standard convolution along one axis.

    The macOS 14 SDK's rule: ``in + pads >= stride * (out - 1) + dilation * (kernel - 1) + 1``
    and ``out >= 1``. Any output up to the maximum is accepted (it is the top-left part of the
    largest output).

    Parameters
    ----------
    in_size, out_size : int
        Input and output sizes along the axis.
    kernel, stride, dilation : int
        The layer's kernel size, stride and dilation along the axis.
    pad_before, pad_after : int
        Zero padding before and after the input.

    Returns
    -------
    bool

    Examples
    --------
    >>> from bnns_py.geometry import standard_size_ok
    >>> standard_size_ok(8, 8, 3, 1, 1, 1, 1), standard_size_ok(8, 7, 3, 1, 1, 1, 1)
    (True, True)
    >>> standard_size_ok(8, 9, 3, 1, 1, 1, 1)
    False
    """
    return out_size >= 1 and (in_size + pad_before + pad_after
                              >= max(stride, 1) * (out_size - 1) + effective_kernel(kernel, dilation))


def transposed_size_ok(in_size: int, out_size: int, kernel: int, stride: int, dilation: int,
                       pad_before: int, pad_after: int) -> bool:
    """Whether BNNS accepts ``out_size`` for a transposed convolution along one axis.

    The standard rule with input and output swapped (the adjoint):
    ``out + pads >= stride * (in - 1) + dilation * (kernel - 1) + 1``. Outputs larger than
    :func:`transposed_output_size` with no ``output_padding`` hold only the bias in their extra
    rows and columns.

    Parameters
    ----------
    in_size, out_size : int
        Input and output sizes along the axis.
    kernel, stride, dilation : int
        The layer's kernel size, stride and dilation along the axis.
    pad_before, pad_after : int
        Padding removed from the output's two ends.

    Returns
    -------
    bool

    Examples
    --------
    >>> from bnns_py.geometry import transposed_size_ok
    >>> transposed_size_ok(8, 16, 4, 2, 1, 1, 1), transposed_size_ok(8, 15, 4, 2, 1, 1, 1)
    (True, False)
    """
    return standard_size_ok(out_size, in_size, kernel, stride, dilation, pad_before, pad_after)
