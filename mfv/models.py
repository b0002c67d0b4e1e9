"""One small adapter so Caffe ports and torchvision models look the same to MFV.

A :class:`Model` holds a ``torch.nn.Module``, its :class:`~mfv.pixels.PixelConvention` and a way to read
named layers: Caffe blob names for modules built by ``port`` (``net(x, blobs=[...])``, pycaffe
meaning: a blob's value after its in-place layers), module paths for anything else (forward hooks),
plus ``output`` (what the module returns) and ``prob`` (its softmax) where the module has no such blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

import port
from port.plugins import load_plugins
from port.verdict import check_parity
from port.zoo import zoo_model

from . import pixels as px
from .errors import MfvError

__all__ = ["Model", "ModelArgs", "ModelSpec", "MODEL_SPECS", "model_spec", "wrap", "load_model"]

SCHEDULES = Path(__file__).resolve().parent / "schedules"


@dataclass(frozen=True)
class ModelSpec:
    """What MFV knows about a named model: where it comes from and its sensible defaults."""

    name: str
    source: str  # "caffe" (port.zoo name in ``zoo``) or "torchvision" (builder name in ``zoo``)
    zoo: str
    convention: px.PixelConvention
    target_layer: str  # logits; MFV's default target
    code_layer: str  # the "fc7" of this net: codes for mean images and evaluation
    schedule: str  # file name under mfv/schedules
    prob_layer: str = "prob"

    @property
    def schedule_path(self) -> Path:
        return SCHEDULES / self.schedule


def _caffe(name: str, convention: px.PixelConvention, code_layer: str, schedule: str) -> ModelSpec:
    # The target (logits) blob is the zoo's classifier blob: one place knows it.
    return ModelSpec(
        name, "caffe", name, convention, zoo_model(name).classifier, code_layer, schedule
    )


#: MFV's named models (port.zoo's ``MODELS`` are the Caffe files these load).
MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _caffe("caffenet", px.CAFFENET, "fc7", "caffenet.json"),
        _caffe("bvlc_reference_caffenet", px.CAFFENET, "fc7", "caffenet.json"),
        _caffe("alexnet", px.CAFFENET, "fc7", "caffenet.json"),
        _caffe("vgg16", px.CAFFE_VGG16, "fc7", "vgg16.json"),
        _caffe("googlenet", px.CAFFE_224, "pool5/7x7_s1", "googlenet.json"),
        _caffe("squeezenet1.0", px.CAFFENET, "fire9/concat", "squeezenet.json"),
        _caffe("squeezenet1.1", px.CAFFENET, "fire9/concat", "squeezenet.json"),
        ModelSpec(
            "torchvision.alexnet",
            "torchvision",
            "alexnet",
            px.TORCHVISION,
            "classifier.6",
            "classifier.5",
            "alexnet224.json",
        ),
        ModelSpec(
            "torchvision.vgg16",
            "torchvision",
            "vgg16",
            px.TORCHVISION,
            "classifier.6",
            "classifier.4",
            "vgg16.json",
        ),
        ModelSpec(
            "torchvision.googlenet",
            "torchvision",
            "googlenet",
            px.TORCHVISION,
            "fc",
            "avgpool",
            "googlenet.json",
        ),
        ModelSpec(
            "torchvision.squeezenet1_0",
            "torchvision",
            "squeezenet1_0",
            px.TORCHVISION,
            "output",
            "features",
            "squeezenet224.json",
        ),
        ModelSpec(
            "torchvision.squeezenet1_1",
            "torchvision",
            "squeezenet1_1",
            px.TORCHVISION,
            "output",
            "features",
            "squeezenet224.json",
        ),
    )
}


def model_spec(name: str) -> ModelSpec | None:
    """The spec of a named model; None for ``"caffe"`` (a definition given by hand).

    The one place a model name is checked (:func:`load_model`, sweeps, the command line).

    Raises
    ------
    MfvError
        For a name that is neither ``"caffe"`` nor a key of :data:`MODEL_SPECS`.
    """
    spec = MODEL_SPECS.get(name)
    if spec is None and name != "caffe":
        raise MfvError(f"unknown model {name!r}; known: caffe, {', '.join(MODEL_SPECS)}")
    return spec


@dataclass
class Model:
    """A network as MFV sees it.

    Attributes
    ----------
    module : torch.nn.Module
        The network, in eval mode.
    convention : PixelConvention
        Its pixel convention; :meth:`activations` takes pixel space and applies it.
    name : str
        Label for outputs.
    spec : ModelSpec or None
        Defaults (target, code layer, schedule) when the model is a known one.
    info : dict
        Provenance recorded in every output: weights, seed, parity verdict.
    """

    module: nn.Module
    convention: px.PixelConvention
    name: str = "model"
    spec: ModelSpec | None = None
    info: dict = field(default_factory=dict)
    _shapes: dict | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.module.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @property
    def prob_layer(self) -> str:
        """The softmax blob the evaluation ranks by: the spec's, else ``prob`` (Caffe's name)."""
        return self.spec.prob_layer if self.spec else "prob"

    @property
    def is_caffe(self) -> bool:
        return hasattr(self.module, "blob_names")

    def activations(self, pixels: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Forward a batch in pixel space ((N, 3, H, W) RGB grey levels); return the named layers."""
        x = self.convention.to_network(pixels.to(device=self.device, dtype=self.dtype))
        if self.is_caffe:
            return _caffe_forward(self.module, x, layers)
        return _hook_forward(self.module, x, layers)

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every addressable layer and its per-image shape, in forward order."""
        if self._shapes is None:
            h, w = self.convention.input_size
            x = torch.full((1, 3, h, w), 128.0)
            with torch.no_grad():
                if self.is_caffe:
                    acts = self.activations(x, "all")
                else:
                    acts = self.activations(x, _hook_names(self.module) + ["output", "prob"])
            self._shapes = {k: tuple(v.shape[1:]) for k, v in acts.items() if torch.is_tensor(v)}
        return self._shapes


def _caffe_forward(net: nn.Module, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    out = net(x, blobs=layers if layers == "all" else list(layers))
    return dict(out)


def _hook_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_modules() if n]


def _hook_forward(module: nn.Module, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    layers = list(layers)
    mods = dict(module.named_modules())
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        if name in ("output", "prob"):
            continue
        if name not in mods:
            raise KeyError(f"no layer {name!r}; `python -m mfv layers --model ...` lists them")

        def hook(_m, _inp, out, name=name):
            if torch.is_tensor(out):
                acts.setdefault(name, out)  # a module called twice keeps its first output

        handles.append(mods[name].register_forward_hook(hook))
    try:
        out = module(x)
    finally:
        for h in handles:
            h.remove()
    if not torch.is_tensor(out):  # GoogLeNet in training mode returns a namedtuple
        out = out[0]
    if "output" in layers:
        acts["output"] = out
    if "prob" in layers:
        acts["prob"] = torch.softmax(out.reshape(out.shape[0], -1), dim=1)
    return acts


def wrap(
    module: nn.Module,
    convention: px.PixelConvention,
    *,
    name: str = "model",
    spec: ModelSpec | None = None,
    info: dict | None = None,
) -> Model:
    """Make any module usable by MFV.

    Puts the module in eval mode, freezes its parameters, and turns off in-place ReLUs, because an in-place ReLU would
    overwrite the output a hook captured (and break autograd through it); module paths then mean
    "this module's own output".
    """
    module.eval()
    # MFV never trains: without this, every step also computes (and accumulates) weight gradients,
    # which for CaffeNet's fc6 costs more than the input gradient itself.
    for p in module.parameters():
        p.requires_grad_(False)
    for m in module.modules():
        if isinstance(m, nn.ReLU) and m.inplace:
            m.inplace = False
    return Model(module, convention, name=name, spec=spec, info=dict(info or {}))


def load_model(
    name: str,
    *,
    prototxt: str | Path | None = None,
    caffemodel: str | Path | None = None,
    weights: str | Path | None = None,
    weight_seed: int = 0,
    device: str = "cpu",
    parity_check: bool = True,
    parity_file: str | Path | None = None,
    proto: str | Path | None = None,
    plugins: Sequence[str] = (),
    accurate: bool = False,
) -> Model:
    """Load a named model (see :data:`MODEL_SPECS`), seeded when no weights are given.

    Parameters
    ----------
    name : str
        A key of :data:`MODEL_SPECS` (Caffe nets by their ``port.zoo`` name, torchvision nets as
        ``torchvision.<builder>``), or ``caffe`` with ``prototxt`` for any other Caffe definition.
    prototxt, caffemodel : path, optional
        Caffe definition (defaults to the zoo's) and weights (default: ``port.seed_weights``).
    weights : path, optional
        torchvision ``state_dict`` file (``torch.save``); nothing is downloaded.
    weight_seed : int
        Seed for seeded weights.
    device : str
        Torch device.
    parity_check : bool
        Refuse a Caffe model without a passing parity verdict (see :mod:`port.verdict`).
    parity_file : path, optional
        Verdict file to use instead of the default location.
    proto : path, optional
        A Caffe fork's caffe.proto whose extra fields the definition uses (``port`` reads it
        without protoc).
    plugins : sequence of str
        Python files or modules run first; they register custom layer types with
        ``port.register_layer``.
    accurate : bool
        Build a Caffe port in its accurate mode (float32 blobs, float64 arithmetic in every layer,
        ``port.CaffeNet(accumulate="float64")``; slower) and require the parity verdict of that
        configuration; default: the fast port and its verdict.
    """
    spec = model_spec(name)
    load_plugins(plugins)
    if name == "caffe" or spec.source == "caffe":
        return _load_caffe(
            spec,
            prototxt,
            caffemodel,
            weight_seed,
            device,
            parity_check,
            parity_file,
            proto,
            tuple(plugins),
            accurate=accurate,
        )
    if accurate:
        raise MfvError("--accurate applies to Caffe models (the port), not to torchvision ones")
    return _load_torchvision(spec, weights, weight_seed, device)


def _read_state_dict(weights) -> dict:
    """A ``torch.save``-d state_dict of tensors; anything else is an MfvError naming the file."""
    import pickle

    if not Path(weights).is_file():
        raise MfvError(f"{weights}: no such file (--weights)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused the file (other Python objects, or no torch file at all): say so
        # without torch's advice to turn the guard off.
        raise MfvError(
            f"{weights}: refused: not a torch.save file of tensors only (it holds other Python "
            "objects, which are never loaded, or is no torch file); save the weights with "
            "torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise MfvError(
            f"{weights}: not a torch.save file ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(state, dict):
        raise MfvError(f"{weights}: holds a {type(state).__name__}, not a state_dict")
    return state


def _load_torchvision(spec: ModelSpec, weights, seed: int, device: str) -> Model:
    import torchvision.models as tvm

    builder = getattr(tvm, spec.zoo)
    kwargs = {"weights": None}
    if spec.zoo == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    torch.manual_seed(seed)
    module = builder(**kwargs)
    info = {"source": "torchvision", "builder": spec.zoo}
    if weights is not None:
        state = _read_state_dict(weights)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:  # load_state_dict's one error type: keys or shapes differ
            first = str(exc).strip().splitlines()[0]
            raise MfvError(f"{weights}: not a {spec.zoo} state_dict: {first}") from None
        info["weights"] = str(weights)
    else:
        _he_seed(module, seed)
        info["weights"] = None
        info["weight_seed"] = seed
        info["weight_init"] = (
            "He-normal N(0, 2/fan_in) weights, N(0, 0.01^2) biases (as port.seed_weights)"
        )
    info["parity"] = {"checked": False, "status": "not applicable", "message": "not a Caffe port"}
    module.to(device)
    return wrap(module, spec.convention, name=spec.name, spec=spec, info=info)


def _he_seed(module: nn.Module, seed: int) -> None:
    """Scale-preserving seeded weights for a torchvision architecture.

    torchvision's own initialisation of GoogLeNet (truncated normal, std 0.01, behind BatchNorm with
    unit running statistics) makes the seeded net's output independent of its input (measured: all
    facets ended at the same logit, fc7-code distances ~1e-11), which leaves nothing to visualise.
    He-normal keeps activations alive through any depth, like ``port.seed_weights`` for Caffe nets.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.01, generator=g)


