"""What a study will cost (ablab/estimate.py): the packing and scaling arithmetic on hand-checked values, the rule
that decides which configs share a benchmark, and `ablab plan` run as a user runs it, measured here for a CPU
profile and from the throughput table for a GPU profile on this machine without one. (That the estimate of a real
smoke study lands within 2x of its wall is checked on the README's table3 run: test_dashboards.py.)"""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablab.estimate import (POST_S, THROUGHPUT_TABLE, TRIAL_OVERHEAD_S, Cost, cost_key, duration,
                            load_table, pack, pixels, table_cost, trial_seconds)
from ablab.study import Resources
from detector.config import ConfigError, parse_config

from platform_helpers import ablab_env, write_study


def test_trials_are_list_scheduled_onto_the_slots_in_grid_order():
    assert pack([3, 3, 2], 2) == 5  # the third starts when the first slot frees, at 3
    assert pack([1] * 5, 2) == 3  # ceil(5 / 2) waves of 1
    assert pack([4, 1, 1, 1], 2) == 4  # the short ones fill the second slot while the long one runs
    assert pack([2, 5], 1) == 7 and pack([2, 5], 8) == 5


def test_a_trial_is_steps_x_epochs_plus_validation_evaluation_and_overhead():
    cfg = parse_config({"train": {"epochs": 4, "batch_size": 8, "val_every": 2, "val_images": 100}})
    cost = Cost(step_s=0.5, forward_s_per_image=0.01, setup_s=1.0, source="hand", measured=True)
    train, val, evaluate, overhead = trial_seconds(cfg, Resources(), cost, train_images=100, val_images=50)
    assert train == pytest.approx(4 * 13 * 0.5)  # ceil(100 / 8) = 13 steps per epoch (the last one short)
    assert val == pytest.approx(2 * 50 * (0.01 + POST_S))  # epochs 2 and 4, on min(100, 50) images, one variant
    assert evaluate == pytest.approx(50 * (0.01 + 1 * POST_S))  # the default variant of a model without q: cls
    assert overhead == pytest.approx(TRIAL_OVERHEAD_S["tune"] + 1.0)
    two_workers = Resources(workers=2)
    assert trial_seconds(cfg, two_workers, cost, 100, 50)[3] == pytest.approx(TRIAL_OVERHEAD_S["train"] + 1.0)
    # 3 workers of 8 // 3 = 2 images each (the engine's split): ceil(ceil(100 / 3) / 2) = 17 steps per epoch
    assert trial_seconds(cfg, Resources(workers=3), cost, 100, 50)[0] == pytest.approx(4 * 17 * 0.5)


def test_gpu_table_figures_scale_by_pixels_and_an_override_replaces_them():
    table = load_table()
    assert all(e.source for e in table.backbones.values())  # every figure names where it is from
    cfg = parse_config({"model": {"backbone": {"name": "resnet50"}}, "data": {"short": 600, "long": 1000},
                        "train": {"batch_size": 16}})
    res = Resources(workers=8, cpus_per_worker=4, gpus_per_worker=1)
    assert pixels(600, 1000) == 600 * 800 and pixels(720, 1333) == 720 * 960  # a 4:3 image fitted in
    cost = table_cost(cfg, res, table, THROUGHPUT_TABLE)
    # 10.0 images/s per V100 at [720, 1333] -> 10.0 x 691200 / 480000 = 14.4 at [600, 1000]; 2 images per worker
    assert cost.step_s == pytest.approx(2 / 14.4) and not cost.measured and "detectron2 MODEL_ZOO.md" in cost.source
    assert cost.forward_s_per_image == pytest.approx(1 / (18.2 * pixels(800, 1333) / pixels(600, 1000)))
    override = table_cost(cfg, res, table, THROUGHPUT_TABLE, gpu_throughput=20.0)
    assert override.step_s == pytest.approx(2 / 20.0) and "--gpu-throughput 20" in override.source
    tiny = parse_config({"model": {"backbone": {"name": "resnet18"}}})
    with pytest.raises(ConfigError, match=r"gpu_throughput.yaml: backbones: no figure for model.backbone.name "
                                          r"'resnet18'.*--gpu-throughput"):
        table_cost(tiny, res, table, THROUGHPUT_TABLE)


def test_only_what_changes_a_step_makes_a_config_distinct():
    base = {"model": {"backbone": {"name": "resnet10", "pretrained": "none"}}, "train": {"batch_size": 8}}
    res = Resources()
    key = cost_key(parse_config(base), res)
    same = [{"train": {"seed": 3, "lr": 0.1, "epochs": 2}}, {"model": {"quality": {"loss": "l1", "detach": False,
                                                                                    "weight": 2.0}}},
            {"inference": {"variants": [{"name": "cls", "combine": "cls"}]}}, {"model": {"box_loss": "giou"}}]
    distinct = [{"model": {"backbone": {"name": "resnet18"}}}, {"model": {"quality": {"branch": "iou"}}},
                {"train": {"batch_size": 4}}, {"data": {"short": 256}}, {"model": {"head": {"width": 128}}}]
    from detector.config import deep_merge

    for change in same:
        assert cost_key(parse_config(deep_merge(base, change)), res) == key, change
    for change in distinct:
        assert cost_key(parse_config(deep_merge(base, change)), res) != key, change
    assert cost_key(parse_config(base), Resources(workers=2)) != key  # 4 images per worker


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (42, 370, 11100, 2 * 86400 + 4 * 3600)] == ["42s", "6m10s", "3h05m", "2d04h"]


