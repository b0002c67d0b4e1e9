"""Recurrent layers: LSTM and RNN (Caffe's unrolled nets) and the single LSTMUnit step.

Caffe's recurrent layers take ``x`` (T, N, ...) and ``cont`` (T, N): ``cont[t] == 0`` starts a new
sequence (the previous hidden state is multiplied by it, and the LSTM's forget gate too), then
optionally a static input (N, ...) seen at every step, then with ``expose_hidden`` the initial
states (1, N, num_output). Weight blobs, in Caffe's order: LSTM ``W_xc`` (4H, D), ``b_c`` (4H),
[``W_xc_static`` (4H, Ds)], ``W_hc`` (4H, H), gates ordered i, f, o, g; RNN ``W_xh``, ``b_h``,
[``W_xh_static``], ``W_hh``, ``W_ho``, ``b_o``. Caffe cannot back-propagate to ``cont``, and
Caffe 1.0 shares only the *data* of exposed states with its unrolled net: the diff of the initial
states stays zero, and gradients arriving at the final states are dropped. The port does the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import CaffeError
from ..netdef import LayerDef
from .base import CaffeLayer, Shape


def lstm_unit(
    c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step on (N, H) states and (N, 4H) gate inputs; returns (c, h)."""
    hidden = c_prev.shape[-1]
    i = torch.sigmoid(gates[..., :hidden])
    # Caffe: f = cont * sigmoid(f'), 0 where cont is 0.
    f = torch.sigmoid(gates[..., hidden : 2 * hidden]) * cont.unsqueeze(-1)
    o = torch.sigmoid(gates[..., 2 * hidden : 3 * hidden])
    g = torch.tanh(gates[..., 3 * hidden :])
    c = f * c_prev + i * g
    return c, o * torch.tanh(c)


class LSTMUnit(CaffeLayer):
    caffe_type = "LSTMUnit"
    no_gradient = {2: "Caffe cannot back-propagate to LSTMUnit's sequence indicators (cont)"}

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        if len(bottom_shapes) != 3:
            raise CaffeError(
                "LSTMUnit takes c_prev (1, N, H), gates (1, N, 4H) and cont (1, N)",
                layer=layer.name,
                field="bottom",
            )
        c, x, cont = bottom_shapes
        if (
            len(c) != 3
            or len(x) != 3
            or len(cont) != 2
            or c[0] != 1
            or x[0] != 1
            or cont[0] != 1
            or not c[1] == x[1] == cont[1]
            or x[2] != 4 * c[2]
        ):
            raise CaffeError(
                f"bottoms {bottom_shapes} are not (1, N, H), (1, N, 4H), (1, N)",
                layer=layer.name,
                field="bottom",
            )

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0], self.bottom_shapes[0]]

    def forward(
        self, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
    ) -> list[torch.Tensor]:
        c, h = lstm_unit(c_prev, gates, cont.detach())
        # A top of its own: the diff of c is what arrives from c's consumers, not through h.
        return [c.view_as(c), h]


def _cut(t: torch.Tensor) -> torch.Tensor:
    """An exposed final state as Caffe 1.0 gives it: the values, but gradients arriving at it are
    dropped (the layer shares only its data with the unrolled net)."""
    t = t.detach()
    return t.requires_grad_() if torch.is_grad_enabled() else t


