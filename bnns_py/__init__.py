"""bnns-py: Apple BNNS convolution layers from numpy.

On macOS the layers run on Accelerate's BNNS; elsewhere on bnns-py's portable implementation of
the same C API. Both are reached through the same cffi declarations (``bnns_py.ffi``), so the
Python code paths are identical. Importing never loads a library: the first real use does.

Swift-mirroring API: ``ConvolutionLayer``, ``ConvolutionType``, ``ConvolutionPadding``,
``ActivationFunction``, ``Shape``, ``NDArrayDescriptor``, ``DataType``, ``DataLayout``,
``FilterParameters``. numpy-first API, with ``torch.nn.functional``'s signatures: ``conv2d``,
``conv_transpose2d``, ``linear`` (array or CPU tensor in, numpy out) and the modules ``Conv2d``,
``ConvTranspose2d``, ``Linear`` (with gradients). Verification: ``bnns_py.reference``.
"""
from ._ffi import ffi
from ._version import __version__
from .activation import ActivationFunction
from .backend import available_backends, backend_info, default_backend_name, get_backend
from .convolution import ConvolutionLayer, ConvolutionPadding, ConvolutionType
from .descriptor import NDArrayDescriptor
from .enums import DataLayout, DataType, FilterType, Flags, NDArrayFlags
from .errors import BNNSError, LayerClosedError, LibraryNotFoundError
from .filter_parameters import FilterParameters
from .functional import (cache_size, cached_filter_count, clear_cache, conv2d, conv_transpose2d, linear,
                         set_cache_size)
from .modules import Conv2d, ConvTranspose2d, Gradients, Linear
from .layer import Layer, UnaryLayer, filter_counts
from .shape import Shape
from .fully_connected import FullyConnectedLayer
from .legacy import ImageStackDescriptor, LegacyConvolutionLayer, LegacyFullyConnectedLayer, VectorDescriptor
from .compare import Comparison, ComparisonTable, assert_close, compare, comparison_table


def __getattr__(name):
    # bnns_py.lib: the default backend's cffi library, loaded on first access.
    if name == "lib":
        return get_backend().lib
    raise AttributeError(f"module 'bnns_py' has no attribute {name!r}")


__all__ = [
    "ActivationFunction", "BNNSError", "Conv2d", "ConvTranspose2d", "Gradients", "ConvolutionLayer", "ConvolutionPadding", "ConvolutionType",
    "DataLayout", "DataType", "FilterParameters", "FilterType", "Flags", "Layer", "LayerClosedError",
    "LibraryNotFoundError", "NDArrayDescriptor", "NDArrayFlags", "Shape", "UnaryLayer",
    "__version__", "available_backends", "backend_info", "cache_size", "cached_filter_count", "clear_cache",
    "conv2d", "conv_transpose2d", "default_backend_name", "ffi",
    "filter_counts", "get_backend", "set_cache_size",
    "FullyConnectedLayer", "ImageStackDescriptor", "LegacyConvolutionLayer", "LegacyFullyConnectedLayer",
    "Linear", "VectorDescriptor", "linear",
    "Comparison", "ComparisonTable", "assert_close", "compare", "comparison_table",
]
