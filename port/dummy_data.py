"""The top shapes a ``DummyData`` layer declares (its tops are net inputs, like an Input layer's)."""

from __future__ import annotations

from .errors import CaffeError

__all__ = ["dummy_shapes"]


def dummy_shapes(param, path, line) -> list[tuple[int, ...]]:
    """The shape of each top of a DummyData layer (``shape`` or legacy num/channels/height/width)."""
    p = param.dummy_data_param
    n = len(param.top)
    legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
    if p.shape:
        if any(legacy):
            raise CaffeError(
                "give shape or num/channels/height/width, not both",
                path=path,
                layer=param.name,
                line=line,
                field="dummy_data_param.shape",
            )
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    elif any(legacy):
        if any(len(v) not in (1, n) for v in legacy):
            raise CaffeError(
                f"num, channels, height and width each need 1 or {n} values",
                path=path,
                layer=param.name,
                line=line,
                field="dummy_data_param",
            )
        shapes = [tuple(int(v[i if len(v) > 1 else 0]) for v in legacy) for i in range(n)]
    else:
        raise CaffeError(
            "DummyData needs a shape",
            path=path,
            layer=param.name,
            line=line,
            field="dummy_data_param.shape",
        )
    if len(shapes) not in (1, n):
        raise CaffeError(
            f"{len(shapes)} shapes for {n} tops",
            path=path,
            layer=param.name,
            line=line,
            field="dummy_data_param.shape",
        )
    return shapes * n if len(shapes) == 1 else shapes
