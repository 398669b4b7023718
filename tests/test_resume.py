"""A run resumed from an epoch's checkpoint goes on exactly as the uninterrupted run: same data order, same
augmentation draws, same weights (fp32 on CPU, where the kernels are deterministic)."""
import torch

from conftest import tiny_config
from detector.config import parse_config
from detector.engine import train


def test_a_run_resumed_at_an_epoch_boundary_ends_with_the_uninterrupted_runs_weights(synthetic_root, tmp_path):
    def config(epochs: int):
        return parse_config(tiny_config(synthetic_root, data={"max_images": 12, "flip": 0.5},
                                        train={"epochs": epochs, "precision": "fp32", "threads": 1}))

    straight = train(config(3), log=lambda m: None)
    first = train(config(1), log=lambda m: None)
    torch.save(first.checkpoint(), tmp_path / "state.pt")  # through the file, as a restarted worker reads it
    resumed = train(config(3), checkpoint=torch.load(tmp_path / "state.pt", weights_only=True), log=lambda m: None)
    assert resumed.resumed_at == 1 and resumed.epoch == 3
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert [h["val/AP"] for h in resumed.history] == [h["val/AP"] for h in straight.history]  # every epoch's


def test_the_per_epoch_validation_changes_nothing_of_the_training(synthetic_root):
    def config(val_every: int):
        return parse_config(tiny_config(synthetic_root, data={"max_images": 12},
                                        train={"epochs": 2, "precision": "fp32", "threads": 1, "val_every": val_every,
                                               "val_images": 4}))

    watched, unwatched = train(config(1), log=lambda m: None), train(config(0), log=lambda m: None)
    assert [sorted(k for k in h if k.startswith("val/")) for h in watched.history] == [["val/AP", "val/AP50"]] * 2
    assert not any(k.startswith("val/") for h in unwatched.history for k in h)
    for (name, a), b in zip(watched.model.state_dict().items(), unwatched.model.state_dict().values()):
        assert torch.equal(a, b), name
