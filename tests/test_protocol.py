"""Fine-tuning protocols: a lower backbone rate, layer-wise decay and LP-FT, in code and through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from repfusion_pl import BackboneSpec, ClassificationTask, FineTuneProtocol, SegmentationTask
from repfusion_pl.cli import main
from repfusion_pl.tasks.protocol import backbone_lr_scales, default_layers

ROOT = Path(__file__).resolve().parent.parent
CONF = Path(__file__).resolve().parent / "conf"
GRAY = BackboneSpec(in_channels=1)


def group_rates(task: ClassificationTask) -> dict[str, float]:
    """Each parameter's learning rate in the task's optimiser, by name."""
    optimiser = task.configure_optimizers()
    rate = {id(p): group["lr"] for group in optimiser.param_groups for p in group["params"]}
    return {name: rate[id(p)] for name, p in task.named_parameters()}


def test_a_backbone_scale_lowers_the_backbone_rate_and_keeps_the_heads():
    task = ClassificationTask(3, backbone=GRAY, protocol=FineTuneProtocol(backbone_lr_scale=0.1))
    rates = group_rates(task)
    assert rates["head.weight"] == pytest.approx(1e-3)
    backbone = [rate for name, rate in rates.items() if name.startswith("encoder.backbone.")]
    assert (
        backbone == pytest.approx([1e-4] * len(backbone)) and len(backbone) == 60
    )  # resnet18: 20 convs, 20 norms x 2
    assert sum(p.numel() for p in task.parameters()) == sum(
        p.numel() for g in task.configure_optimizers().param_groups for p in g["params"]
    )


def test_layer_decay_steps_down_a_resnets_stem_and_stages():
    task = ClassificationTask(
        3, backbone=GRAY, protocol=FineTuneProtocol(backbone_lr_scale=0.5, layer_decay=0.5)
    )
    layers = default_layers(task.encoder.backbone)
    assert [sorted({name.split(".")[0] for name in layer}) for layer in layers] == [
        ["bn1", "conv1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]
    ]  # fmt: skip
    rates = group_rates(task)
    # The configured 1e-3, times the backbone's 0.5, times 0.5 per layer below the head.
    assert rates["encoder.backbone.layer4.1.conv2.weight"] == pytest.approx(1e-3 * 0.5 * 0.5)
    assert rates["encoder.backbone.layer1.0.conv1.weight"] == pytest.approx(1e-3 * 0.5 * 0.5**4)
    assert rates["encoder.backbone.conv1.weight"] == pytest.approx(1e-3 * 0.5 * 0.5**5)
    assert rates["head.bias"] == pytest.approx(1e-3)


def test_layer_decay_follows_timms_own_grouping_and_named_layers():
    pytest.importorskip("timm")
    spec = BackboneSpec("resnet10t", library="timm", stem="imagenet", in_channels=1)
    task = ClassificationTask(3, backbone=spec, protocol=FineTuneProtocol(layer_decay=0.8))
    scales = backbone_lr_scales(task.protocol, task.encoder.backbone)
    assert len(set(scales.values())) == len(default_layers(task.encoder.backbone)) > 3
    assert scales["layer4.0.conv1.weight"] == pytest.approx(0.8)
    # Named layers: what lies under none of them (the stem) learns with the first.
    named = FineTuneProtocol(layer_decay=0.5, layers=["layer1", "layer2", "layer3", "layer4"])
    scales = backbone_lr_scales(named, task.encoder.backbone)
    assert scales["conv1.0.weight"] == scales["layer1.0.conv1.weight"] == pytest.approx(0.5**4)


class Snapshot(Callback):
    """The backbone's state (weights and BatchNorm statistics) and the head at the end of each epoch."""

    def __init__(self) -> None:
        self.backbone: list[dict[str, torch.Tensor]] = []
        self.head: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, task) -> None:
        self.backbone.append({k: v.clone() for k, v in task.encoder.backbone.state_dict().items()})
        self.head.append(task.head.weight.detach().clone())


def test_lp_ft_trains_the_head_alone_first_then_the_backbone(tmp_path):
    torch.manual_seed(0)
    task = ClassificationTask(3, backbone=GRAY, protocol=FineTuneProtocol(probe_epochs=1))
    start = {k: v.clone() for k, v in task.encoder.backbone.state_dict().items()}
    head = task.head.weight.detach().clone()
    data = DataLoader(TensorDataset(torch.rand(8, 1, 16, 16), torch.tensor([0, 1, 2, 0] * 2)), batch_size=4)
    snapshot = Snapshot()
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[snapshot]).fit(task, data)
    # Epoch 0: weights and running statistics where they were, the head trained.
    assert all(torch.equal(value, start[key]) for key, value in snapshot.backbone[0].items())
    assert not torch.equal(snapshot.head[0], head)
    # Epoch 1: the backbone's weights and statistics moved.
    moved = [k for k, v in snapshot.backbone[1].items() if not torch.equal(v, start[k])]
    assert "layer4.1.conv2.weight" in moved and "bn1.running_mean" in moved


