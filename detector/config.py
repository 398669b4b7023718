"""The detector's configuration tree: every knob the papers vary, defaults in one place.

A config is validated once, up front: unknown keys, out-of-range values and unknown names are
errors that name the field path (``model.quality.loss``) before any compute is spent.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .options import BOX_LOSSES, POINT_RULES, QUALITY_LOSSES


class Strict(BaseModel):
    # NaN and infinities are refused everywhere: `lr: .nan` would otherwise train to NaN after startup.
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class BackboneConfig(Strict):
    name: Literal["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d",
                  "resnext101_64x4d"] = "resnet50"
    """resnet10 (one BasicBlock per stage, no ImageNet weights) is a from-scratch stand-in for smoke profiles."""
    pretrained: str = "imagenet"
    """``none`` | ``imagenet`` (torchvision weights from the local torch cache) | a file path."""
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    """Frozen BN as in the papers; ``bn``/``gn`` for training from scratch (frozen random BN is an identity)."""
    frozen_stages: int = Field(1, ge=0, le=4)
    """0: nothing frozen; 1: stem + stage 1 (the papers); k: stem + stages 1..k."""
    deformable_stages: list[Literal[3, 4, 5]] = Field(default_factory=list)
    """Stages (c3 = layer2 ... c5 = layer4) whose 3x3 convs are modulated deformable convs (DCNv2, offsets and
    masks from a zero-initialised conv): ``[3, 4, 5]`` is the authors' ``stage_with_dcn`` of Pseudo-IoU Table 4."""

    @model_validator(mode="after")
    def _weights_exist(self) -> "BackboneConfig":
        if self.name == "resnet10" and self.pretrained == "imagenet":
            raise ValueError("resnet10 has no ImageNet weights in torchvision: set pretrained: none (or a file)")
        if len(set(self.deformable_stages)) != len(self.deformable_stages):
            raise ValueError(f"deformable_stages {self.deformable_stages}: a stage is listed twice")
        frozen = [c for c in self.deformable_stages if c - 1 <= self.frozen_stages]
        if frozen:
            raise ValueError(f"deformable_stages {frozen} lie in frozen_stages {self.frozen_stages}: their offsets "
                             f"could never learn (freeze fewer stages)")
        return self


class HeadConfig(Strict):
    depth: int = Field(4, ge=0, le=8)
    width: int = Field(256, ge=8)
    norm: Literal["none", "gn"] = "none"


class QualityConfig(Strict):
    branch: Literal["none", "iou", "conf"] = "none"
    """``iou``: on the regression tower (paper 000); ``conf``: on the classification tower (paper 004)."""
    loss: Literal[QUALITY_LOSSES.names] = "bce"
    """A name of ``options.QUALITY_LOSSES``."""
    beta: float = Field(1.0, gt=0.0)
    """The smooth-L1 beta of ``loss: smooth_l1`` (paper 004 gives none: mmdetection's SmoothL1Loss default; the
    box loss has its own, ``model.smooth_l1_beta``)."""
    neg_weight: float = Field(1e-4, ge=0.0, le=1.0)
    """Weight of the negatives' BCE term for ``bce_neg`` (CELoss^w of paper 004)."""
    detach: bool = True
    """False is the dagger variant of paper 000: the quality loss reaches the regression branch."""
    weight: float = Field(1.0, ge=0.0)


class AssignerConfig(Strict):
    name: Literal[("max_iou", *POINT_RULES.names)] = "max_iou"
    """``max_iou`` (RetinaNet's anchors) or an anchor-free rule of ``options.POINT_RULES``."""
    pos_iou: float = Field(0.5, ge=0.0, le=1.0)
    neg_iou: float = Field(0.4, ge=0.0, le=1.0)
    threshold: float = Field(0.4, ge=0.0, le=1.0)
    """T of ``pseudo_iou`` and c of ``centerness``."""
    scale: float = Field(0.5, gt=0.0, le=1.0)
    """s of ``scaled_box``."""
    near_crowd: Literal["negative", "ignore"] = "negative"
    """Priors near a crowd (COCO) / difficult (VOC) box, which is never a positive: ``negative`` as in the
    papers' code (mmdetection, ``ignore_iof_thr=-1``); ``ignore``: neither positive nor negative (anchors at
    IoU >= neg_iou with it, points inside it), as detectron2."""

    @model_validator(mode="after")
    def _neg_below_pos(self) -> "AssignerConfig":
        if self.neg_iou > self.pos_iou:
            raise ValueError(f"neg_iou ({self.neg_iou}) must not exceed pos_iou ({self.pos_iou})")
        return self


