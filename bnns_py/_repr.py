"""Text and HTML summaries of layers, descriptors and modules, for the console and notebooks.

Everything here reads attributes only (duck typing) and imports nothing from bnns_py but the
enums, so the classes can call it from their ``__repr__``/``_repr_html_`` methods. Every
piece of text that goes into HTML passes through ``html.escape``.
"""
import html
from typing import Any, Callable, Iterable, List, Tuple

from .enums import NDArrayFlags

# Names of a layout's sizes, in BNNS order (size[0] first).
_SIZE_NAMES = {
    "image_chw": ("W", "H", "C"),
    "convolution_weights_oihw": ("kW", "kH", "I", "O"),
    "convolution_weights_oihrwr": ("kW", "kH", "I", "O"),
    "convolution_weights_oihw_pack32": ("kW", "kH", "I", "O"),
    "convolution_weights_iohrwr": ("kW", "kH", "O", "I"),
    "vector": ("n",),
    "one_d_last_major": ("n",),
    "one_d_first_major": ("n",),
    "matrix_row_major": ("columns", "rows"),
    "matrix_column_major": ("rows", "columns"),
}

_STYLE_TABLE = "border-collapse:collapse;font-family:monospace;font-size:12px;text-align:left"
_STYLE_CELL = "padding:1px 8px;text-align:left;vertical-align:top"
_STYLE_HEAD = _STYLE_CELL + ";font-weight:bold;border-bottom:1px solid #999"


def safe(obj: Any, render: Callable[[Any], str], parts: Callable[[Any], Any]) -> str:
    """``render(parts(obj))``, or a minimal form if ``obj`` is incomplete (a repr must not raise,
    e.g. in a debugger while ``__init__`` failed half way)."""
    try:
        return render(parts(obj))
    except Exception:  # noqa: BLE001
        return f"<{type(obj).__name__} (incompletely initialized)>"


def bnns_sizes(shape):
    """``image_chw(W=32, H=32, C=16)``: a shape's sizes in BNNS order, labelled."""
    layout = shape.layout.name
    names = _SIZE_NAMES.get(layout)
    if names is None or len(names) != len(shape.sizes):
        text = ", ".join(str(size) for size in shape.sizes)
    else:
        text = ", ".join(f"{name}={size}" for name, size in zip(names, shape.sizes))
    strides = f", stride={shape.strides}" if any(shape.strides) else ""
    return f"{layout}({text}{strides})"


def numpy_shape(shape):
    """``(16, 32, 32)``: the C-order numpy shape of one item."""
    return str(tuple(shape.numpy_shape))


def descriptor_cells(descriptor):
    """(BNNS order, numpy order, data type) of a descriptor, or dashes for None."""
    if descriptor is None:
        return ("none", "", "")
    return (bnns_sizes(descriptor.shape), numpy_shape(descriptor.shape), descriptor.data_type.name)


def pair_xy(values):
    """``x=2, y=1`` for BNNS's (x, y) pairs."""
    x, y = values
    return f"x={x}, y={y}"


def padding_text(padding):
    if padding.kind == "asymmetric":
        return repr(padding)
    left, right, up, down = padding.sides
    return f"{padding!r}: left={left}, right={right}, up={up}, down={down}"


def weights_text(client_pointer: bool) -> str:
    """How BNNS holds a filter's weights."""
    return "read in place at every call (use_client_pointer)" if client_pointer else "copied by BNNS at creation"


def weights_storage(filter_parameters):
    """How BNNS holds the weights, and the thread count if one was set."""
    text = weights_text(filter_parameters is not None and filter_parameters.use_client_pointer)
    threads = getattr(filter_parameters, "n_threads", 0) if filter_parameters is not None else 0
    if threads:
        text += f", n_threads={threads}"
    return text


def state(layer):
    return "closed" if layer.closed else "open"


# ---- layers -------------------------------------------------------------------------------------