def plan(*args, env):
    return subprocess.run([sys.executable, "-m", "ablab.cli", "plan", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_plan_prints_the_trials_concurrency_and_a_measured_estimate(synthetic_root, tmp_path):
    study = write_study(tmp_path / "two.yaml", synthetic_root, seeds=[0, 1])
    r = plan(str(study), "--profile", "smoke", env=ablab_env(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for key in ("baseline_seed0", "baseline_seed1", "iou_seed0", "iou_seed1"):
        assert key in out
    assert "1 worker x 1 CPU, executor tune" in out
    assert "this machine, as the embedded cluster sees it: 2 CPUs, 0 GPUs -> 2 trials at a time" in out
    # Two seeds of each model, one benchmark per model: the quality branch makes two.
    configs = [l for l in out.splitlines() if l.startswith(("  1. ", "  2. ", "  3. "))]
    assert len(configs) == 2 and all("measured here" in c for c in configs), out
    assert "trials baseline_seed0, baseline_seed1" in configs[0]
    summary = next(l for l in out.splitlines() if l.startswith("estimate: "))
    assert "4 trials, 2 at a time: 2 waves" in summary and "CPU-hours" in summary and "GPU-hours" not in summary
    assert not (tmp_path / "out").exists()  # a plan writes no outputs


def gpu_study(tmp_path: Path, data_root: Path, backbone: str = "resnet50") -> Path:
    study = write_study(tmp_path / "gpu.yaml", data_root, epochs=100)  # planned, never run
    raw = yaml.safe_load(study.read_text())
    raw["base"]["model"]["backbone"] = {"name": backbone, "pretrained": "none", "norm": "frozen_bn"}
    raw["profiles"]["smoke"]["base"]["data"].update(short=800, long=1333)  # the table's reference size
    raw["resources"] = {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1}
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    return study


def _wall(out: str) -> str:
    return next(l for l in out.splitlines() if l.startswith("estimate: ")).split(" wall")[0]


def test_a_gpu_profile_planned_without_a_gpu_uses_the_table_and_says_so(synthetic_root, tmp_path):
    study = gpu_study(tmp_path, synthetic_root)
    env = ablab_env(tmp_path / "out", CUDA_VISIBLE_DEVICES="")
    r = plan(str(study), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "table gpu_throughput.yaml: resnet50 10 images/s per NVIDIA V100" in r.stdout
    assert "step costs table gpu_throughput.yaml" in r.stdout and "GPU-hours" in r.stdout
    assert "measured here" not in r.stdout
    assert "planned as on a cluster that holds one trial at a time" in r.stdout  # this machine has no GPU
    faster = plan(str(study), "--gpu-throughput", "1000", env=env)
    assert faster.returncode == 0 and "--gpu-throughput 1000 training images/s per GPU" in faster.stdout
    assert _wall(faster.stdout) != _wall(r.stdout)
    table = yaml.safe_load(THROUGHPUT_TABLE.read_text())
    table["backbones"]["resnet50"]["train_images_per_s"] = 1000.0
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(table))
    mine = plan(str(study), "--throughput-table", str(tmp_path / "mine.yaml"), env=env)
    assert mine.returncode == 0 and "table mine.yaml: resnet50 1000 images/s" in mine.stdout
    assert _wall(mine.stdout) != _wall(r.stdout)
    half = plan(str(study), "--set", "train.epochs=50", env=env)  # the launch `ablab run --set` would make
    assert half.returncode == 0 and _wall(half.stdout) != _wall(r.stdout)
    trials = [line for line in half.stdout.splitlines() if "executor train" in line]
    assert trials and all(" 50 " in line for line in trials)


def test_a_gpu_profile_without_a_figure_is_one_line_naming_the_table_and_backbone(synthetic_root, tmp_path):
    study = gpu_study(tmp_path, synthetic_root, backbone="resnet18")
    r = plan(str(study), env=ablab_env(tmp_path / "out", CUDA_VISIBLE_DEVICES=""))
    error = r.stderr.splitlines()[-1]  # after the data set's own notice, if any
    assert r.returncode == 2 and error.startswith("ablab: error: ") and "gpu_throughput.yaml: backbones" in error
    assert "'resnet18'" in error and "--gpu-throughput" in error
    bad = plan(str(study), "--gpu-throughput", "-3", env=ablab_env(tmp_path / "out"))
    assert bad.returncode == 2 and "--gpu-throughput: -3 images/s must be positive" in bad.stderr
    nan = plan(str(study), "--gpu-throughput", "nan", env=ablab_env(tmp_path / "out"))
    assert nan.returncode == 2 and nan.stderr.startswith("ablab: error: --gpu-throughput: nan")



def test_run_measures_only_where_the_benchmark_is_a_small_share_of_the_study(synthetic_root, tmp_path):
    from ablab.estimate import MAX_BENCH_SHARE, benchmark_share, split_images
    from ablab.launch import open_launch, plan_study

    tiny = plan_study(open_launch(str(write_study(tmp_path / "tiny.yaml", synthetic_root)), "smoke"), check_data=False)
    # Two models of 1 epoch on 8 images in batches of 4: 4 steps in all, against a warm-up + 3 steps per model.
    assert benchmark_share(tiny, split_images(tiny)) == (8, 4)
    table3 = plan_study(open_launch(str(Path(__file__).resolve().parents[1] / "studies" / "table3.yaml"), "smoke"),
                        check_data=False)
    bench, study = benchmark_share(table3, split_images(table3))
    assert (bench, study) == (8, 2 * 5 * 100) and bench <= MAX_BENCH_SHARE * study  # 5 epochs of 400 images in batches of 4
