"""Single-process commands (no Ray, no MLflow): train one config, evaluate a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import yaml

from detector.config import (Config, ConfigError, VariantConfig, apply_sets, load_config, parse_config, parse_sets,
                             parse_variant, sets_source)
from detector.data import build_split
from detector.engine import evaluate, model_from_checkpoint, read_checkpoint, train

from .logs import log
from .naming import METRICS_FILE, write_eval_outputs
from .preflight import check_output_dir


def config_with_overrides(path: str, overrides: list[str]) -> Config:
    """Load a config file and apply ``a.b.c=value`` overrides (detector.config.parse_sets)."""
    sets = parse_sets(overrides)
    return parse_config(apply_sets(load_config(path).model_dump(), sets), source=sets_source(path, sets))


def metrics_table(metrics: dict[str, float], keys: tuple[str, ...] = ("AP", "AP50", "AP75", "AP90", "mAP", "pearson")) -> str:
    """A plain-text table: one row per variant, the given metrics (those present) as columns."""
    variants: dict[str, dict[str, float]] = {}
    for k, v in metrics.items():
        name, _, metric = k.rpartition("/")
        variants.setdefault(name, {})[metric] = v
    cols = [k for k in keys if any(k in m for m in variants.values())]
    width = max([len("variant")] + [len(n) for n in variants])
    lines = [f"{'variant':<{width}}  " + "  ".join(f"{c:>7}" for c in cols)]
    for name, m in variants.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m.get(c, float('nan')):7.3f}" for c in cols))
    return "\n".join(lines)


def train_command(config: str, out: Optional[str], overrides: list[str]) -> int:
    cfg = config_with_overrides(config, overrides)
    out_dir = Path(out or Path("runs") / Path(config).stem)
    check_output_dir(out_dir, "--out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    log.info(f"training {config} -> {out_dir}")

    def save(state, epoch_metrics):
        torch.save(state.checkpoint(), out_dir / "checkpoint.pt")
        log.info(f"[train] epoch {state.epoch} done: " + ", ".join(
            f"{k}={v:.4f}" for k, v in epoch_metrics.items() if k.startswith("loss")))

    state = train(cfg, on_epoch_end=save, log=log.info)
    result = evaluate(state.model, cfg, precision=state.precision, log=log.info)
    write_eval_outputs(out_dir, result)
    print(metrics_table(result.metrics))
    log.info(f"metrics: {out_dir / METRICS_FILE}  checkpoint: {out_dir / 'checkpoint.pt'}")
    return 0


def resolve_variants(cfg: Config, specs: list[str], convention: str) -> list[VariantConfig]:
    """Variants by name from the config, else parsed from the shorthand (see parse_variant)."""
    named = {v.name: v for v in cfg.inference.variants}
    return [named[s] if s in named else parse_variant(s, convention) for s in specs] or cfg.variants()


def evaluate_command(config: str, checkpoint: str, variants: list[str], convention: str, out: Optional[str],
                     overrides: list[str]) -> int:
    cfg = config_with_overrides(config, overrides)
    chosen = resolve_variants(cfg, variants, convention)
    if out:
        check_output_dir(Path(out), "--out")
    if not Path(checkpoint).is_file():
        raise ConfigError(f"--checkpoint: file not found: {checkpoint}")
    ckpt = read_checkpoint(checkpoint)  # before any data set or model is built
    val = build_split(cfg.data, cfg.data.val_split)
    model, precision = model_from_checkpoint(cfg, ckpt, len(val.classes), checkpoint)
    result = evaluate(model, cfg, val, chosen, precision=precision, log=log.info)
    if out:
        write_eval_outputs(Path(out), result)
    print(metrics_table(result.metrics))
    return 0
