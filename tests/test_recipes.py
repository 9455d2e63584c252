"""The better recipes: augmentation, schedules, presets, EMA / TTA runs (issue 6)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.data.augment import (
    AUGMENTS,
    AugmentSpec,
    augment,
    dihedral,
    get_augment,
    symmetric_views,
    symmetry_of,
    tta_symmetry,
    warp,
)
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train import TrainConfig, train
from cnnlab.train.presets import PRESETS, best_for_data, goal_line, preset_values
from cnnlab.train.run import epoch_generator, improves
from cnnlab.train.schedule import lr_at


def _shift_ref(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move an image dx right, dy down with zero fill (numpy reference)."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


@settings(max_examples=25, deadline=None)
@given(dx=st.integers(-3, 3), dy=st.integers(-3, 3), h=st.integers(5, 12), w=st.integers(5, 12))
def test_warp_integer_shift_matches_numpy(dx: int, dy: int, h: int, w: int) -> None:
    img = np.random.default_rng(h * 13 + w).random((h, w)).astype(np.float32)
    x = torch.from_numpy(img)[None, None]
    one = torch.ones(1)
    y = warp(x, torch.zeros(1), one, torch.tensor([float(dx)]), torch.tensor([float(dy)]))
    np.testing.assert_allclose(y[0, 0].numpy(), _shift_ref(img, dx, dy), atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_warp_right_angles_match_rot90(k: int) -> None:
    x = torch.rand(2, 3, 7, 7)
    y = warp(x, torch.full((2,), 90.0 * k), torch.ones(2), torch.zeros(2), torch.zeros(2))
    torch.testing.assert_close(y, torch.rot90(x, -k, dims=(2, 3)), atol=1e-5, rtol=0)


def test_dihedral_gives_one_of_eight_symmetries() -> None:
    x = torch.rand(64, 1, 5, 5)
    y = dihedral(x, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(64):
        img = x[i, 0].numpy()
        refs = [np.rot90(img, k) for k in range(4)] + [np.rot90(img.T, k) for k in range(4)]
        hits = [j for j, r in enumerate(refs) if np.array_equal(y[i, 0].numpy(), r)]
        assert hits, f"image {i} is not a flip / rotation of its input"
        seen.add(hits[0])
    assert len(seen) == 8  # all eight appear in 64 draws


def test_flips_policy_mirrors_but_never_turns() -> None:
    x = torch.rand(64, 1, 5, 5)
    y = augment(x, get_augment("flips"), torch.Generator().manual_seed(0))
    seen = set()
    for i in range(64):
        img = x[i, 0].numpy()
        refs = [img, img[:, ::-1], img[::-1, :], img[::-1, ::-1]]  # numpy's mirrors
        hits = [j for j, r in enumerate(refs) if np.array_equal(y[i, 0].numpy(), r)]
        assert hits, f"image {i} is not a mirror of its input (a 90-degree turn?)"
        seen.add(hits[0])
    assert seen == {0, 1, 2, 3}  # all four appear in 64 draws
    assert symmetry_of(get_augment("flips")) == "flips"
    assert symmetry_of(get_augment("texture")) == symmetry_of(get_augment("none")) == "dihedral"


def test_symmetric_views_are_the_mirrors_or_all_eight_symmetries() -> None:
    x = torch.rand(1, 1, 4, 4)
    img = x[0, 0].numpy()

    def as_set(views: list[torch.Tensor]) -> set:
        return {tuple(v.flatten().tolist()) for v in views}

    eight = {tuple(np.rot90(img, k).flatten().tolist()) for k in range(4)}
    eight |= {tuple(np.rot90(img.T, k).flatten().tolist()) for k in range(4)}
    assert as_set(symmetric_views(x, "dihedral")) == eight
    mirrors = {
        tuple(np.ascontiguousarray(m).flatten().tolist())
        for m in (img, img[:, ::-1], img[::-1], img[::-1, ::-1])
    }
    assert as_set(symmetric_views(x, "flips")) == mirrors
    assert len(symmetric_views(torch.rand(1, 1, 4, 6), "dihedral")) == 4  # non-square: mirrors
    with pytest.raises(ValueError, match="unknown symmetry"):
        symmetric_views(x, "rot45")


def test_tta_entry_of_a_model_json() -> None:
    assert tta_symmetry(False) is None and tta_symmetry(None) is None
    assert tta_symmetry(True) == "dihedral"  # model files written before the mirrors policy
    assert tta_symmetry("flips") == "flips"
    with pytest.raises(ValueError, match='"tta" must be'):
        tta_symmetry("sideways")


def test_photometric_brightness_and_contrast() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8) * 0.5 + 0.25  # away from the clip limits
    y = augment(x, AugmentSpec(brightness=0.1), g)
    d = y - x
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d), atol=1e-6)  # one offset per image
    assert d.abs().max() <= 0.1 + 1e-6 and d.abs().max() > 0
    y = augment(x, AugmentSpec(contrast=0.2), g)
    torch.testing.assert_close(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5, rtol=0)
    assert not torch.allclose(y, x)
    y = augment(torch.ones(4, 1, 8, 8), AugmentSpec(brightness=0.3, noise=0.1), g)
    assert y.max() <= 1 and y.min() >= 0


def test_noise_max_draws_one_std_per_image_from_clean_to_the_maximum() -> None:
    x = torch.full((200, 1, 64, 64), 0.5)  # far from the clip limits at these stds
    y = augment(x, AugmentSpec(noise_max=0.08), torch.Generator().manual_seed(0))
    stds = (y - x).std(dim=(1, 2, 3))  # 4096 pixels an image: within about 2% of its draw
    assert stds.max() < 0.08 * 1.05 and stds.min() < 0.005  # U(0, 0.08): up to the maximum
    assert stds.mean() == pytest.approx(0.04, rel=0.1)  # and from clean images on
    assert (stds > 0.06).sum() > 30 and (stds < 0.02).sum() > 30  # spread, not one level
    # the std sequence is U(0, 0.08) (Kolmogorov-Smirnov against scipy's uniform)
    from scipy import stats

    assert stats.kstest(stds.numpy(), stats.uniform(0, 0.08).cdf).pvalue > 1e-3


def test_augment_is_seeded_and_known_policies_resolve() -> None:
    x = torch.rand(8, 1, 16, 16)
    for name, spec in AUGMENTS.items():
        a = augment(x, spec, torch.Generator().manual_seed(3))
        b = augment(x, spec, torch.Generator().manual_seed(3))
        assert torch.equal(a, b), name
        assert a.shape == x.shape
    assert get_augment("none").is_identity
    assert torch.equal(augment(x, get_augment("none"), torch.Generator()), x)
    with pytest.raises(ValueError, match="known"):
        get_augment("mixup")


def test_cli_offers_every_augmentation_and_surface_keeps_the_mirrors() -> None:
    from cnnlab.cli import build_parser

    parser = build_parser()  # its --augment list is kept by hand (the CLI imports no torch)
    for name in AUGMENTS:
        assert parser.parse_args(["train", "--data", "neu", "--augment", name]).augment == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "neu", "--augment", "mixup"])
    surface = get_augment("surface")
    assert symmetry_of(surface) == "flips"  # TTA over the 4 mirrors, never a 90-degree turn
    assert preset_values("best", "neu")["augment"] == "surface"


def test_epoch_generators_are_independent_streams() -> None:
    a = torch.rand(5, generator=epoch_generator(0, 1, "order"))
    assert torch.equal(a, torch.rand(5, generator=epoch_generator(0, 1, "order")))
    assert not torch.equal(a, torch.rand(5, generator=epoch_generator(0, 1, "augment")))
    assert not torch.equal(a, torch.rand(5, generator=epoch_generator(0, 2, "order")))
    assert not torch.equal(a, torch.rand(5, generator=epoch_generator(1, 1, "order")))


def test_ema_update_warms_up_then_holds_the_decay() -> None:
    from cnnlab.train.run import ema_update

    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    ema_update(0.99)(avg, cur, torch.tensor(0))  # first update: decay 1/10 -> 90 % new
    torch.testing.assert_close(avg[0], torch.full((3,), 0.9))
    avg = [torch.zeros(3)]
    ema_update(0.99)(avg, cur, torch.tensor(10_000))  # late: the set decay
    torch.testing.assert_close(avg[0], torch.full((3,), 0.01))
    # one closure counts its own updates after reading the counter once (as after a resume)
    step, avg = ema_update(0.99), [torch.zeros(3)]
    step(avg, cur, torch.tensor(1))  # decay 2/11
    step(avg, cur, torch.tensor(-99))  # ignored: the closure's own count, 2 -> decay 3/12
    want = 1 - (2 / 11) * (3 / 12)  # ema of ones from zeros after the two updates
    torch.testing.assert_close(avg[0], torch.full((3,), want))


def test_schedules() -> None:
    total, peak = 100, 0.5
    one = [lr_at(s, total, peak, "onecycle", warmup=0.2) for s in range(total + 1)]
    assert one[0] == pytest.approx(0.05) and one[20] == pytest.approx(peak)
    assert max(one) == pytest.approx(peak) and one[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a <= b for a, b in itertools.pairwise(one[:21]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(one[20:]))  # then decays
    cos = [lr_at(s, total, peak, "cosine") for s in (0, 50, 100)]
    assert cos == pytest.approx([peak, peak / 2, 0.0], abs=1e-12)
    assert lr_at(7, total, peak, "constant") == peak
    with pytest.raises(ValueError):
        lr_at(1, 10, 1.0, "step")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("data", ["mnist", "neu"])
def test_every_preset_resolves(preset: str, data: str) -> None:
    try:
        values = preset_values(preset, data)
    except ValueError:
        assert preset == "fast" and data == "neu"  # fast is an MNIST preset
        return
    cfg = TrainConfig(data=data, preset=preset, out="x").resolved()
    assert cfg.model == values["model"]
    kwargs = {"width": cfg.width} if cfg.width else {}
    size = cfg.image_size or ((28, 28) if data == "mnist" else (200, 200))
    model = create_model(cfg.model, image_size=size, **kwargs)
    assert model(torch.zeros(2, 1, *size)).shape[1] == (10 if data == "mnist" else 6)
    if preset == "best":
        assert cfg.val_split > 0  # checkpoints chosen on a validation split


def test_flags_override_preset_and_bad_values_name_the_flag() -> None:
    cfg = TrainConfig(data="neu", preset="best", epochs=3, augment="none", out="x").resolved()
    assert cfg.epochs == 3 and cfg.augment == "none" and cfg.model == "resnet-neu-pool"
    assert TrainConfig(data="mnist", model="seed-mnist", out="x").resolved().optimizer == "adam"
    with pytest.raises(CnnlabError, match="--model is required"):
        TrainConfig(data="mnist", out="x").resolved()
    with pytest.raises(CnnlabError, match="--preset"):
        TrainConfig(data="neu", preset="fast", out="x").resolved()
    with pytest.raises(CnnlabError, match="--label-smoothing"):
        TrainConfig(data="mnist", model="seed-mnist", label_smoothing=1.5, out="x").resolved()
    with pytest.raises(CnnlabError, match="--ema"):
        TrainConfig(data="mnist", model="seed-mnist", ema=1.0, out="x").resolved()


def test_best_for_data_follows_the_images() -> None:
    digits = best_for_data(20000, 1, (28, 28), 10)
    assert digits["augment"] == "digits" and digits["image_size"] is None
    steel = best_for_data(300, 1, (200, 200), 6)
    assert steel["augment"] == "surface" and steel["image_size"] == (128, 128)
    assert steel["width"] == "s" and 15 <= steel["epochs"] <= 100
    photo = best_for_data(8000, 3, (480, 640), 4)
    assert photo["image_size"] == (128, 168) and photo["width"] == "l"


def _patch_dataset(n: int = 96, seed: int = 0):
    """Class = which quadrant holds a bright square; orientation-dependent on purpose."""
    from cnnlab.data.dataset import ImageDataset

    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 16, 16, generator=g) * 60).to(torch.uint8)
    labels = torch.arange(n) % 2
    for i in range(n):
        r = 2 if labels[i] == 0 else 10
        images[i, 0, r : r + 4, 6:10] = 255
    idx = torch.randperm(n, generator=g)
    return ImageDataset(
        images,
        labels,
        ["top", "bottom"],
        [f"img{i}.png" for i in range(n)],
        splits={"train": idx[:64], "val": idx[64:80], "test": idx[80:]},
    )


def _small_best_config(out, **overrides) -> TrainConfig:
    """A best-style recipe (resnet-digits s, SGD one-cycle, label smoothing) for _patch_dataset."""
    values = dict(
        data="synthetic",
        model="resnet-digits",
        width="s",
        epochs=4,
        batch_size=16,
        lr=0.05,
        optimizer="sgd",
        schedule="onecycle",
        label_smoothing=0.1,
        val_split=0.2,
        out=str(out),
    )
    return TrainConfig(**{**values, **overrides})


def test_best_style_run_learns_and_records_choices(tmp_path) -> None:
    cfg = _small_best_config(tmp_path / "run", weight_decay=5e-4, augment="digits", ema=0.9)
    result = train(cfg, _patch_dataset(), progress=False, log=lambda m: None)
    assert result.test["accuracy"] >= 0.8
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["optimizer"]["name"] == "sgd" and record["optimizer"]["nesterov"]
    assert "validation split" in record["selection"]
    assert record["augment"]["degrees"] == 10.0
    lrs = [row["lr"] for row in result.history]
    assert lrs[-1] < lrs[0]  # the one-cycle schedule has decayed by the end
    # the model file holds the EMA weights, and they rebuild and predict the same
    from cnnlab.train.checkpoint import load_model

    model, meta = load_model(tmp_path / "run")
    assert meta["tta"] is False and meta["architecture"] == "resnet-digits"
    assert meta["kwargs"]["width"] == "s"
    ds = _patch_dataset().split("test")
    from cnnlab.predict import predict_images

    acc = (predict_images(model, ds.images).argmax(1) == ds.labels.numpy()).mean()
    assert acc == pytest.approx(result.test["accuracy"])


def test_checkpoint_selection_rules() -> None:
    def row(epoch: int, loss: float, acc: float) -> dict:
        return {"epoch": epoch, "val_loss": loss, "val_accuracy": acc}

    best = row(3, 0.10, 0.990)
    # later epoch: loss up (label smoothing), accuracy up -> only "accuracy" keeps it
    assert improves(row(4, 0.12, 0.995), best, "accuracy")
    assert not improves(row(4, 0.12, 0.995), best, "loss")
    # a tie in accuracy goes to the later epoch; a lower loss alone does not help "accuracy"
    assert improves(row(4, 0.20, 0.990), best, "accuracy")
    assert not improves(row(4, 0.05, 0.985), best, "accuracy")
    assert improves(row(4, 0.05, 0.985), best, "loss")
    # a NaN loss never counts, the first finite epoch always does
    assert not improves(row(4, float("nan"), 1.0), best, "accuracy")
    assert improves(row(1, 0.5, 0.5), None, "loss")
    # "last": every finite epoch replaces the kept one
    assert improves(row(4, 0.9, 0.1), best, "last")
    assert not improves(row(4, float("nan"), 1.0), best, "last")


def test_select_accuracy_keeps_the_epoch_with_the_best_val_accuracy(tmp_path) -> None:
    cfg = _small_best_config(tmp_path / "run", select="accuracy")
    result = train(cfg, _patch_dataset(), progress=False, log=lambda m: None)
    accs = [r["val_accuracy"] for r in result.history]
    # the last epoch with the highest validation accuracy (ties: later)
    expected = max(range(len(accs)), key=lambda i: (accs[i], i)) + 1
    assert result.best_epoch == expected
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "highest accuracy" in record["selection"]
    assert TrainConfig(data="mnist", preset="best").resolved().select == "last"
    assert TrainConfig(data="mnist", model="seed-mnist").resolved().select == "loss"
    with pytest.raises(CnnlabError, match="--select"):
        TrainConfig(data="mnist", model="seed-mnist", select="f1").resolved()


def test_augmented_runs_are_bit_identical(tmp_path) -> None:
    def run(out: str) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(
            data="synthetic",
            model="seed-mnist",
            epochs=2,
            batch_size=16,
            augment="texture",
            tta=True,
            out=str(tmp_path / out),
        )
        train(cfg, _patch_dataset(), progress=False, log=lambda m: None)
        from safetensors.torch import load_file

        return load_file(str(tmp_path / out / "model.safetensors"))

    a, b = run("a"), run("b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_width_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="width must be one of s, m, l"):
        create_model("resnet-neu", width="xl")
    cfg = TrainConfig(data="synthetic", model="resnet-digits", width="xl", out=str(tmp_path / "r"))
    with pytest.raises(CnnlabError, match="width must be one of"):
        train(cfg, _patch_dataset(), progress=False, log=lambda m: None)


def test_presets_say_whether_they_reached_their_goal() -> None:
    """fast: 99.0% MNIST test accuracy within 10 s; best: 99.6% MNIST / 99.7% NEU within 10
    minutes (a mean over seeds, which the line says); others say nothing."""
    assert goal_line("fast", "MNIST", 0.9909, 9.9).endswith("goal 99.0% within 10 s: met")
    assert goal_line("fast", "mnist", 0.9909, 17.5).endswith(": not met")
    assert goal_line("fast", "mnist", 0.9899, 8.0).endswith(": not met")
    assert "99.09% test accuracy after 17.5 s" in goal_line("fast", "mnist", 0.9909, 17.5)
    assert "goal 99.6% within 600 s: met" in goal_line("best", "mnist", 0.9963, 500.0)
    assert "within 600 s: not met (the goal is a mean" in goal_line("best", "mnist", 0.9963, 601)
    assert ": not met" in goal_line("best", "neu", 0.9965, 100.0)
    assert goal_line("fast", "neu", 0.99, 5.0) is None
    assert goal_line("best", "my_defects/", 0.99, 5.0) is None
    assert goal_line(None, "mnist", 0.99, 5.0) is None
