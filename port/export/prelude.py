"""Helper source the generated Python file carries: Caffe's rules that ``torch.nn`` lacks.

Each entry is a self-contained piece of Python (needs only ``math``, ``torch``, ``nn`` and ``F``)
written into the generated file when a layer needs it. Functions whose Python arithmetic reads
tensor shapes are registered with ``torch.fx.wrap`` so that FX tracing (torchvision's
``create_feature_extractor``) records them as one call instead of tracing into shape arithmetic.
"""

from __future__ import annotations

__all__ = ["HELPERS", "FX_WRAPPED", "helper_source"]

_POOL = '''
def caffe_pool2d(x, method, kernel, stride, pad):
    """Caffe's MAX/AVE pooling of an (N, C, H, W) tensor; ``kernel`` None pools globally.

    Caffe sizes the output with the ceil rule, then drops a last window that starts in the
    padding. MAX windows are clipped to the image (padding never wins); AVE divides by the window
    clipped to the padded image, not to the image.
    """
    size = (x.shape[2], x.shape[3])
    if kernel is None:
        kernel = size
    out = []
    for n, k, s, p in zip(size, kernel, stride, pad):
        o = math.ceil((n + 2 * p - k) / s) + 1
        if p > 0 and (o - 1) * s >= n + p:
            o -= 1
        out.append(o)
    extra = [
        max((o - 1) * s + k - n - p, 0)
        for o, s, k, n, p in zip(out, stride, kernel, size, pad)
    ]
    pads = (pad[1], extra[1], pad[0], extra[0])
    if method == "MAX":
        y = F.max_pool2d(
            F.pad(x, pads, value=-math.inf) if any(pads) else x, kernel, stride
        )
    else:
        y = F.avg_pool2d(F.pad(x, pads, value=0.0) if any(pads) else x, kernel, stride)
        div = [
            torch.tensor(
                [min(i * s - p + k, n + p) - (i * s - p) for i in range(o)],
                dtype=torch.float64,
            )
            for o, s, p, k, n in zip(out, stride, pad, kernel, size)
        ]
        ratio = (kernel[0] * kernel[1]) / (div[0][:, None] * div[1][None, :])
        if bool((ratio != 1).any()):
            y = y * ratio.to(device=y.device, dtype=y.dtype)
    return y[:, :, : out[0], : out[1]]


class CaffePool2d(nn.Module):
    """Caffe's pooling (see ``caffe_pool2d``); ``kernel`` None is global pooling."""

    def __init__(self, method, kernel, stride, pad):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad

    def forward(self, x):
        return caffe_pool2d(x, self.method, self.kernel, self.stride, self.pad)

    def extra_repr(self):
        return (
            f"{self.method}, kernel={self.kernel}, stride={self.stride}, pad={self.pad}"
        )
'''

_LRN = '''
class CaffeLRN(nn.Module):
    """Caffe's local response normalisation (``caffe_lrn``)."""

    def __init__(self, size, alpha, beta, k, across_channels=True):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.across_channels = across_channels

    def forward(self, x):
        return caffe_lrn(x, self.size, self.alpha, self.beta, self.k, self.across_channels)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
'''

_CONV = '''
class CaffeConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed as the port computes it (``caffe_conv2d``: a strided convolution on
    an image's few channels runs on a space-to-depth input)."""

    def forward(self, input):
        return caffe_conv2d(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
'''

_CROP = '''
def caffe_crop(x, ref, axis, offsets):
    """Caffe's Crop: ``x`` cut to ``ref``'s size on the axes from ``axis`` on, at ``offsets``."""
    index = [slice(None)] * axis
    for i, o in enumerate(offsets):
        index.append(slice(o, o + ref.shape[axis + i]))
    return x[tuple(index)]
'''

_SCALE = '''
class CaffeScale(nn.Module):
    """Caffe's Scale with a learned factor: x * weight (+ bias), the factor's axes starting at
    ``axis``."""

    def __init__(self, shape, axis=1, bias=True):
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None

    def forward(self, x):
        trailing = x.dim() - self.axis - self.weight.dim()
        view = (1,) * self.axis + tuple(self.weight.shape) + (1,) * trailing
        y = x * self.weight.reshape(view)
        return y + self.bias.reshape(view) if self.bias is not None else y
'''

_BATCHNORM = '''
class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm with stored statistics: (x - mean) / sqrt(var + eps), per channel."""

    def __init__(self, channels, eps):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean = self.running_mean.view(view)
        return (x - mean) / torch.sqrt(self.running_var.view(view) + self.eps)
'''

_EMBED = '''
class CaffeEmbed(nn.Module):
    """Caffe's Embed: each input value truncated to an integer row index of ``weight``."""

    def __init__(self, input_dim, num_output, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(input_dim, num_output))
        self.bias = nn.Parameter(torch.zeros(num_output)) if bias else None

    def forward(self, x):
        y = F.embedding(x.detach().to(torch.int64), self.weight)
        return y + self.bias if self.bias is not None else y
'''