class _Recurrent(CaffeLayer):
    n_states = 1  # hidden states carried between steps (LSTM: h and c)
    backward_note = (
        "yes, not to cont (bottom 1) nor to exposed initial states; gradients at "
        "exposed final states are dropped (Caffe 1.0)"
    )
    no_gradient = {1: "Caffe cannot back-propagate to a recurrent layer's sequence indicators"}

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.recurrent_param
        if not p.num_output:
            raise CaffeError(
                "num_output must be positive", layer=layer.name, field="recurrent_param.num_output"
            )
        self.hidden = int(p.num_output)
        self.expose_hidden = bool(p.expose_hidden)
        exposed = self.n_states if self.expose_hidden else 0
        n_static = len(bottom_shapes) - 2 - exposed
        if n_static not in (0, 1):
            raise CaffeError(
                f"{len(bottom_shapes)} bottoms: expected x, cont, an optional static "
                f"input{' and the ' + str(exposed) + ' initial states' if exposed else ''}",
                layer=layer.name,
                field="bottom",
            )
        self.static = n_static == 1
        x, cont = bottom_shapes[:2]
        if len(x) < 3 or tuple(cont) != tuple(x[:2]):
            raise CaffeError(
                f"x {x} must be (T, N, ...) and cont {cont} (T, N)",
                layer=layer.name,
                field="bottom",
            )
        self.t_steps, self.num = x[0], x[1]
        self.in_dim = math.prod(x[2:])
        if self.static:
            s = bottom_shapes[2]
            if s[0] != self.num:
                raise CaffeError(
                    f"static input {s} must be (N, ...) with N = {self.num}",
                    layer=layer.name,
                    field="bottom",
                )
            self.static_dim = math.prod(s[1:])
        # Caffe 1.0 shares only the data of exposed initial states with its unrolled net: their
        # diff is never written.
        self.no_gradient = {1: self.no_gradient[1]} | {
            i: "Caffe 1.0 does not back-propagate into exposed initial states"
            for i in range(2 + n_static, len(bottom_shapes))
        }
        want = (1, self.num, self.hidden)
        for s in bottom_shapes[2 + n_static :]:
            if tuple(s) != want:
                raise CaffeError(
                    f"initial state {s} must be {want}", layer=layer.name, field="bottom"
                )
        self._make_blobs()

    def seed_blobs(self, rng) -> list:
        """U(-a, a) with a = 1 / sqrt(inputs) per matrix (Caffe's usual uniform filler scale)."""
        out = []
        for shape in self.blob_shapes():
            a = 1.0 / math.sqrt(shape[1]) if len(shape) == 2 else 0.1
            out.append(rng.uniform(-a, a, shape))
        return out

    def top_shapes(self) -> list[Shape]:
        state = (1, self.num, self.hidden)
        return [(self.t_steps, self.num, self.hidden)] + (
            [state] * self.n_states if self.expose_hidden else []
        )

    def _split(self, xs):
        x, cont = xs[0], xs[1].detach()
        static = xs[2] if self.static else None
        states = [s.detach() for s in xs[2 + int(self.static) :]]
        return x, cont, static, states


class LSTM(_Recurrent):
    caffe_type = "LSTM"
    n_states = 2

    def blob_shapes(self) -> list[Shape]:
        g = 4 * self.hidden
        return (
            [(g, self.in_dim), (g,)]
            + ([(g, self.static_dim)] if self.static else [])
            + [(g, self.hidden)]
        )

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        x, cont, static, states = self._split(xs)
        w_x, b_x = self.blobs[0], self.blobs[1]
        w_h = self.blobs[-1]
        t_steps, n = x.shape[:2]
        x_proj = F.linear(x.reshape(t_steps, n, -1), w_x, b_x)
        s_proj = F.linear(static.reshape(n, -1), self.blobs[2]) if self.static else None
        if states:
            h, c = states[0][0], states[1][0]
        else:
            h = c = x.new_zeros(n, self.hidden)
        hs = []
        for t in range(t_steps):
            # Caffe's sum order: W_hc h_conted + (W_xc x_t + b_c) [+ W_xc_static x_static].
            gates = F.linear(h * cont[t].unsqueeze(-1), w_h) + x_proj[t]
            if s_proj is not None:
                gates = gates + s_proj
            c, h = lstm_unit(c, gates, cont[t])
            hs.append(h)
        out = [torch.stack(hs)]
        return out + ([_cut(h.unsqueeze(0)), _cut(c.unsqueeze(0))] if self.expose_hidden else [])


class RNN(_Recurrent):
    caffe_type = "RNN"

    def blob_shapes(self) -> list[Shape]:
        h = self.hidden
        return (
            [(h, self.in_dim), (h,)]
            + ([(h, self.static_dim)] if self.static else [])
            + [(h, h), (h, h), (h,)]
        )

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        x, cont, static, states = self._split(xs)
        w_x, b_x = self.blobs[0], self.blobs[1]
        w_h, w_o, b_o = self.blobs[-3], self.blobs[-2], self.blobs[-1]
        t_steps, n = x.shape[:2]
        x_proj = F.linear(x.reshape(t_steps, n, -1), w_x, b_x)
        s_proj = F.linear(static.reshape(n, -1), self.blobs[2]) if self.static else None
        h = states[0][0] if states else x.new_zeros(n, self.hidden)
        outs = []
        for t in range(t_steps):
            pre = F.linear(h * cont[t].unsqueeze(-1), w_h) + x_proj[t]
            if s_proj is not None:
                pre = pre + s_proj
            h = torch.tanh(pre)
            outs.append(torch.tanh(F.linear(h, w_o, b_o)))
        out = [torch.stack(outs)]
        return out + ([_cut(h.unsqueeze(0))] if self.expose_hidden else [])