def _load_caffe(
    spec,
    prototxt,
    caffemodel,
    seed,
    device,
    parity_check,
    parity_file,
    proto=None,
    plugins=(),
    *,
    accurate: bool = False,
) -> Model:
    if prototxt is None:
        if spec is None:
            raise MfvError("model 'caffe' needs --prototxt")
        prototxt = zoo_model(spec.zoo).prototxt
    # Read the verdict before the expensive load: refusing early is the point of the gate. It must
    # vouch for the configuration that runs (the accurate mode is judged apart from the fast one).
    configuration = "accurate" if accurate else "float32"
    parity = check_parity(
        prototxt,
        caffemodel,
        seed=None if caffemodel else seed,
        verdict_file=parity_file,
        required=parity_check,
        configuration=configuration,
    )
    net = port.load_caffe(
        str(prototxt),
        None if caffemodel is None else str(caffemodel),
        proto=proto,
        accumulate="float64" if accurate else "float32",
    )
    if caffemodel is None:
        net.load_blobs(port.seed_weights(net.netdef, seed))
    net.to(device)
    conv = spec.convention if spec is not None else px.CAFFENET
    shape = next(iter(net.netdef.inputs.values()))
    conv = px.convention_for(conv, input_size=(int(shape[-2]), int(shape[-1])))
    info = {
        "source": "caffe",
        "prototxt": str(prototxt),
        "caffemodel": None if caffemodel is None else str(caffemodel),
        "weight_seed": None if caffemodel else seed,
        "parity": parity,
        "configuration": configuration,
        **({"proto": str(proto)} if proto is not None else {}),
        **({"plugins": list(plugins)} if plugins else {}),
    }
    return wrap(net, conv, name=spec.name if spec else Path(prototxt).stem, spec=spec, info=info)


