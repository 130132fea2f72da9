"""The method registry: ``create_method``, ``list_methods``, ``get_method_info``.

Every method registers a factory under its paper name in snake_case. Functions accept either a
registry name or a ready :class:`~sparsetrain.methods.base.SparsityMethod`, so the CLI and Python
share one entry point.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sparsetrain._registry import Registry
from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.options import validate


@dataclass(frozen=True)
class MethodInfo:
    """What a registered method is and can do.

    Attributes:
        name: Registry key.
        factory: Callable building the method from keyword arguments.
        description: One line for ``sparsetrain list``.
        paper: Short citation of the method's paper.
        sparsity_mode: ``"target"`` (reaches a set sparsity) or ``"emergent"`` (sparsity follows
            from a regulariser, e.g. SCL or STR); emergent methods report but never fail.
        dense_grad: ``"never"``, ``"update"`` (on topology-update steps only) or ``"always"``.
        sparse_execution: Whether the method can run on sparse kernels between updates.
    """

    name: str
    factory: Callable[..., SparsityMethod]
    description: str
    paper: str
    sparsity_mode: Literal["target", "emergent"] = "target"
    dense_grad: Literal["never", "update", "always"] = "never"
    sparse_execution: bool = False


_REGISTRY: Registry[MethodInfo] = Registry("method")


def register_method(
    name: str,
    *,
    description: str,
    paper: str,
    sparsity_mode: Literal["target", "emergent"] = "target",
    dense_grad: Literal["never", "update", "always"] = "never",
    sparse_execution: bool = False,
) -> Callable[[Callable[..., SparsityMethod]], Callable[..., SparsityMethod]]:
    """Decorator registering a method factory under ``name`` (warns on duplicates)."""

    def deco(factory: Callable[..., SparsityMethod]) -> Callable[..., SparsityMethod]:
        info = MethodInfo(
            name, factory, description, paper, sparsity_mode, dense_grad, sparse_execution
        )
        _REGISTRY.add(name, info)
        return factory

    return deco


def get_method_info(name: str) -> MethodInfo:
    """The :class:`MethodInfo` of a registered method."""
    return _REGISTRY.lookup(name)


def list_methods(pattern: str | None = None) -> list[str]:
    """Registered method names, sorted, optionally filtered by a glob."""
    return _REGISTRY.names(pattern)


def create_method(method: str | SparsityMethod, **kwargs: Any) -> SparsityMethod:
    """Build a method by registry name, or pass through a ready method object.

    Args:
        method: Registry name (see :func:`list_methods`) or a ``SparsityMethod``.
        **kwargs: Keyword arguments of the method (e.g. ``sparsity=0.9``).

    Returns:
        The (unattached) method.

    >>> create_method("rigl", sparsity=0.9, total_steps=1000).name
    'rigl'
    """
    if isinstance(method, SparsityMethod):
        if kwargs:
            raise TypeError(
                "keyword arguments given with a ready method object; pass one or the other"
            )
        return method
    info = get_method_info(method)
    cls = method_class(info.factory)
    validate(method, SparsityMethod if cls is None else cls, method_options(info.factory), kwargs)
    return info.factory(**kwargs)


def method_options(factory: Callable[..., Any]) -> dict[str, Any]:
    """Keyword options a factory accepts, with defaults, following ``**kwargs`` up the MRO."""
    out: dict[str, Any] = {}
    preset = (factory, {}) if isinstance(factory, type) else getattr(factory, "preset", None)
    chain = [factory] if preset is None else list(preset[0].__mro__)
    defaults = {} if preset is None else preset[1]
    for fn in chain:
        init = fn if preset is None else fn.__dict__.get("__init__")
        if init is None or init is object.__init__:
            continue
        more = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                more = True
            elif p.name != "self" and p.kind is not p.VAR_POSITIONAL:
                out.setdefault(p.name, defaults.get(p.name, p.default))
        if not more:
            break
    return out


def method_class(factory: Callable[..., Any]) -> type[SparsityMethod] | None:
    """The class a registered factory builds (a class, or a :func:`preset` of one), if known."""
    if isinstance(factory, type):
        return factory
    made = getattr(factory, "preset", None)
    return None if made is None else made[0]


def preset(cls: type[SparsityMethod], name: str, **defaults: Any) -> Callable[..., SparsityMethod]:
    """A factory building ``cls`` with ``defaults`` (overridable) and registry name ``name``."""

    def factory(**kwargs: Any) -> SparsityMethod:
        method = cls.__new__(cls)
        method.name = name  # before __init__: its errors name the method the user asked for
        method.__init__(**{**defaults, **kwargs})  # type: ignore[misc]
        return method

    factory.preset = (cls, defaults)  # type: ignore[attr-defined]
    factory.__name__ = name
    factory.__doc__ = f"{cls.__name__} preset {name!r}: {defaults}"
    return factory