_LSTM = '''
class CaffeLSTM(nn.Module):
    """Caffe's LSTM over x (T, N, ...) with sequence-continuation markers cont (T, N).

    Where cont[t] is 0 a new sequence starts: the previous h and the forget gate are multiplied
    by it. An optional static input (N, ...) is seen at every step. Gates in Caffe's order i, f,
    o, g; weights as Caffe's W_xc (4H, D), b_c (4H), W_xc_static (4H, Ds) and W_hc (4H, H),
    summed in Caffe's order W_hc h + (W_xc x + b_c) + W_xc_static x_static.
    """

    def __init__(self, input_dim, hidden, static_dim=None):
        super().__init__()
        self.hidden = hidden
        self.weight_x = nn.Parameter(torch.zeros(4 * hidden, input_dim))
        self.bias_x = nn.Parameter(torch.zeros(4 * hidden))
        if static_dim is not None:
            self.weight_static = nn.Parameter(torch.zeros(4 * hidden, static_dim))
        self.weight_h = nn.Parameter(torch.zeros(4 * hidden, hidden))

    def forward(self, x, cont, static=None):
        steps, n, size = x.shape[0], x.shape[1], self.hidden
        cont = cont.detach()
        x_proj = F.linear(x.reshape(steps, n, -1), self.weight_x, self.bias_x)
        s_proj = None
        if static is not None:
            s_proj = F.linear(static.reshape(n, -1), self.weight_static)
        h = c = x.new_zeros(n, size)
        hs = []
        for t in range(steps):
            keep = cont[t].unsqueeze(-1)
            gates = F.linear(h * keep, self.weight_h) + x_proj[t]
            if s_proj is not None:
                gates = gates + s_proj
            i = torch.sigmoid(gates[..., :size])
            f = torch.sigmoid(gates[..., size : 2 * size]) * keep
            o = torch.sigmoid(gates[..., 2 * size : 3 * size])
            g = torch.tanh(gates[..., 3 * size :])
            c = f * c + i * g
            h = o * torch.tanh(c)
            hs.append(h)
        return torch.stack(hs)
'''

#: Helper name -> its source.
HELPERS = {
    "caffe_pool2d": _POOL,
    "CaffeLRN": _LRN,
    "CaffeConv2d": _CONV,
    "caffe_crop": _CROP,
    "CaffeScale": _SCALE,
    "CaffeBatchNorm": _BATCHNORM,
    "CaffeEmbed": _EMBED,
    "CaffeLSTM": _LSTM,
}
#: Functions the generated file registers with ``torch.fx.wrap``.
FX_WRAPPED = ("caffe_pool2d", "caffe_crop", "caffe_linear", "caffe_conv2d", "caffe_lrn")


def _linear_source() -> str:
    """The port's blocked fully connected product (port.layers.blocked), copied from its source so
    the generated file rounds as the port does, and a ``nn.Linear`` that uses it."""
    from ..layers import blocked

    constants = f"BLOCK = {blocked.BLOCK}\n\n_PARTIALS_BYTES = {blocked._PARTIALS_BYTES}"
    functions = _port_source(
        blocked.blocked_matmul,
        blocked._BlockedLinear,
        blocked.blocked_linear,
        blocked._needs_custom_backward,
    )
    return "\n\n\n".join([constants, functions, _LINEAR.strip()])


_LINEAR = '''
try:  # where the port is installed, its compiled kernel: this file then rounds as the port does
    from port.layers import skinny as _skinny
except ImportError:
    _skinny = None


def caffe_linear(x, weight, bias):
    """``x @ weight.T + bias`` as the port computes it: the port's compiled small-batch kernel
    where it applies and is importable, else float32 sums in blocks of ``BLOCK`` terms."""
    if _skinny is not None and _skinny.usable(x, weight):
        # A fresh cache: weight.T is copied for each backward (the port keeps one per layer).
        return _skinny.linear(x, weight, bias, _skinny.TransposedWeights())
    return blocked_linear(x, weight, bias)


class CaffeLinear(nn.Linear):
    """``nn.Linear`` whose float32 sums run in blocks of 64 terms, as the port's InnerProduct."""

    def forward(self, input):
        return caffe_linear(input, self.weight, self.bias)
'''


def _port_source(*objects) -> str:
    """Functions of the port's layer modules, copied from their source (they need only torch)."""
    import inspect

    return "\n\n\n".join(inspect.getsource(obj).strip() for obj in objects)


def _conv_source() -> str:
    from ..layers import strided

    return f"FOLD_MAX_CHANNELS = {strided.FOLD_MAX_CHANNELS}\n\n\n" + _port_source(
        strided.folds_space_to_depth, strided._exporting, strided._fold, strided.caffe_conv2d
    )


def _lrn_source() -> str:
    from ..layers import lrn

    return _port_source(lrn.caffe_lrn)


def helper_source(names: set[str]) -> str:
    """The source of the helpers ``names`` in a fixed order, with their ``torch.fx.wrap`` lines."""
    parts = [HELPERS[n].strip() for n in HELPERS if n in names]
    if "CaffeConv2d" in names:
        parts.insert(0, _conv_source())
        names = names | {"caffe_conv2d"}
    if "CaffeLRN" in names:
        parts.insert(0, _lrn_source())
        names = names | {"caffe_lrn"}
    if "caffe_linear" in names:
        parts.insert(0, _linear_source())
    wraps = [f'torch.fx.wrap("{n}")' for n in FX_WRAPPED if n in names]
    return "\n\n\n".join(parts + (["\n".join(wraps)] if wraps else []))
