"""The lecture end to end, as one function behind `cnnlab demo` / `make demo`.

Filter gallery -> train seed-mnist with the notes' recipe -> evaluate on the 10000 MNIST
test images -> predict test image 1495 and draw the notes' image + stem plot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnlab.train.run import TrainConfig, load_training_data, train

NOTES_TEST_IMAGE = 1495  # the notes' `test_x[[1495]]`


def run_demo(
    out: str | Path = "runs/demo",
    *,
    data: str = "mnist",
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the lecture's MNIST pipeline into `out`; returns accuracy, prediction and plots.

    Examples
    --------
    >>> s = run_demo("runs/demo")  # doctest: +SKIP
    >>> s["test_accuracy"] > 0.99  # doctest: +SKIP
    True
    """
    out = Path(out)
    plots: dict[str, str] = {}
    from cnnlab.filters import demo_gallery

    log("step 1/4: filter gallery (the notes' hand-made kernels)")
    plots["filters"] = str(demo_gallery(out / "filters"))

    log("step 2/4: train seed-mnist with the notes' recipe (Adam, lr 1e-3, batch 50, x/255)")
    cfg = TrainConfig(
        data=data,
        model="seed-mnist",
        epochs=epochs,
        seed=seed,
        device=device,
        out=str(out / "mnist"),
    )
    dataset = load_training_data(cfg.resolved(), progress=progress)
    result = train(cfg, dataset, progress=progress, log=log)
    run_dir = result.run_dir
    plots["curves"] = str(run_dir / "curves.png")

    log("step 3/4: evaluate on the test images")
    from cnnlab.evaluate import evaluate_model

    report = evaluate_model(run_dir, dataset, split="test", device=device, progress=progress)
    plots.update(report["plots"])

    log(f"step 4/4: predict test image {NOTES_TEST_IMAGE} (the notes' example)")
    from cnnlab.predict import plot_predictions, predict_images
    from cnnlab.train.checkpoint import load_model

    test = dataset.split("test")
    model, meta = load_model(run_dir)
    image = test.images[NOTES_TEST_IMAGE : NOTES_TEST_IMAGE + 1]
    probs = predict_images(model, image, device=device)[0]
    names = meta["class_names"]
    pred = int(probs.argmax())
    true = names[int(test.labels[NOTES_TEST_IMAGE])]
    stem = plot_predictions(
        out / f"predict-{NOTES_TEST_IMAGE}.png",
        [image[0].numpy()],
        [probs],
        names,
        true_labels=[true],
        titles=[f"MNIST test image {NOTES_TEST_IMAGE}"],
    )
    plots["prediction"] = str(stem)
    return {
        "run_dir": str(run_dir),
        "test_accuracy": report["accuracy"],
        "test_n": report["n"],
        "image_index": NOTES_TEST_IMAGE,
        "prediction": names[pred],
        "probability": float(probs[pred]),
        "true_label": true,
        "probabilities": [float(p) for p in torch.as_tensor(probs)],
        "plots": plots,
    }
