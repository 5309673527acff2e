from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import ROOT
from repfusion_pl.cli import main
from repfusion_pl.probing import RIDGE_STRENGTHS, StreamingRidge


def test_streamed_ridge_equals_the_closed_form_on_all_the_data():
    torch.manual_seed(0)
    x, y = torch.randn(300, 6), torch.randint(0, 4, (300,))
    ridge = StreamingRidge(4)
    for chunk_x, chunk_y in zip(x.split(64), y.split(64), strict=True):
        ridge.update(chunk_x, chunk_y)
    design = torch.cat([x, torch.ones(300, 1)], dim=1).double()
    targets = torch.nn.functional.one_hot(y, 4).double()
    strength = 0.1
    penalty = torch.eye(7, dtype=torch.float64) * strength * (x.double() ** 2).sum(0).mean()
    penalty[6, 6] = 0
    expected = torch.linalg.solve(design.T @ design + penalty, design.T @ targets)
    torch.testing.assert_close(ridge.solve(strength), expected)


def test_streamed_ridge_separates_separable_classes():
    x = torch.cat([torch.randn(50, 3) + 5, torch.randn(50, 3) - 5])
    y = torch.cat([torch.zeros(50, dtype=torch.long), torch.ones(50, dtype=torch.long)])
    ridge = StreamingRidge(2)
    ridge.update(x, y)
    weights = ridge.solve(RIDGE_STRENGTHS[0])
    assert ((x.double() @ weights[:-1] + weights[-1]).argmax(1) == y).all()


def test_probe_command_writes_table_heatmap_and_configs_that_fit_accepts(gray_teacher_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    main(
        [
            "probe",
            "--teacher",
            str(gray_teacher_dir),
            "--data",
            "repfusion_pl.data.DigitsDataModule",
            "--data.image_size",
            "8",
            "--timesteps",
            "[0, 500]",
            "--layers",
            '["down_blocks.0.resnets.0", "mid_block.resnets.1.conv2"]',
            "--out_dir",
            str(out),
            "--logger",  # the heatmap also goes to a logger's own API (tests/test_logged_figures.py)
            f"{{class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {{save_dir: {out}}}}}",
        ]
    )
    printed = capsys.readouterr().out
    assert "random-init resnet18" in printed and "best:" in printed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "lightning_logs" / "version_0")).Reload()
    assert "figures/probe" in events.Tags()["images"]
    result = json.loads((out / "probe.json").read_text())
    # Two layers and their concatenation, at two timesteps.
    assert len(result["rows"]) == 6 and 0 <= result["best"]["val_acc"] <= 1
    assert {row["layer"] for row in result["rows"]} == {
        "down_blocks.0.resnets.0",
        "mid_block.resnets.1.conv2",
        "down_blocks.0.resnets.0+mid_block.resnets.1.conv2",
    }
    assert {row["timestep"] for row in result["rows"]} == {0, 500}
    # 10 classes: well above chance on real digits (seeds 0-20, AVX-512 and AVX2: at least 0.81).
    assert result["random_student"]["val_acc"] > 0.3
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "probe.csv").read_text().splitlines()[0] == "layer,timestep,val_acc,test_acc,ridge"
    fixed = yaml.safe_load((out / "distill-fixed.yaml").read_text())
    # An override of configs/distill.yaml: only what the probe found, nothing copied that could drift.
    assert "max_epochs" not in fixed["trainer"] and "optimizer" not in fixed["model"]["init_args"]
    assert "+".join(fixed["model"]["init_args"]["teacher"]["init_args"]["layers"]) == result["best"]["layer"]
    assert fixed["model"]["init_args"]["sampler"]["init_args"] == {"t": result["best"]["timestep"]}
    assert "repfusion fit --config configs/distill.yaml --config" in (out / "distill-fixed.yaml").read_text()
    for name in ("distill-fixed.yaml", "distill-policy.yaml"):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "distill.yaml"),
                "--config",
                str(out / name),
                "--trainer.fast_dev_run=1",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.callbacks.init_args.dirpath={tmp_path / name}",
                "--data.init_args.image_size=8",
            ]
        )


def test_probe_refuses_something_that_is_not_a_data_module(gray_teacher_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "probe",
                "--teacher",
                str(gray_teacher_dir),
                "--data",
                "torch.nn.Linear",
                "--out_dir",
                str(tmp_path),
            ]
        )
    assert "LightningDataModule" in capsys.readouterr().err


def test_candidate_layers_cover_the_decoder_and_layer_sets_concatenate(gray_teacher_dir):
    from repfusion_pl import DiffusionTeacher
    from repfusion_pl.probing import candidate_layers, default_layer_sets, pooled_features, run_probe

    teacher = DiffusionTeacher(str(gray_teacher_dir))
    layers = candidate_layers(teacher)
    assert [layer for layer in layers if layer.startswith("up_blocks")] == [
        "up_blocks.0.resnets.1",
        "up_blocks.1.resnets.1",
    ]
    sets = default_layer_sets(layers)
    assert sets[-1] == layers and all(len(group) > 1 for group in sets)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(48, 1, 8, 8, generator=g), torch.arange(48) % 3
    batches = list(zip(images.split(16), labels.split(16), strict=True))
    loaders = {"train": batches, "val": batches, "test": batches}
    two = ["mid_block.resnets.0", "up_blocks.1.resnets.1"]
    result = run_probe(str(gray_teacher_dir), loaders, 3, [0], layers=two, layer_sets=[two], progress=False)
    names = [row["layer"] for row in result["rows"]]
    assert names == [*two, "+".join(two)]
    # The concatenation's probe is the probe of the two pooled maps side by side.
    from repfusion_pl.probing import fit_ridge_probes

    probed = DiffusionTeacher(str(gray_teacher_dir), layers=two)

    def side_by_side(batch):
        pooled = pooled_features(probed(batch, torch.zeros(len(batch), dtype=torch.long)))
        return {"both": torch.cat([pooled[layer] for layer in two], dim=1)}

    expected = fit_ridge_probes(side_by_side, loaders, ["both"], 3)["both"]
    assert result["rows"][-1]["val_acc"] == expected["val_acc"]


