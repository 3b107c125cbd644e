"""Immutable description of one candidate CNN: geometry, feasibility, size and cost.

Everything here is computed from the description alone, before any weight exists:
the output shape of every layer, whether the network is feasible on its input, the
parameter count (equal to ``keras.Model.count_params()``) and the FLOPs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

POOLINGS = ("max", "avg", "sum", "none")
PADDINGS = ("same", "valid")
GLOBAL_POOLINGS = ("flatten", "avg", "max")
ACTIVATIONS = ("relu", "elu", "gelu", "selu", "swish", "tanh", "sigmoid", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam")
FLIPS = ("none", "horizontal")
AMOUNTS = ("translate", "zoom", "contrast")   # an augmentation's strengths, 0: off


def output_side(side: int, window: int, stride: int, padding: str) -> int:
    """Length of one spatial side after a window slides over it.

    Args:
        side: input length.
        window: window (kernel or pool) length.
        stride: step between windows.
        padding: ``"valid"`` (``floor((side - window) / stride) + 1``) or
            ``"same"`` (``ceil(side / stride)``).

    Returns:
        The output length; below 1 means the window does not fit.
    """
    if padding == "same":
        return math.ceil(side / stride)
    return (side - window) // stride + 1


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Block:
    """``convs`` convolutions followed by an optional pooling layer.

    The stride applies to the first convolution of the block; the others use stride
    1. The pooling window moves by its own size and uses the block's padding.
    """

    filters: int = 32
    kernel_size: int = 3
    strides: int = 1
    padding: str = "same"
    activation: str = "relu"
    batch_norm: bool = False
    convs: int = 1
    pooling: str = "max"
    pool_size: int = 2

    def __post_init__(self) -> None:
        for name in ("filters", "kernel_size", "strides", "convs", "pool_size"):
            _check_positive(name, getattr(self, name))
        _check_choice("padding", self.padding, PADDINGS)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("activation", self.activation, ACTIVATIONS)


@dataclass(frozen=True)
class Head:
    """The classifier on top of the blocks."""

    global_pooling: str = "flatten"
    dense_units: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("global_pooling", self.global_pooling, GLOBAL_POOLINGS)
        if self.dense_units < 0:
            raise ValueError(f"dense_units must be >= 0, got {self.dense_units}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class Augmentation:
    """Random changes of the training images, made by Keras preprocessing layers at the
    model's input: active in training only, and left out of the saved model
    (:meth:`Architecture.for_inference`).

    ``translate`` and ``zoom`` are fractions of the image side, ``contrast`` the
    largest relative change of contrast; 0 turns one off.
    """

    flip: str = "none"
    translate: float = 0.0
    zoom: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("flip", self.flip, FLIPS)
        for name in AMOUNTS:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"augmentation {name} must be in [0, 1), got {value}")

    @property
    def active(self) -> bool:
        return bool(self.layer_names())

    def layer_names(self) -> list[str]:
        """The names of the layers it adds, in order (none when inactive)."""
        names = ["augment_flip"] if self.flip != "none" else []
        return names + [f"augment_{key}" for key in AMOUNTS if getattr(self, key)]

    def summary(self) -> str:
        """E.g. ``flip-t0.1-z0.1``; empty when inactive."""
        parts = ["flip"] if self.flip != "none" else []
        parts += [f"{key[0]}{getattr(self, key):g}" for key in AMOUNTS if getattr(self, key)]
        return "-".join(parts)


@dataclass(frozen=True)
class Layer:
    """One layer as the builder will create it, with its inferred output shape."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