class FocalConfig(Strict):
    alpha: float = Field(0.25, ge=0.0, le=1.0)
    gamma: float = Field(2.0, ge=0.0)


class ModelConfig(Strict):
    arch: Literal["retinanet", "anchor_free"] = "retinanet"
    backbone: BackboneConfig = BackboneConfig()
    fpn_width: int = Field(256, ge=8)
    anchor_scale: float = Field(4.0, gt=0)
    """Octave base scale: the smallest anchor of a level is anchor_scale x stride (4 in the papers; smaller
    for tiny inputs, where objects are smaller than 4 x 8 px)."""
    head: HeadConfig = HeadConfig()
    quality: QualityConfig = QualityConfig()
    box_loss: Literal[BOX_LOSSES.names] = "smooth_l1"
    """A name of ``options.BOX_LOSSES``."""
    box_loss_weight: float = Field(1.0, ge=0.0)
    smooth_l1_beta: float = Field(0.11, gt=0.0)
    assigner: AssignerConfig = AssignerConfig()
    centerness: bool = False
    focal: FocalConfig = FocalConfig()

    @model_validator(mode="after")
    def _arch_consistency(self) -> "ModelConfig":
        if self.arch == "retinanet":
            if self.assigner.name != "max_iou":
                raise ValueError(f"assigner.name {self.assigner.name!r} needs arch anchor_free; retinanet uses max_iou")
            if self.centerness:
                raise ValueError("centerness branch is anchor_free only")
        else:
            if self.assigner.name not in POINT_RULES:
                raise ValueError(f"assigner.name {self.assigner.name!r} is anchor-based; anchor_free takes one of {sorted(POINT_RULES)}")
            on_boxes = [name for name in BOX_LOSSES if BOX_LOSSES[name].on == "boxes"]
            if self.box_loss not in on_boxes:
                raise ValueError(f"box_loss {self.box_loss!r}: anchor_free regresses distances and takes one of {on_boxes}")
        return self


class SyntheticConfig(Strict):
    """The synthetic set (detector/data/synthetic.py): images per split, their side in pixels, and the
    generator's version and settings; all of it is in every trial's params."""

    train: int = Field(400, ge=1, le=1_000_000)
    val: int = Field(100, ge=1, le=1_000_000)
    size: int = Field(256, ge=32, le=4096)
    """Square images; 4096 px keeps one image's rendering buffers under ~1 GiB."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    generator: Literal[2] = 2
    """The generator's version (detector/data/synthetic.py), raised whenever what a seed draws changes: a set
    written by another version is rewritten, never reused."""
    occlusion: float = Field(0.0, ge=0.0, le=0.9)
    """At most this fraction of an object's box may be hidden by objects drawn later (0: none overlap; 0.1 cost
    VOC AP90 half its value at the main job's budget)."""
    edge_blur: float = Field(2.0, ge=0.0, le=32.0)
    """Each object's edge is blurred by a Gaussian of sigma drawn from [0, edge_blur] px (at ``size``): its
    extent is uncertain by about that much (the data's localisation difficulty)."""
    truncation: float = Field(0.5, ge=0.0, le=1.0)
    """The share of objects that may reach past the image's border (by up to half their side); their box is the
    part inside, as VOC's boxes are: a partial shape is harder to recognise, not to localise."""