def convolution_layer_parts(layer):
    """(title, descriptor rows, fact rows) describing a ``ConvolutionLayer``."""
    type_name = layer.type.value
    title = f"ConvolutionLayer({type_name}, {layer.backend.name} backend, {state(layer)})"
    descriptors = [("input", descriptor_cells(layer.input_descriptor)),
                   ("output", descriptor_cells(layer.output_descriptor)),
                   ("weights", descriptor_cells(layer.weights)),
                   ("bias", descriptor_cells(layer.bias))]
    facts = [("type", type_name),
             ("PyTorch weight", torch_weight_text(layer)),
             ("activation", repr(layer.activation)),
             ("padding", padding_text(layer.padding)),
             ("stride", pair_xy(layer.stride)),
             ("dilation", pair_xy(layer.dilation_stride)),
             ("groups", str(layer.group_count)),
             ("weights storage", weights_storage(layer.filter_parameters)),
             ("backend", layer.backend.name),
             ("state", state(layer))]
    return title, descriptors, facts


def torch_weight_text(layer):
    """The PyTorch weight shape of the equivalent ``nn.Conv2d``/``nn.ConvTranspose2d``."""
    in_w, in_h, in_c = layer.input_descriptor.shape.sizes
    out_w, out_h, out_c = layer.output_descriptor.shape.sizes
    k_w, k_h = layer.weights.shape.sizes[:2]
    groups = max(layer.group_count, 1)
    if layer.type.value == "transposed":
        return f"{(in_c, out_c // groups, k_h, k_w)} (in, out/groups, kH, kW)"
    return f"{(out_c, in_c // groups, k_h, k_w)} (out, in/groups, kH, kW)"


def fully_connected_parts(layer):
    in_size, out_size = layer.input_size, layer.output_size
    title = f"FullyConnectedLayer({in_size} -> {out_size}, {layer.backend.name} backend, {state(layer)})"
    descriptors = [("input", descriptor_cells(layer.input_descriptor)),
                   ("output", descriptor_cells(layer.output_descriptor)),
                   ("weights", descriptor_cells(layer.weights)),
                   ("bias", descriptor_cells(layer.bias))]
    facts = [("features", f"{in_size} -> {out_size}"),
             ("PyTorch weight", f"{(out_size, in_size)} (out, in)"),
             ("activation", repr(layer.activation)),
             ("weights storage", weights_storage(layer.filter_parameters)),
             ("backend", layer.backend.name),
             ("state", state(layer))]
    return title, descriptors, facts


def layer_text(parts):
    """Multi-line text: the title, an aligned descriptor table, then one fact per line."""
    title, descriptors, facts = parts
    lines = [title]
    header = ("", "BNNS order", "numpy order", "data type")
    rows = [header] + [(name,) + tuple(cells) for name, cells in descriptors]
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    label_width = max(len(label) for label, _ in facts)
    for label, value in facts:
        lines.append(f"  {label.ljust(label_width)}  {value}")
    return "\n".join(lines)


def layer_html(parts):
    title, descriptors, facts = parts
    e = html.escape
    out = [f'<div class="bnns-py-repr"><div style="font-family:monospace;font-weight:bold">{e(title)}</div>',
           f'<table style="{_STYLE_TABLE}">',
           "<tr>" + "".join(f'<th style="{_STYLE_HEAD}">{e(h)}</th>'
                            for h in ("", "BNNS order", "numpy order", "data type")) + "</tr>"]
    for name, cells in descriptors:
        out.append(f'<tr><th style="{_STYLE_CELL}">{e(name)}</th>'
                   + "".join(f'<td style="{_STYLE_CELL}">{e(cell)}</td>' for cell in cells) + "</tr>")
    for label, value in facts:
        out.append(f'<tr><th style="{_STYLE_CELL}">{e(label)}</th>'
                   f'<td style="{_STYLE_CELL}" colspan="3">{e(value)}</td></tr>')
    out.append("</table></div>")
    return "".join(out)


def key_value_html(title: str, rows: Iterable[Tuple[str, str]]) -> str:
    """A titled two-column table; every string is escaped."""
    e = html.escape
    out = [f'<div class="bnns-py-repr"><div style="font-family:monospace;font-weight:bold">{e(title)}</div>',
           f'<table style="{_STYLE_TABLE}">']
    for label, value in rows:
        out.append(f'<tr><th style="{_STYLE_CELL}">{e(str(label))}</th>'
                   f'<td style="{_STYLE_CELL}">{e(str(value))}</td></tr>')
    out.append("</table></div>")
    return "".join(out)


