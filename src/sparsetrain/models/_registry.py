"""The model registry: ``register_model``, ``create_model``, ``list_models``, ``get_model_info``.

Like timm's: each factory registers under a snake_case name with a one-line description and
takes ``num_classes`` and the per-example ``input_shape`` plus flat keyword options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from sparsetrain._registry import Registry, plain_name

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model.

    Attributes:
        name: Registry key.
        factory: ``factory(num_classes=..., input_shape=..., **options) -> nn.Module``.
        description: One line for ``sparsetrain list``.
        channels_last: Whether the model is a 2-D conv net that runs faster in
            ``torch.channels_last`` memory format.
    """

    name: str
    factory: ModelFactory
    description: str
    channels_last: bool = False

    def options(self) -> dict[str, Any]:
        """Model-specific keyword options of the factory, with their defaults."""
        params = inspect.signature(self.factory).parameters.values()
        return {p.name: p.default for p in params if p.name not in ("num_classes", "input_shape")}


_MODELS: Registry[ModelInfo] = Registry("model", normalise=plain_name)


def register_model(
    name: str, *, description: str, channels_last: bool = False
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a model factory under ``name`` (warns on duplicates)."""

    def deco(factory: ModelFactory) -> ModelFactory:
        _MODELS.add(name, ModelInfo(name, factory, description, channels_last))
        return factory

    return deco


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model (``-`` and ``_`` are interchangeable)."""
    return _MODELS.lookup(name)


def list_models(pattern: str | None = None) -> dict[str, str]:
    """Registered models as ``{name: one-line description}``, sorted, optionally glob-filtered.

    >>> list(list_models("resnet*"))
    ['resnet20', 'resnet32', 'resnet50', 'resnet56']
    """
    return {name: _MODELS[name].description for name in _MODELS.names(pattern)}


def uses_channels_last(name: str) -> bool:
    """Whether the registered model is a 2-D conv net that prefers ``torch.channels_last``."""
    return get_model_info(name).channels_last


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared parameters counted once).

    Args:
        model: Any module.
        trainable_only: Count only parameters with ``requires_grad``.

    >>> count_parameters(nn.Linear(784, 300))
    235500
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


def _check_input_shape(input_shape: object) -> tuple[int, ...]:
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(
            f"input_shape must be positive ints, e.g. (1, 28, 28), got {input_shape!r}"
        )
    return shape


def create_model(
    name: str, *, num_classes: int, input_shape: Sequence[int], **options: Any
) -> nn.Module:
    """Build a registered model.

    Parameters are initialised from torch's global RNG, so ``torch.manual_seed`` fixes them.
    Models return logits (no softmax).

    Args:
        name: Registry name (see :func:`list_models`).
        num_classes: Output size.
        input_shape: Per-example input shape, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``; usually
            ``DatasetSplits.input_shape``.
        **options: Model-specific options, e.g. ``hidden_sizes=(512,)`` for ``mlp``.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ValueError: Unknown name (with close matches) or an input shape the model cannot take.
        TypeError: Unknown option for this model.

    >>> model = create_model("lenet300_100", num_classes=10, input_shape=(1, 28, 28))
    >>> count_parameters(model)
    266610
    """
    info = get_model_info(name)
    valid = info.options()
    bad = sorted(k for k in options if k not in valid)
    if bad:
        listed = ", ".join(valid) or "none"
        raise TypeError(f"model {info.name!r} got unknown option(s) {bad}; valid: {listed}")
    return info.factory(
        num_classes=_check_num_classes(num_classes),
        input_shape=_check_input_shape(input_shape),
        **options,
    )


def expect_rank(model: str, input_shape: tuple[int, ...], rank: int, example: str) -> None:
    """Raise a ValueError unless ``input_shape`` has ``rank`` dimensions (channels first)."""
    if len(input_shape) != rank:
        raise ValueError(
            f"{model} needs input_shape with {rank} dims, e.g. {example}, got {input_shape}"
        )