class DataConfig(Strict):
    kind: Literal["synthetic", "coco", "voc"] = "synthetic"
    root: str = "data/synthetic"
    """Dataset root. Synthetic: a folder written by ``ablab data synthetic`` (made on demand if missing).
    COCO: the folder holding ``annotations/`` and the image folders. VOC: the ``VOCdevkit`` folder."""
    train_split: str = "train"
    """COCO: ``train2017``; VOC: ``07+12`` / ``2007_trainval``; synthetic: ``train``."""
    val_split: str = "val"
    """COCO: ``val2017`` (or ``test-dev2017``: no labels, so detections are written and no metrics);
    VOC: ``2007_test``; synthetic: ``val``."""
    short: int = Field(600, ge=16)
    long: int = Field(1000, ge=16)
    train_short_range: Optional[tuple[int, int]] = None
    """Multi-scale training: each training image's short side drawn uniformly from [lo, hi] (mmdetection's
    ``multiscale_mode='range'``, per image); evaluation keeps ``short``. E.g. ``[640, 800]``."""
    flip: float = Field(0.5, ge=0.0, le=1.0)
    max_images: Optional[int] = Field(None, ge=1)
    """Cap on images per split (quick looks at a big set); None means all."""
    synthetic: SyntheticConfig = SyntheticConfig()
    """What ``kind: synthetic`` writes at ``root`` when it is missing."""


    @model_validator(mode="after")
    def _range_ordered(self) -> "DataConfig":
        if self.train_short_range and not 16 <= self.train_short_range[0] <= self.train_short_range[1]:
            raise ValueError(f"train_short_range {list(self.train_short_range)}: expected [lo, hi] with 16 <= lo <= hi")
        return self


class TrainConfig(Strict):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(16, ge=1)
    """Images per step across all workers."""
    lr: float = Field(0.01, gt=0.0)
    """Learning rate for 16 images; scaled linearly by batch_size / 16."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_iters: int = Field(500, ge=0)
    warmup_ratio: float = Field(1.0 / 3.0, gt=0.0, le=1.0)
    steps: list[int] = Field(default_factory=lambda: [8, 11])
    """Epochs at which the lr is multiplied by 0.1."""
    grad_clip: Optional[float] = Field(35.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on a GPU that supports it, else fp16 with a GradScaler; on a CPU bf16 where it is native
    (avx512_bf16 / amx_bf16), else fp32 (detector/precision.py). bf16: autocast + channels_last (emulated, and
    slow, on a CPU without native bf16); fp16: AMP on GPU only (fp32 on CPU)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    loader_workers: Optional[int] = Field(None, ge=0)
    """Data-loading processes per training worker (persistent across epochs). None: 0 on a CPU, where the
    trial's cores are all computing, and up to 4 with a GPU (one fewer than the worker's threads)."""
    compile: bool = False
    """torch.compile the network (opt-in: minutes of compilation first; bench/train_step.py measures it)."""
    threads: Optional[int] = Field(None, ge=1)
    """torch intra-op threads; None leaves torch's default."""
    val_every: int = Field(1, ge=0)
    """After every this many epochs, score the first variant on the first ``val_images`` val images (the
    learning curves' validation metric, ``val/AP`` / ``val/mAP``); 0: only the full evaluation at the end."""
    val_images: int = Field(100, ge=1)


class VariantConfig(Strict):
    """One way to turn raw (p, q) into a detection confidence; many are scored from one forward pass."""

    name: str = Field(pattern=r"^[A-Za-z0-9_=,<>+-][A-Za-z0-9._=,<>+-]*$", max_length=128)
    """Names its metrics and its detections file: the shorthand's characters (``alpha=0.4,truth``,
    ``cls,q>0.5``), no ``/`` and no leading dot."""
    combine: Literal["cls", "product", "power"] = "power"
    """cls: p only (quality off); product: p*q (the papers' "none"); power: p^a q^(1-a) as below."""
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0)
    convention: Literal["iou_aware", "conf"] = "iou_aware"
    """iou_aware (paper 000): p^alpha * q^(1-alpha); conf (paper 004): q^alpha * p^(1-alpha)."""
    quality_source: Literal["predicted", "truth"] = "predicted"
    """truth: IoU of the box with its nearest GT of any class (Table 6 upper bound of paper 000)."""
    q_filter: bool = False
    """Keep only boxes with q > 0.5 (the 'obj>0.5' rows of paper 004)."""

    @model_validator(mode="after")
    def _alpha_when_power(self) -> "VariantConfig":
        if self.combine == "power" and self.alpha is None:
            raise ValueError(f"variant {self.name!r}: combine 'power' needs alpha in [0, 1]")
        if self.combine != "power" and self.alpha is not None:
            raise ValueError(f"variant {self.name!r}: alpha only applies to combine 'power'")
        return self

    @property
    def needs_predicted_quality(self) -> bool:
        """True if scoring reads the model's quality branch (so a model without one cannot run it)."""
        uses_q = self.combine != "cls" or self.q_filter
        return uses_q and self.quality_source == "predicted"

    @property
    def weight_on_p(self) -> float:
        """The exponent of p in p^w q^(1-w), whichever paper's convention alpha was given in."""
        assert self.alpha is not None
        return self.alpha if self.convention == "iou_aware" else 1.0 - self.alpha