@dataclass(frozen=True)
class Architecture:
    """A candidate network: input, blocks, head and the number of classes."""

    input_shape: tuple[int, int, int]
    num_classes: int
    blocks: tuple[Block, ...]
    head: Head = field(default_factory=Head)
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(
                f"input_shape must be (height, width, channels), got {self.input_shape}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")

    def for_inference(self) -> Architecture:
        """The same network without its training-only augmentation layers."""
        return replace(self, augmentation=Augmentation())

    # -- geometry ----------------------------------------------------------------

    def infeasibility(self) -> str | None:
        """Why this network cannot be built on its input, or None if it can.

        Returns:
            A reason such as ``"block 3 pooling 2x2 on a 1x1 map"``, or None.
        """
        h, w, _ = self.input_shape
        for b, block in enumerate(self.blocks, start=1):
            for c in range(1, block.convs + 1):
                stride = block.strides if c == 1 else 1
                k = block.kernel_size
                if _window_misfits(h, w, k, block.padding):
                    return f"block {b} conv {c} kernel {k}x{k} on a {h}x{w} map"
                h = output_side(h, k, stride, block.padding)
                w = output_side(w, k, stride, block.padding)
            if block.pooling != "none":
                p = block.pool_size
                if _window_misfits(h, w, p, block.padding):
                    return f"block {b} pooling {p}x{p} on a {h}x{w} map"
                h = output_side(h, p, p, block.padding)
                w = output_side(w, p, p, block.padding)
        return None

    @property
    def feasible(self) -> bool:
        """True when every window fits its input map."""
        return self.infeasibility() is None

    def layers(self) -> list[Layer]:
        """Every layer the builder creates, in order, with shapes, params and FLOPs.

        FLOPs count a multiply-add as 2 for convolutions and dense layers; pooling,
        batch norm and activations are not counted.

        Raises:
            ValueError: if the architecture is infeasible.
        """
        reason = self.infeasibility()
        if reason:
            raise ValueError(f"infeasible architecture: {reason}")
        h, w, c = self.input_shape
        out = [Layer(name, "augmentation", (h, w, c), 0, 0)
               for name in self.augmentation.layer_names()]
        for b, block in enumerate(self.blocks, start=1):
            for i in range(1, block.convs + 1):
                stride = block.strides if i == 1 else 1
                k, f = block.kernel_size, block.filters
                h = output_side(h, k, stride, block.padding)
                w = output_side(w, k, stride, block.padding)
                bias = 0 if block.batch_norm else f
                out.append(Layer(f"block{b}_conv{i}", "conv", (h, w, f),
                                 k * k * c * f + bias, 2 * k * k * c * f * h * w))
                if block.batch_norm:
                    out.append(Layer(f"block{b}_bn{i}", "batch_norm", (h, w, f), 4 * f, 0))
                out.append(Layer(f"block{b}_act{i}", "activation", (h, w, f), 0, 0))
                c = f
            if block.pooling != "none":
                p = block.pool_size
                h = output_side(h, p, p, block.padding)
                w = output_side(w, p, p, block.padding)
                out.append(Layer(f"block{b}_pool", f"{block.pooling}_pool", (h, w, c), 0, 0))
        features = h * w * c if self.head.global_pooling == "flatten" else c
        out.append(Layer("head_pool", self.head.global_pooling, (features,), 0, 0))
        if self.head.dense_units:
            units = self.head.dense_units
            out.append(Layer("head_dense", "dense", (units,), features * units + units,
                             2 * features * units))
            features = units
            if self.head.dropout:
                out.append(Layer("head_dropout", "dropout", (units,), 0, 0))
        k = self.num_classes
        out.append(Layer("output", "dense", (k,), features * k + k, 2 * features * k))
        return out

    @property
    def params(self) -> int:
        """Total parameter count, trainable and not, as ``count_params()`` reports."""
        return sum(layer.params for layer in self.layers())

    @property
    def flops(self) -> int:
        """FLOPs of one forward pass of one image."""
        return sum(layer.flops for layer in self.layers())

    # -- text and serialisation --------------------------------------------------

    def summary(self) -> str:
        """The network in one line, e.g. ``8x8x1 | 32c3s1-max2 | flatten-d64 | 10``
        (``28x28x1 aug:flip-t0.1 | ...`` with augmentation)."""
        blocks = []
        for block in self.blocks:
            conv = f"{block.filters}c{block.kernel_size}s{block.strides}"
            conv += "" if block.convs == 1 else f"x{block.convs}"
            conv += "-bn" if block.batch_norm else ""
            conv += "" if block.padding == "same" else "-valid"
            if block.activation != "relu":
                conv += f"-{block.activation}"
            pool = "" if block.pooling == "none" else f"-{block.pooling}{block.pool_size}"
            blocks.append(conv + pool)
        head = self.head.global_pooling
        if self.head.dense_units:
            head += f"-d{self.head.dense_units}"
            head += f"-drop{self.head.dropout:g}" if self.head.dropout else ""
        shape = "x".join(map(str, self.input_shape))
        augment = self.augmentation.summary()
        shape += f" aug:{augment}" if augment else ""
        return f"{shape} | {' '.join(blocks) or '-'} | {head} | {self.num_classes}"

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return asdict(self)

    def to_json(self) -> str:
        """The architecture as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        """Rebuild an architecture from :meth:`to_dict` output."""
        return cls(
            input_shape=tuple(data["input_shape"]),
            num_classes=data["num_classes"],
            blocks=tuple(Block(**block) for block in data["blocks"]),
            head=Head(**data.get("head", {})),
            augmentation=Augmentation(**data.get("augmentation", {})),
        )


def _window_misfits(h: int, w: int, window: int, padding: str) -> bool:
    """A ``valid`` window larger than the map leaves nothing; ``same`` always fits."""
    return padding == "valid" and (window > h or window > w)