def grid_html(title, header, rows, row_styles=None):
    """A titled table with a header row; ``row_styles`` optionally gives each row a CSS style."""
    e = html.escape
    out = [f'<div class="bnns-py-repr"><div style="font-family:monospace;font-weight:bold">{e(title)}</div>',
           f'<table style="{_STYLE_TABLE}">',
           "<tr>" + "".join(f'<th style="{_STYLE_HEAD}">{e(str(h))}</th>' for h in header) + "</tr>"]
    for k, row in enumerate(rows):
        style = f' style="{e(row_styles[k])}"' if row_styles and row_styles[k] else ""
        out.append(f"<tr{style}>" + "".join(f'<td style="{_STYLE_CELL}">{e(str(cell))}</td>' for cell in row)
                   + "</tr>")
    out.append("</table></div>")
    return "".join(out)


# ---- descriptors ----------------------------------------------------------------------------------

def descriptor_rows(descriptor: Any) -> List[Tuple[str, str]]:
    array = descriptor.data
    rows = [("shape", repr(descriptor.shape)),
            ("BNNS order", bnns_sizes(descriptor.shape)),
            ("numpy order", numpy_shape(descriptor.shape)),
            ("layout", descriptor.layout.name),
            ("data type", descriptor.data_type.name),
            ("data", "none" if array is None else f"{array.dtype}[{array.size}]"),
            ("batch size", str(descriptor.batch_size))]
    c = descriptor.c_descriptor
    if c.data_scale != 1.0 or c.data_bias != 0.0:
        rows.append(("data scale, bias", f"{c.data_scale:g}, {c.data_bias:g}"))
    rows.append(("flags", flags_name(c.flags)))
    return rows


def flags_name(value: int) -> str:
    try:
        return NDArrayFlags(value).name or str(value)
    except ValueError:
        return str(value)


# ---- numpy modules ------------------------------------------------------------------------------

def backend_text(backend: object) -> str:
    """A module's ``backend`` argument: None (the default), a name or a backend object."""
    if backend is None:
        return "default"
    return str(getattr(backend, "name", backend))


def threads_text(n_threads: int) -> str:
    return str(n_threads) if n_threads else "0 (the backend chooses)"


def conv_module_rows(module: Any) -> List[Tuple[str, str]]:
    spec = module.spec
    left, right, top, bottom = spec.padding
    rows = [("channels", f"{spec.in_channels} -> {spec.out_channels}"),
            ("weight (PyTorch layout)", f"{tuple(module.weight.shape)} "
             + ("(in, out/groups, kH, kW)" if spec.transposed else "(out, in/groups, kH, kW)")),
            ("kernel (kH, kW)", str(spec.kernel)),
            ("stride (h, w)", str(spec.stride)),
            ("padding", f"left={left}, right={right}, top={top}, bottom={bottom}"),
            ("dilation (h, w)", str(spec.dilation)),
            ("groups", str(spec.groups))]
    if spec.transposed:
        rows.append(("output padding (h, w)", str(spec.output_padding)))
    rows += [("activation", repr(spec.activation)),
             ("bias", "yes" if module.bias is not None else "no"),
             ("backend", backend_text(module.backend)),
             ("threads per call", threads_text(module.n_threads)),
             ("weights storage", weights_text(not module.copy_weights)),
             ("cached filters (input H, W)", ", ".join(f"{h}x{w}" for h, w in module._layers) or "none")]
    return rows


def linear_module_rows(module: Any) -> List[Tuple[str, str]]:
    return [("features", f"{module.in_features} -> {module.out_features}"),
            ("weight (PyTorch layout)", f"{tuple(module.weight.shape)} (out, in)"),
            ("activation", repr(module.activation)),
            ("bias", "yes" if module.bias is not None else "no"),
            ("backend", backend_text(module.backend)),
            ("threads per call", threads_text(module.n_threads)),
            ("weights storage", weights_text(not module.copy_weights)),
            ("filter", "none yet" if module._fc_layer is None else state(module._fc_layer))]
