"""Built-in model definitions: the ones the project itself tests and ships goldens for.

The Caffe reference definitions are read from the shared reference folder beside the checkout
(``../shared/reference``, or ``$CAFFE_MFV_SHARED/reference``); the project never copies them. VGG16 is
the exception: its legacy V1 definition is written by this project and ships in ``port/models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import CaffeError
from .paths import shared_root

__all__ = ["MODELS", "ZooModel", "shared_root", "zoo_model"]

_PACKAGE_MODELS = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ZooModel:
    """A built-in network: its name, definition file and the blob goldens backpropagate from."""

    name: str
    relative: str  # path under shared/reference, or under port/models when ``bundled``
    classifier: str  # the last classifier blob (one-hot target of goldens)
    bundled: bool = False

    @property
    def prototxt(self) -> Path:
        if self.bundled:
            return _PACKAGE_MODELS / self.relative
        return shared_root() / "reference" / self.relative


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("caffenet", "mfv-original/deploy_alexnet_updated.prototxt", "fc8"),
        ZooModel(
            "bvlc_reference_caffenet", "model-zoo/bvlc_reference_caffenet/deploy.prototxt", "fc8"
        ),
        ZooModel("alexnet", "model-zoo/bvlc_alexnet/deploy.prototxt", "fc8"),
        ZooModel("vgg16", "vgg16_v1.prototxt", "fc8", bundled=True),
        ZooModel("googlenet", "model-zoo/bvlc_googlenet/deploy.prototxt", "loss3/classifier"),
        ZooModel("squeezenet1.0", "model-zoo/SqueezeNet_v1.0/deploy.prototxt", "pool10"),
        ZooModel("squeezenet1.1", "model-zoo/SqueezeNet_v1.1/deploy.prototxt", "pool10"),
    )
}


def zoo_model(name: str) -> ZooModel:
    """Look up a built-in model by name; the error lists the names there are."""
    try:
        return MODELS[name]
    except KeyError:
        raise CaffeError(f"unknown model {name!r}; built-in models: {', '.join(MODELS)}") from None
