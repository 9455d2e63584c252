"""seed-mnist training throughput, channels_last vs contiguous NCHW, interleaved in one process.

The two layouts alternate epoch by epoch on the same random uint8 data, so machine noise hits
both alike; the median images/s of each is printed. This decided `--channels-last` as the
default (README, "Train, evaluate, predict").

    .venv/bin/python benchmarks/bench_channels_last.py                 # 2000 images, 4 rounds
    .venv/bin/python benchmarks/bench_channels_last.py --images 6000 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics

import torch

from cnnlab.models import create_model
from cnnlab.runtime import setup
from cnnlab.train.engine import train_one_epoch

ADAM_EPS = 1e-7  # the notes' (Keras) Adam epsilon, as cnnlab trains


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="images per timed epoch")
    p.add_argument("--rounds", type=int, default=4, help="timed epochs per layout")
    args = p.parse_args()

    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.images,))
    runs: dict[bool, list[float]] = {False: [], True: []}
    state = {}
    for cl in (False, True):
        rt = setup("cpu", channels_last=cl, bf16=False)
        model = rt.place(create_model("seed-mnist"))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=ADAM_EPS)
        gen = torch.Generator().manual_seed(0)
        state[cl] = (rt, model, opt, gen)
        # warm-up: first calls allocate and pick kernels
        train_one_epoch(
            model, x[:500], y[:500], optimizer=opt, batch_size=50, generator=gen, runtime=rt
        )
    for _ in range(args.rounds):
        for cl in (False, True):
            rt, model, opt, gen = state[cl]
            out = train_one_epoch(
                model, x, y, optimizer=opt, batch_size=50, generator=gen, runtime=rt
            )
            runs[cl].append(out["images_per_s"])
    med = {cl: statistics.median(v) for cl, v in runs.items()}
    for cl in (False, True):
        print(
            f"channels_last={cl!s:5}  median {med[cl]:6.0f} img/s  runs "
            f"{[round(v) for v in runs[cl]]}"
        )
    print(f"channels_last / NCHW = {med[True] / med[False]:.2f}")


if __name__ == "__main__":
    main()