class InferenceConfig(Strict):
    score_thresh: float = Field(0.05, ge=0.0, le=1.0)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    max_dets: int = Field(100, ge=1)
    topk_per_level: int = Field(1000, ge=1)
    variants: list[VariantConfig] = Field(default_factory=list)
    """Empty: one default variant chosen from the quality branch (cls for none, alpha 0.5 otherwise)."""
    correlation_samples: int = Field(10000, ge=0)
    """Detections sampled per variant for the confidence-vs-IoU_eval scatter (Figure 4 of paper 000)."""
    metrics: list[Literal["coco", "voc"]] = Field(default_factory=lambda: ["coco"])
    """coco: COCO AP family + AP60-AP90; voc: VOC07 11-point mAP at 0.50:0.05:0.95."""
    voc_pixels: Literal["continuous", "inclusive"] = "continuous"
    """How the VOC metric measures a box: ``continuous``, a box is x1 - x0 wide (COCO's, mmdetection 2.x's);
    ``inclusive``, its corners are pixel indices and it is x1 - x0 + 1 wide, in every area and overlap
    (mmdetection 1.x's ``bbox_overlaps`` / ``mean_ap``: the IoU-aware fork behind paper 000's Table 5). Boxes
    are loaded as the files give them either way (detector/evaluation.py says why)."""


class Config(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()

    @model_validator(mode="after")
    def _variants_have_their_quality(self) -> "Config":
        if self.model.quality.branch == "none":
            for i, v in enumerate(self.inference.variants):
                if v.needs_predicted_quality:
                    raise ValueError(f"inference.variants.{i}: {v.name!r} scores by the predicted quality, which a "
                                     f"model with model.quality.branch: none does not have (use cls, or a truth "
                                     f"variant, or give the model a quality branch)")
        return self

    def variants(self) -> list[VariantConfig]:
        """The inference variants to evaluate; a model-appropriate default if none are listed."""
        if self.inference.variants:
            return self.inference.variants
        if self.model.quality.branch == "none":
            return [VariantConfig(name="cls", combine="cls")]
        return [VariantConfig(name="alpha=0.5", combine="power", alpha=0.5)]


class ConfigError(ValueError):
    """A config that failed validation; the message names every offending field path."""


def shown_value(value: Any) -> str:
    """``repr(value)`` cut to 80 characters, for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """Every error of ``err`` on one line: ``field.path: what is wrong (got VALUE)``, joined by ``; ``."""
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        where = f"{prefix}.{path}" if prefix and path else (prefix or path)
        msg = e["msg"].removeprefix("Value error, ")
        if not where:  # a whole-model check: its message names the fields itself
            parts.append(msg)
            continue
        got = "" if e["type"] == "missing" or isinstance(e.get("input"), (dict, BaseModel)) else f" (got {shown_value(e['input'])})"
        parts.append(f"{where}: {msg}{got}")
    more = f"; and {len(parts) - 5} more" if len(parts) > 5 else ""
    return "; ".join(parts[:5]) + more


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None


MAX_YAML_NODES = 100_000
"""A study or config expands to far fewer values; more means an alias bomb (aliases nesting aliases)."""


def check_tree(value: Any, where: str) -> None:
    """Refuse a YAML tree whose aliases make it recursive or expand it past MAX_YAML_NODES values: safe_load
    builds both, and the first would send every later step into infinite recursion."""
    seen = 0
    stack: list[tuple[Any, str, tuple[int, ...]]] = [(value, "", ())]
    while stack:
        node, path, ancestors = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise ConfigError(f"{where}: more than {MAX_YAML_NODES} values once its aliases are expanded "
                              f"(an alias bomb?)")
        if isinstance(node, (dict, list)):
            if id(node) in ancestors:
                raise ConfigError(f"{where}: {path or '(top level)'}: a recursive alias (the value contains itself)")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                stack.append((child, f"{path}.{key}" if path else str(key), ancestors + (id(node),)))


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; one-line errors for a missing file, text that is not UTF-8, bad
    YAML, recursive or exploding aliases, or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
                          f"a {what} file is YAML") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    check_tree(raw, str(path))
    return raw or {}


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line:column)."""
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML refuses (binary data)
        return f"{str(err).splitlines()[0]} at offset {err.position}"
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_config(path: str | Path) -> Config:
    return parse_config(read_yaml_mapping(path, "config"), source=str(path))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (lists and scalars are replaced)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, _done: str = "") -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c`` set to value (intermediate dicts created). Setting below a
    value that is not a section (``train.lr.x``) is a ConfigError naming the path."""
    head, _, rest = dotted.partition(".")
    if not head:
        raise ConfigError(f"{_done + dotted!r}: empty field name in a dotted key")
    out = dict(raw)
    if rest:
        inner = out.get(head)
        if inner is not None and not isinstance(inner, dict):
            raise ConfigError(f"{_done + head}: holds {shown_value(inner)}, not a section, so {_done + dotted} cannot be set")
        out[head] = set_dotted(dict(inner or {}), rest, value, f"{_done}{head}.")
    else:
        out[head] = value
    return out


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as {dotted key: value}, in the order given, each VALUE read as YAML (safe: a
    python/... tag is refused, never constructed): ``train.steps=[8,11]`` gives ``[8, 11]``. A field given twice,
    or inside another one given (``model.backbone`` and ``model.backbone.name``), is refused: which wins would hang
    on the order, and a study launch is named by its overrides as a set (ablab.naming.launch_key)."""
    sets: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=2")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {yaml_problem(err)}") from None
        check_tree(value, f"--set {item!r}")
        try:  # launch.json and MLflow keep it as JSON: a YAML date or a non-text key would come back changed
            if json.loads(json.dumps(value)) != value:
                raise TypeError
        except TypeError:
            raise ConfigError(f"--set {item!r}: YAML reads the value as {shown_value(value)}, which a config field "
                              f"cannot hold (quote it to pass text)") from None
        clash = next((k for k in sets if k == key or key.startswith(k + ".") or k.startswith(key + ".")), None)
        if clash is not None:
            raise ConfigError(f"--set {item!r}: {key} is also set by --set {set_text(clash, sets[clash])}: give "
                              f"each field once")
        sets[key] = value
    return sets