def test_a_layer_sets_policy_reads_its_strongest_member():
    from repfusion_pl.probing import best_single_layer
    from repfusion_pl.probing.report import distill_overrides

    rows = [
        {"layer": "a", "timestep": 0, "val_acc": 0.6},
        {"layer": "b", "timestep": 0, "val_acc": 0.7},
        {"layer": "b", "timestep": 50, "val_acc": 0.9},  # another timestep: not the cell's
        {"layer": "a+b", "timestep": 0, "val_acc": 0.8},
    ]
    best = {**rows[-1]}
    assert best_single_layer(rows, best) == "b"
    best["head_layer"] = "b"
    result = {"teacher": "t", "best": best}
    overrides = distill_overrides(result, {}, {}, 3, "out")
    model = overrides["distill-policy"]["model"]["init_args"]
    assert model["head_layer"] == "b" and model["teacher"]["init_args"]["layers"] == ["a", "b"]
    single = {"teacher": "t", "best": {"layer": "a", "timestep": 0, "val_acc": 0.6, "head_layer": "a"}}
    policy = distill_overrides(single, {}, {}, 3, "out")["distill-policy"]
    assert "head_layer" not in policy["model"]["init_args"]


def closed_form_probe(
    features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], classes: int
) -> dict:
    """The probe's contract computed from whole feature matrices: ridge per strength, chosen on val."""
    design = {
        split: torch.cat([f.double(), torch.ones(len(f), 1, dtype=torch.float64)], 1)
        for split, f in features.items()
    }
    x, y = design["train"], torch.nn.functional.one_hot(labels["train"], classes).double()
    dim = x.shape[1] - 1
    scale = (x[:, :dim] ** 2).sum(0).mean()
    weights = []
    for strength in RIDGE_STRENGTHS:
        penalty = torch.eye(dim + 1, dtype=torch.float64) * strength * scale
        penalty[dim, dim] = 0
        weights.append(torch.linalg.solve(x.T @ x + penalty, x.T @ y))
    hits = [int(((design["val"] @ w).argmax(1) == labels["val"]).sum()) for w in weights]
    best = hits.index(max(hits))
    test_hits = int(((design["test"] @ weights[best]).argmax(1) == labels["test"]).sum())
    return {"val_acc": hits[best] / len(labels["val"]), "test_acc": test_hits / len(labels["test"])}


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_the_probe_on_the_cpu_gives_the_closed_form_accuracies(gray_teacher_dir, accelerator):
    from repfusion_pl import DiffusionTeacher
    from repfusion_pl.data import DigitsDataModule
    from repfusion_pl.probing import pooled_features, run_probe, split_loaders

    if accelerator == "auto" and torch.cuda.is_available():
        pytest.skip("auto means the GPU here")
    data = DigitsDataModule(image_size=8, batch_size=64)
    loaders = split_loaders(data)
    layer, t = "mid_block.resnets.1.conv2", 100
    result = run_probe(
        str(gray_teacher_dir),
        loaders,
        10,
        [t],
        layers=[layer],
        layer_sets=[],
        accelerator=accelerator,
        progress=False,
    )
    teacher = DiffusionTeacher(str(gray_teacher_dir), layers=[layer])
    features, labels = {}, {}
    for split, loader in loaders.items():
        batches = [(pooled_features(teacher(x, torch.full((len(x),), t)))[layer], y) for x, y in loader]
        features[split] = torch.cat([f for f, _ in batches])
        labels[split] = torch.cat([y for _, y in batches])
    expected = closed_form_probe(features, labels, 10)
    (row,) = result["rows"]
    assert (row["val_acc"], row["test_acc"]) == (expected["val_acc"], expected["test_acc"])


def test_a_bf16_probe_runs_and_stays_near_float32(gray_teacher_dir):
    from repfusion_pl.data import DigitsDataModule
    from repfusion_pl.probing import run_probe, split_loaders

    loaders = split_loaders(DigitsDataModule(image_size=8, batch_size=64))
    layer = ["mid_block.resnets.1.conv2"]
    rows = {
        precision: run_probe(
            str(gray_teacher_dir),
            loaders,
            10,
            [0],
            layers=layer,
            layer_sets=[],
            precision=precision,
            progress=False,
        )["rows"][0]
        for precision in ("32", "bf16")
    }
    # Over 5 tiny teachers, with AVX-512 and with ATEN_CPU_CAPABILITY=avx2, the gap was at most 0.017.
    assert abs(rows["bf16"]["val_acc"] - rows["32"]["val_acc"]) < 0.05, rows
