import pytest

from detector.config import ConfigError, load_config, parse_config


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match=r"model\.quality\.brnch"):
        parse_config({"model": {"quality": {"brnch": "iou"}}})


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ConfigError, match=r"model\.quality\.loss"):
        parse_config({"model": {"quality": {"loss": "hinge"}}})


def test_alpha_out_of_range_names_the_variant():
    with pytest.raises(ConfigError, match=r"inference\.variants\.0\.alpha"):
        parse_config({"inference": {"variants": [{"name": "a", "combine": "power", "alpha": 1.3}]}})


def test_assigner_parameters_are_range_checked():
    base = {"arch": "anchor_free", "box_loss": "giou"}
    with pytest.raises(ConfigError, match=r"model\.assigner\.threshold"):
        parse_config({"model": {**base, "assigner": {"name": "pseudo_iou", "threshold": 1.5}}})
    with pytest.raises(ConfigError, match=r"model\.assigner\.scale"):
        parse_config({"model": {**base, "assigner": {"name": "scaled_box", "scale": 0}}})
    with pytest.raises(ConfigError, match=r"model\.assigner\.name"):
        parse_config({"model": {**base, "assigner": {"name": "atss"}}})
    with pytest.raises(ConfigError, match="needs arch anchor_free"):
        parse_config({"model": {"assigner": {"name": "pseudo_iou"}}})


def test_yaml_errors_name_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_defaults_are_the_papers():
    cfg = parse_config({})
    assert cfg.model.arch == "retinanet" and cfg.model.assigner.pos_iou == 0.5 and cfg.model.assigner.neg_iou == 0.4
    assert cfg.model.focal.alpha == 0.25 and cfg.model.focal.gamma == 2.0
    assert cfg.inference.score_thresh == 0.05 and cfg.inference.nms_iou == 0.5 and cfg.inference.max_dets == 100
    assert cfg.train.steps == [8, 11] and cfg.train.epochs == 12


def test_variant_shorthand():
    from detector.config import parse_variant

    v = parse_variant("alpha=0.4,truth,q>0.5", convention="conf")
    assert (v.combine, v.alpha, v.convention, v.quality_source, v.q_filter) == ("power", 0.4, "conf", "truth", True)
    assert v.weight_on_p == pytest.approx(0.6)
    assert parse_variant("none").combine == "product" and parse_variant("cls").combine == "cls"
    with pytest.raises(ConfigError, match="alpha"):
        parse_variant("alpha=2")
    with pytest.raises(ConfigError, match="unknown flag"):
        parse_variant("cls,fast")


@pytest.mark.parametrize("train, field", [({"lr": float("nan")}, "train.lr"), ({"grad_clip": float("inf")}, "train.grad_clip"),
                                          ({"seed": -1}, "train.seed"), ({"seed": 2**32}, "train.seed")])
def test_nan_infinity_and_out_of_range_seeds_are_refused(train, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config({"train": train})


def test_study_seeds_are_checked(tmp_path):
    import yaml

    from ablab.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"study": "s", "paper": "iou_aware", "table": "1", "trials": [{"name": "a"}],
                                    "seeds": [0, -3], "profiles": {"smoke": {}}}))
    with pytest.raises(ConfigError, match=r"seeds\.1"):
        load_study(path)


def test_every_registered_option_is_implemented_with_exactly_its_declared_fields():
    """The config's names come from detector/options.py; each entry's function exists in the module the
    registry names, takes each declared field as a keyword, and every declared field is a config field."""
    from detector.config import ModelConfig
    from detector.options import BOX_LOSSES, POINT_RULES, QUALITY_LOSSES

    for registry in (POINT_RULES, BOX_LOSSES, QUALITY_LOSSES):
        for name in registry:
            assert registry.undeclared_keywords(name) == set(), (registry.config_field, name)
            for path in registry[name].fields:
                section = ModelConfig()
                for part in path.split("."):
                    assert part in type(section).model_fields, f"{registry.config_field} {name}: model.{path}"
                    section = getattr(section, part)


def test_an_option_the_registry_does_not_declare_cannot_be_implemented():
    from detector.options import POINT_RULES

    with pytest.raises(KeyError, match="not declared in model.assigner.name's registry"):
        POINT_RULES.implements("nearest_centre")