def set_text(key: str, value: Any) -> str:
    """One override as ``--set`` reads it back (parse_sets): ``train.steps=[8, 11]``, the value in YAML's flow
    style (quoted where YAML would read it as something else)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return f"{key}={text.removesuffix('...').strip()}"  # a lone scalar is dumped as a document: `2\n...`


def apply_sets(raw: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with parse_sets's overrides set in order (set_dotted); an error names the ``--set`` it comes from."""
    for key, value in sets.items():
        try:
            raw = set_dotted(raw, key, value)
        except ConfigError as err:
            raise ConfigError(f"--set {set_text(key, value)}: {err}") from None
    return raw


def sets_source(source: str, sets: dict[str, Any]) -> str:
    """``source`` (a file, a trial) named with the overrides its config was resolved under, for errors."""
    return (f"{source} with " + " ".join(f"--set {set_text(k, v)}" for k, v in sets.items())) if sets else source


def parse_variant(spec: str, convention: str = "iou_aware") -> VariantConfig:
    """Shorthand for a variant: ``cls`` | ``none`` (p*q) | ``alpha=A``, each optionally followed by
    ``,truth`` (IoU_truth as q) and/or ``,q>0.5`` (quality filter). The name is the spec itself."""
    head, *flags = [s.strip() for s in spec.split(",")]
    fields: dict[str, Any] = {"name": spec, "convention": convention}
    if head == "cls":
        fields["combine"] = "cls"
    elif head in ("none", "product"):
        fields["combine"] = "product"
    elif head.startswith("alpha="):
        try:
            fields.update(combine="power", alpha=float(head[len("alpha="):]))
        except ValueError:
            raise ConfigError(f"variant {spec!r}: alpha must be a number") from None
    else:
        raise ConfigError(f"variant {spec!r}: expected cls, none or alpha=A (then ,truth and/or ,q>0.5)")
    for flag in flags:
        if flag == "truth":
            fields["quality_source"] = "truth"
        elif flag == "q>0.5":
            fields["q_filter"] = True
        else:
            raise ConfigError(f"variant {spec!r}: unknown flag {flag!r} (truth, q>0.5)")
    try:
        return VariantConfig(**fields)
    except ValidationError as err:
        raise ConfigError(f"variant {spec!r}: {format_validation_error(err)}") from None
