"""What a table, a plot or a report calls what a launch trained: each row labelled with the backbone it trained
beside the paper's (``as_trained``), the caption's account of the setting (``setting``), and whether it is the
paper's own setting (``papers_setting``: only there is ours - paper a number worth printing)."""
from __future__ import annotations

import re
from typing import Optional


from detector.config import sets_source

from .launch import Launch
from .rows import ResultSet


BACKBONE_NAMES = {"resnet10": "ResNet10", "resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50",
                  "resnet101": "ResNet101", "resnext101_32x8d": "ResNeXt101-32x8d", "resnext101_64x4d": "ResNeXt101-64x4d"}


_BACKBONE_IN_LABEL = re.compile(r"\b(ResNe[Xx]?t-[\w-]+|[RX]-\d[\w-]*)")
"""The paper's backbone as the papers' row labels write it: ResNet-50-FPN, ResNeXt-32x8d-101-FPN, R-101-FPN."""


def as_trained(launch: Launch) -> Launch:
    """The launch over a copy of its study whose measured rows' labels name the backbone the launch trains where
    it is not the one the paper's profile trains: 'RetinaNet (ResNet-50-FPN)' -> 'RetinaNet (ResNet-50-FPN ->
    ResNet10)'; the claims follow the new labels. Tables, plots and the report show this copy, so nothing names a
    model that did not run."""
    study = launch.study
    if not study.table_layout or launch.profile == "paper" or "paper" not in study.profiles:
        return launch
    papers = launch.sibling("paper")
    shown = study.model_copy(deep=True)
    renamed = {}
    for row in shown.table_layout.rows:
        if not row.measured:
            continue
        ours, theirs = launch.first_config(row.trial), papers.first_config(row.trial)
        if ours is None or (theirs is not None and theirs.model.backbone.name == ours.model.backbone.name):
            continue
        name = BACKBONE_NAMES.get(ours.model.backbone.name, ours.model.backbone.name)
        if f"-> {name}" in row.label:
            continue  # already shown as trained
        paper = BACKBONE_NAMES.get(theirs.model.backbone.name, theirs.model.backbone.name) if theirs else ""
        # A label that names the paper's backbone gets the trained one right after it; others get both names.
        named = _BACKBONE_IN_LABEL.search(row.label)
        new = (f"{row.label[:named.end()]} -> {name}{row.label[named.end():]}" if named
               else f"{row.label} ({paper} -> {name})")
        renamed[row.label], row.label = new, new
    for claim in shown.claims:
        claim.row, claim.vs = renamed.get(claim.row, claim.row), renamed.get(claim.vs, claim.vs)
    for row in shown.table_layout.rows:
        row.baseline = renamed.get(row.baseline, row.baseline)
    return launch.relabelled(shown)


def papers_setting(launch: Launch) -> bool:
    """Whether the launch trains in the paper's setting: the paper's data (not the synthetic stand-in) and the
    paper's backbones (as_trained renames no row). Only there is ours - paper a number worth printing."""
    if launch.profile == "paper":
        return True
    if any(launch.trial_config(p).data.kind == "synthetic" for p in launch.trial_points()):
        return False
    shown, study = as_trained(launch).study, launch.study
    return shown is study or [r.label for r in shown.table_layout.rows] == [r.label for r in study.table_layout.rows]


def setting(launch: Launch, results: Optional[ResultSet] = None) -> str:
    """What a profile trained: data, val images, image size, backbones and their initialisation, epochs, seeds
    (e.g. "synthetic val (500 images), 128 px, ResNet10/18/34 from scratch, 4 epochs, 1 seed"), and the launch's
    ``--set`` overrides (e.g. "... 1 seed with --set train.steps=[9]"), from its
    resolved configs and, where ``results`` hold them, the runs' own counts of val images and seeds."""
    configs = [launch.trial_config(p) for p in launch.trial_points()]
    data = configs[0].data
    images = ""
    done = results.finished().frame if results is not None and not results.empty else None
    if done is not None and "val_images" in done and done["val_images"].notna().any():
        counts = sorted({int(n) for n in done["val_images"].dropna()})
        images = f" ({'/'.join(map(str, counts))} images)"
    elif data.kind == "synthetic":
        n = min(data.synthetic.val, data.max_images or data.synthetic.val)
        images = f" ({n} images)"
    size = f"{data.short} px" if data.short == data.long else f"[{data.short}, {data.long}] px"
    backbones = sorted({c.model.backbone.name for c in configs}, key=list(BACKBONE_NAMES).index)
    names = [BACKBONE_NAMES.get(b, b) for b in backbones]
    if len(names) > 1 and all(n.startswith("ResNet") and n[6:].isdigit() for n in names):
        names = ["ResNet" + "/".join(n[6:] for n in names)]
    init_text = " / ".join(sorted({{"none": "from scratch", "imagenet": "ImageNet-initialised"}.get(
        c.model.backbone.pretrained, "initialised from a weights file") for c in configs}))
    epochs = sorted({c.train.epochs for c in configs})
    if done is not None and "seed" in done:
        per_model = done.groupby("trial")["seed"].nunique()
        counts = sorted(set(per_model)) or [0]
    else:
        counts = sorted({len(launch.seeds_of(t)) for t in {p["trial"] for p in launch.trial_points()}})
    seeds = (f"{counts[0]} seed{'s' if counts[0] != 1 else ''}" if len(counts) == 1
             else f"{counts[0]} to {counts[-1]} seeds per model")
    return sets_source(f"{data.kind} {data.val_split}{images}, {size}, {', '.join(names)} {init_text}, "
                       f"{'/'.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''}, {seeds}",
                       launch.sets)