@pytest.mark.parametrize(
    ("build", "said"),
    [
        (lambda: FineTuneProtocol(backbone_lr_scale=0), r"backbone_lr_scale is 0.*> 0"),
        (lambda: FineTuneProtocol(layer_decay=1.5), r"layer_decay is 1.5.*\(0, 1\]"),
        (lambda: FineTuneProtocol(layers=["layer1"]), r"set layer_decay too"),
        (
            lambda: ClassificationTask(
                3, backbone=GRAY, freeze_backbone=True, protocol=FineTuneProtocol(backbone_lr_scale=0.1)
            ),
            r"freeze_backbone: true is a linear probe",
        ),
        (
            lambda: ClassificationTask(
                3, backbone=GRAY, protocol=FineTuneProtocol(layer_decay=0.7, layers=["layer1", "layer5"])
            ).configure_optimizers(),
            r"names 'layer5', which the backbone lacks \(did you mean 'layer4'\?\); its top-level modules",
        ),
    ],
)
def test_a_bad_protocol_is_one_message(build, said):
    with pytest.raises(ValueError, match=said):
        build()


def test_lp_ft_longer_than_the_run_is_refused_before_a_step(tmp_path):
    task = SegmentationTask(
        2, backbone=BackboneSpec(in_channels=1), protocol=FineTuneProtocol(probe_epochs=2)
    )
    data = DataLoader(TensorDataset(torch.rand(4, 1, 32, 32), torch.zeros(4, 32, 32, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"probe_epochs is 2 but trainer.max_epochs is 2"):
        quiet_trainer(tmp_path, max_epochs=2).fit(task, data)


def test_a_protocol_in_yaml_runs_through_the_cli(gray_cifar_checkpoint, tmp_path):
    config = tmp_path / "protocol.yaml"
    protocol = {"backbone_lr_scale": 0.1, "layer_decay": 0.7, "probe_epochs": 1}
    config.write_text(yaml.safe_dump({"model": {"init_args": {"protocol": protocol}}}))
    main(
        [
            "fit",
            "--config", str(ROOT / "configs/classify.yaml"),
            "--config", str(CONF / "classify_tiny.yaml"),
            "--config", str(config),
            "--trainer.fast_dev_run=false",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            f"--model.init_args.backbone_weights={gray_cifar_checkpoint}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )  # fmt: skip
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert saved["model"]["init_args"]["protocol"] == {**protocol, "layers": None}


def test_lp_ft_holds_the_backbone_after_a_mid_epoch_resume(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.rand(12, 1, 16, 16), torch.tensor([0, 1, 2] * 4)), batch_size=4)
    task = ClassificationTask(3, backbone=GRAY, protocol=FineTuneProtocol(probe_epochs=1))
    start = {k: v.clone() for k, v in task.encoder.backbone.state_dict().items()}
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    quiet_trainer(tmp_path, max_epochs=2, max_steps=1, callbacks=[saver], enable_checkpointing=True).fit(
        task, data
    )
    checkpoint = next((tmp_path / "ckpt").glob("*.ckpt"))
    resumed = ClassificationTask(3, backbone=GRAY, protocol=FineTuneProtocol(probe_epochs=1))
    snapshot = Snapshot()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[snapshot])
    trainer.fit(resumed, data, ckpt_path=checkpoint)  # restarts inside epoch 0: no on_train_epoch_start
    assert all(torch.equal(value, start[key]) for key, value in snapshot.backbone[0].items())


def test_layer_decay_over_one_wrapped_module_asks_for_the_layers():
    wrapped = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))
    with pytest.raises(ValueError, match=r"single layer in Sequential; name the layers .* protocol.layers"):
        backbone_lr_scales(FineTuneProtocol(layer_decay=0.5), wrapped)
    scales = backbone_lr_scales(FineTuneProtocol(layer_decay=0.5, layers=["0.0", "0.1"]), wrapped)
    assert scales["0.0.weight"] == pytest.approx(0.25) and scales["0.1.weight"] == pytest.approx(0.5)