@dataclass(frozen=True)
class ModelArgs:
    """:func:`load_model`'s arguments but the device, hashable and picklable: what a sweep sends
    its workers and the key of a worker's model cache. Each field is the keyword of the same name.

    Paths are absolute after :meth:`resolved`: workers read them at the same path.
    """

    name: str
    prototxt: str | None = None
    caffemodel: str | None = None
    weights: str | None = None
    weight_seed: int = 0
    parity_check: bool = True
    parity_file: str | None = None
    proto: str | None = None
    plugins: tuple[str, ...] = ()
    accurate: bool = False

    def identity(self) -> dict:
        """The fields as JSON; a fork's proto, plugins and the accurate mode appear only when
        given, so that sweeps made before they existed resume."""
        out = asdict(self)
        for extra in ("proto", "plugins", "accurate"):
            if not out[extra]:
                del out[extra]
        if "plugins" in out:
            out["plugins"] = list(out["plugins"])
        return out

    def resolved(self) -> ModelArgs:
        def absolute(p):
            return None if p is None else str(Path(p).resolve())

        return replace(
            self,
            prototxt=absolute(self.prototxt),
            caffemodel=absolute(self.caffemodel),
            weights=absolute(self.weights),
            parity_file=absolute(self.parity_file),
            proto=absolute(self.proto),
            # A plugin file is read by the workers at the same path; a module name stays a name.
            plugins=tuple(absolute(p) if Path(p).is_file() else p for p in self.plugins),
        )

    def load(self, device: str = "cpu") -> Model:
        """:func:`load_model` with these arguments on ``device``."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        return load_model(self.name, device=device, **kwargs)
