"""The options the papers compare, by name: what each one is and which config fields it reads.

One registry per kind of option. This module needs no torch, so the config (``config.py``) takes the
names it accepts from here, and the reports read an option's fields from here too. The code of each
option lives in the module the registry names and is attached there with ``@REGISTRY.implements(name)``.

Adding an option: one entry here (its name, what it is, the ``model.`` fields it reads; new fields go in
``config.py``) and one decorated function in the implementing module. ``tests/test_config.py`` checks that
every entry has its function and that the function takes exactly the fields the entry declares.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Literal


@dataclass(frozen=True)
class Option:
    """doc: one line on what it is; fields: the config fields it reads, as paths under ``model`` (e.g.
    ``assigner.threshold``). Its function takes each as a keyword named by the path's last part."""

    doc: str
    fields: tuple[str, ...] = ()

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(f.rsplit(".", 1)[-1] for f in self.fields)


@dataclass(frozen=True)
class BoxLossOption(Option):
    """on: what it compares. ``deltas``: the head's output against the family's encoded target (only a
    family that encodes, the anchors); ``boxes``: decoded boxes against the GT boxes (every family)."""

    on: Literal["deltas", "boxes"] = "boxes"


class Registry:
    """Named options of one kind. ``registry[name]`` is the :class:`Option`; ``bind(name, **values)`` is its
    function with the declared fields bound from ``values`` (extra values are ignored)."""

    def __init__(self, config_field: str, module: str, options: dict[str, Option]):
        self.config_field = config_field  # the field that names the option, e.g. model.assigner.name
        self.module = module  # where the functions are: imported on first use
        self.options = options
        self._functions: dict[str, Callable[..., Any]] = {}

    def __getitem__(self, name: str) -> Option:
        return self.options[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.options)

    def __contains__(self, name: object) -> bool:
        return name in self.options

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.options)

    def implements(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if name not in self.options:
            raise KeyError(f"{name!r} is not declared in {self.config_field}'s registry (detector/options.py)")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._functions[name] = fn
            return fn
        return register

    def function(self, name: str) -> Callable[..., Any]:
        if name not in self._functions:
            __import__(self.module)
        if name not in self._functions:
            raise KeyError(f"{self.config_field} {name!r} has no implementation in {self.module}")
        return self._functions[name]

    def bind(self, name: str, **values: Any) -> Callable[..., Any]:
        return partial(self.function(name), **{k: values[k] for k in self.options[name].keywords})

    def undeclared_keywords(self, name: str) -> set[str]:
        """The keyword parameters of ``name``'s function and its declared fields that do not match (a test)."""
        params = inspect.signature(self.function(name)).parameters.values()
        keyword_only = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        return keyword_only ^ set(self.options[name].keywords)


POINT_RULES = Registry("model.assigner.name", "detector.assigners", {
    "inside": Option("every candidate point inside its GT (FCOS without centre sampling)"),
    "pseudo_iou": Option("Pseudo-IoU >= T (paper 003, Algorithm 1)", ("assigner.threshold",)),
    "centerness": Option("FCOS centerness >= c", ("assigner.threshold",)),
    "scaled_box": Option("inside the GT box scaled by s about its centre", ("assigner.scale",)),
})
"""Anchor-free rules that keep or reject a candidate point: ``keep(ltrb (..., 4), *, fields) -> (...) bool``."""

BOX_LOSSES = Registry("model.box_loss", "detector.criterion", {
    "smooth_l1": BoxLossOption("smooth L1 on the deltas (RetinaNet)", ("smooth_l1_beta",), on="deltas"),
    "l1": BoxLossOption("L1 on the deltas", on="deltas"),
    "iou": BoxLossOption("UnitBox's -ln(IoU) of the decoded box", on="boxes"),
    "giou": BoxLossOption("1 - GIoU of the decoded box", on="boxes"),
})
"""Per-positive box losses: ``loss(matches, target deltas (P, 4) or None, *, fields) -> (P,)``."""

QUALITY_LOSSES = Registry("model.quality.loss", "detector.criterion", {
    "bce": Option("BCE against the IoU target (paper 000)"),
    "bce_neg": Option("BCE of the positives + neg_weight x BCE of the negatives against 0 (CELoss^w, paper 004)",
                      ("quality.neg_weight",)),
    "l2": Option("squared error of sigmoid(q) against the IoU target"),
    "l1": Option("absolute error of sigmoid(q) against the IoU target"),
    "smooth_l1": Option("smooth L1 of sigmoid(q) against the IoU target", ("quality.beta",)),
    "gfocal": Option("|y - p|^gamma x BCE (paper 004, eq. 13)", ("focal.gamma",)),
})
"""Quality losses, summed: ``loss(positives' logits (P,), IoU target (P,), negatives' logits (B, N) -> ()``, the
last with -inf where a prior is not a negative, and the declared fields as keywords."""
