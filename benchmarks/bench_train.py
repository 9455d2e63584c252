"""Issue 5's baseline harness: the notes' Keras code, a plain PyTorch loop and cnnlab, side by side.

One run, one machine, the same data, architecture, epochs and batch size for every contestant:
  keras   benchmarks/keras_lecture.py in benchmarks/.venv-keras (TensorFlow for CPU)
  torch   benchmarks/plain_torch.py in this environment (a typical hand-written loop);
          variants torch+cl, torch+bf16, torch+cl+bf16 switch on channels-last / bf16 autocast
  cnnlab  `cnnlab train ... --out DIR`, reading DIR/metrics.json ("not available" until the
          training engine exists)
Each contestant is a separate process, timed start to finish by this driver (perf_counter
around subprocess.run). Per task it reports wall time, training images/s, test accuracy,
achieved training GFLOP/s (3 x analytic forward FLOPs x images seen / fit time) as a fraction
of this machine's matmul peak (fp32 and bf16, measured in the same run by peak.py), and the
wall-time ratio to Keras. Writes results.json, chart.png and logs/ under --out.

Tasks (the notes' recipes): seed-mnist 3 epochs, seed-neu 10 epochs, batch 50 for both.
Targets for cnnlab (issue 5): mnist <= 0.35 x Keras wall time, neu <= 0.5 x.

Usage:
    .venv/bin/python benchmarks/bench_train.py        # full run: 1.5-3 h on 2 cores (README)
    .venv/bin/python benchmarks/bench_train.py --subset 2000 --epochs-scale 0.1 --only mnist
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.runtime import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # peak.py sits beside this file

KERAS_PY = HERE / ".venv-keras" / "bin" / "python"
KERAS_SETUP = HERE / "setup_keras_env.sh"


# ---------------------------------------------------------------- tasks and their FLOPs


@dataclass(frozen=True)
class Arch:
    """A lecture CNN: conv3x3 'same' + ReLU + maxpool2 per entry of `convs`, then dense layers."""

    model: str  # the cnnlab model name
    input_hwc: tuple[int, int, int]  # (H, W, C) of one image
    convs: tuple[int, ...]  # output channels of each conv block
    dense: tuple[int, ...]  # hidden dense units
    classes: int
    epochs: int  # the notes' fit(..., epochs=...)
    batch_size: int = 50  # the notes' fit(..., batch_size=50)


TASKS = {
    "mnist": Arch("seed-mnist", (28, 28, 1), (32, 64), (128,), 10, epochs=3),
    "neu": Arch("seed-neu", (200, 200, 1), (32, 64, 128), (128,), 6, epochs=10),
}
TARGETS = {"mnist": 0.35, "neu": 0.5}  # issue 5: cnnlab wall time <= target x Keras wall time
PREFIX = {"mnist": "MNIST", "neu": "NEU"}


def forward_flops(arch: Arch, *, winograd: bool = False) -> int:
    """Forward FLOPs for one image: conv = 2*H*W*Cin*Cout*9, linear = 2*in*out.

    Multiply-adds count 2; biases, ReLU, pooling and softmax are left out (a few per cent of
    the total at most), the usual convention for GFLOP/s figures. `winograd`: the multiply-adds
    cnnlab's Winograd F(2x2, 3x3) kernel executes instead in the blocks it takes (channels in
    16s: 16 per 2x2 output tile and channel pair, 2*(H/2)*(W/2)*16*Cin*Cout), its transforms'
    additions left out like the biases.

    Examples
    --------
    >>> forward_flops(TASKS["mnist"])
    8482304
    >>> forward_flops(TASKS["mnist"], winograd=True)  # the second conv: 7225344 -> 3211264
    4468224
    """
    h, w, c = arch.input_hwc
    total = 0
    for cout in arch.convs:
        if winograd and c % 16 == 0 and cout % 16 == 0:
            total += 2 * (h // 2) * (w // 2) * 16 * c * cout
        else:
            total += 2 * h * w * c * cout * 9  # 'same' padding: output is H x W
        h, w, c = h // 2, w // 2, cout  # 2x2 max pool
    features = h * w * c
    for units in (*arch.dense, arch.classes):
        total += 2 * features * units
        features = units
    return total


def training_flops(arch: Arch, images: int, *, winograd: bool = False) -> int:
    """FLOPs to train on `images` images: forward + backward ~ 3 x forward."""
    return 3 * forward_flops(arch, winograd=winograd) * images


def ran_winograd(rec: dict) -> bool:
    """Whether a cnnlab run's config.json says its convolutions ran by Winograd."""
    return "Winograd" in str((rec.get("runtime") or {}).get("pool_relu") or "")


# ---------------------------------------------------------------- data export


def cnnlab_arrays(task: str, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Train/test arrays for `task` from cnnlab's loader (`cnnlab.data.load_dataset`).

    MNIST: the files' own 60000/10000 split in file order, images (N,28,28). NEU: the
    loader's stratified 80/20 split with `seed` (1152/288 for seed 0), images (N,200,200,1),
    labels renumbered to the notes' class order (`LECTURE_ORDER`), which keras_lecture.py
    expects. Reads $CNNLAB_DATA and never downloads.
    """
    from cnnlab.data import load_dataset
    from cnnlab.data.neu import LECTURE_ORDER

    ds = load_dataset(task, seed=seed, download=False)  # a benchmark never fetches data
    out: dict[str, np.ndarray] = {}
    remap = None
    if task == "neu":  # cnnlab's class index -> the notes' index
        remap = np.array([LECTURE_ORDER.index(c) for c in ds.class_names], dtype=np.uint8)
    for split in ("train", "test"):
        part = ds.split(split)
        x = part.images.numpy()  # (N, 1, H, W) uint8
        x = x[:, 0] if task == "mnist" else x.transpose(0, 2, 3, 1)
        y = part.labels.numpy().astype(np.uint8)
        out[f"{split}_x"], out[f"{split}_y"] = x, (remap[y] if remap is not None else y)
    return out


def export_task(task: str, out_dir: Path, *, subset: int | None = None, seed: int = 0) -> dict:
    """Write PREFIX_{train,test}_{imgs,labels}.npy for `task` into `out_dir`; return a summary.

    The data come from cnnlab's loader (`cnnlab_arrays`, reading $CNNLAB_DATA). `subset`
    keeps at most that many train and that many test images (a seeded random pick, for
    smoke runs).

    Examples
    --------
    >>> info = export_task("mnist", Path("/tmp/x"), subset=100)  # doctest: +SKIP
    >>> info["n_train"], info["files"]["train_x"]  # doctest: +SKIP
    (100, '/tmp/x/MNIST_train_imgs.npy')
    """
    arrays = cnnlab_arrays(task, seed=seed)
    if subset is not None:
        rng = np.random.default_rng(seed)
        for split in ("train", "test"):
            n = len(arrays[f"{split}_y"])
            keep = np.sort(rng.permutation(n)[: min(subset, n)])
            arrays[f"{split}_x"] = arrays[f"{split}_x"][keep]
            arrays[f"{split}_y"] = arrays[f"{split}_y"][keep]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, arr in arrays.items():
        split, kind = key.split("_")
        path = out_dir / f"{PREFIX[task]}_{split}_{'imgs' if kind == 'x' else 'labels'}.npy"
        np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
        files[key] = str(path)
    return {
        "task": task,
        "source": "cnnlab.data.load_dataset",
        "n_train": len(arrays["train_y"]),
        "n_test": len(arrays["test_y"]),
        "image_shape": list(arrays["train_x"].shape[1:]),
        "files": files,
    }


# ---------------------------------------------------------------- running contestants


def last_json_line(text: str) -> dict | None:
    """The last stdout line that parses as a JSON object (the contestants' result line)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def find_accuracy(metrics: object) -> float | None:
    """A test accuracy in a cnnlab metrics.json whose exact schema is not fixed yet."""
    if isinstance(metrics, dict):
        for key in ("test_accuracy", "test_acc", "accuracy", "acc"):
            if isinstance(metrics.get(key), int | float):
                return float(metrics[key])
        for key in ("test", "final", "metrics", "eval", "evaluate"):
            if key in metrics and (acc := find_accuracy(metrics[key])) is not None:
                return acc
    return None


def _text(b: bytes | str | None) -> str:
    """Captured output as text (TimeoutExpired keeps bytes even with text=True)."""
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def run_process(cmd: Sequence[str], log: Path, *, timeout: float | None = None) -> dict:
    """Run one contestant; wall time of the whole process, exit code and its output tail."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
        )
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout = -1, _text(e.stdout)
        stderr = f"{_text(e.stderr)}\ntimed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    from cnnlab.atomic import write_text

    write_text(log, f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n")
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    return {"rc": rc, "wall_s": wall, "stdout": stdout, "error_tail": tail[0][-300:]}


def contestant_command(
    name: str, task: str, info: dict, epochs: int, batch: int, out_dir: Path
) -> list[str]:
    """The command line that runs contestant `name` on exported task data."""
    f = info["files"]
    data = [f["train_x"], f["train_y"], f["test_x"], f["test_y"]]
    common = ["--epochs", str(epochs), "--batch-size", str(batch)]
    if name == "keras":
        return [str(KERAS_PY), str(HERE / "keras_lecture.py"), task, *data, *common]
    if name.startswith("torch"):
        flags = {"cl": "--channels-last", "bf16": "--bf16"}
        extra = [flags[p] for p in name.split("+")[1:]]
        return [sys.executable, str(HERE / "plain_torch.py"), task, *data, *common, *extra]
    if name == "cnnlab":
        exe = Path(sys.executable).with_name("cnnlab")
        data_dir = str(Path(f["train_x"]).parent)
        model = TASKS[task].model
        return [
            str(exe),
            "train",
            "--data",
            data_dir,
            "--model",
            model,
            *common,
            "--out",
            str(out_dir),
        ]
    raise ValueError(f"unknown contestant {name!r}")


BUSY = 0.25  # share of all CPUs' time in use just before a contestant that marks it suspect


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs' time spent busy (not idle / iowait) over `seconds`, from /proc/stat;
    None where there is no /proc/stat."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)

    a = sample()
    time.sleep(seconds)
    b = sample()
    if a is None or b is None or b[0] <= a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def run_contestant(
    name: str,
    task: str,
    info: dict,
    epochs: int,
    batch: int,
    logs: Path,
    work: Path,
    *,
    timeout: float | None = None,
) -> dict:
    """Run one contestant on one task and return its measured record (status ok/failed/n.a.)."""
    run_dir = work / f"cnnlab-{task}"
    cmd = contestant_command(name, task, info, epochs, batch, run_dir)
    # another busy process skews every number: record it. The 1-min load average still holds
    # the previous contestant's tail, so the CPU time in use in the last second decides.
    load_before, busy_before = os.getloadavg()[0], cpu_busy()
    res = run_process(cmd, logs / f"{task}-{name}.log", timeout=timeout)
    rec: dict = {"contestant": name, "command": cmd, "wall_s": res["wall_s"], "rc": res["rc"]}
    rec["loadavg_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    rec["cpu_busy_before"] = busy_before
    if name == "cnnlab":
        metrics_path = run_dir / "metrics.json"
        if res["rc"] != 0 or not metrics_path.is_file():
            return {**rec, "status": "not available", "reason": res["error_tail"]}
        metrics = json.loads(metrics_path.read_text())
        fit = None
        if isinstance(metrics, dict):
            fit = metrics.get("fit_s") or metrics.get("train_seconds") or metrics.get("train_s")
        rec.update(
            status="ok",
            fit_s=float(fit) if fit else res["wall_s"],
            fit_timed_by="metrics.json" if fit else "driver (whole process)",
            test_accuracy=find_accuracy(metrics),
            metrics=metrics,
        )
        config_path = run_dir / "config.json"  # its precision is the machine's measured choice
        if config_path.is_file():
            runtime = json.loads(config_path.read_text()).get("runtime")
            if isinstance(runtime, dict):
                rec["runtime"] = runtime
        return rec
    line = last_json_line(res["stdout"])
    if res["rc"] != 0 or line is None:
        return {**rec, "status": "failed", "reason": res["error_tail"]}
    rec.update(
        status="ok", fit_timed_by="script", **{k: v for k, v in line.items() if k != "contestant"}
    )
    return rec


def add_derived(rec: dict, arch: Arch, n_train: int, epochs: int, peak: dict) -> dict:
    """images/s, achieved training GFLOP/s and its fraction of the fp32 / bf16 matmul peak."""
    if rec.get("status") != "ok":
        return rec
    images = n_train * epochs
    fit = rec["fit_s"]
    gflops = training_flops(arch, images) / fit / 1e9
    rec["images_per_s"] = images / fit
    rec["train_gflops"] = gflops
    rec["frac_peak_fp32"] = gflops / peak["fp32_gflops"] if peak.get("fp32_gflops") else None
    rec["frac_peak_bf16"] = gflops / peak["bf16_gflops"] if peak.get("bf16_gflops") else None
    if "runtime" in rec:  # the issue's yardstick: the peak of the precision it trained in
        rec["precision"] = "bf16" if rec["runtime"].get("amp_dtype") == "bfloat16" else "fp32"
        rec["frac_peak_own"] = rec[f"frac_peak_{rec['precision']}"]
    if ran_winograd(rec):  # fewer multiplies than counted: the rate the hardware ran at too
        executed = training_flops(arch, images, winograd=True) / fit / 1e9
        rec["executed_gflops"] = executed
        own = peak.get(f"{rec.get('precision', 'fp32')}_gflops")
        rec["frac_peak_executed"] = executed / own if own else None
    return rec


# ---------------------------------------------------------------- report


def _fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict) -> str:
    """The results as a fixed-width text table with a header naming the machine."""
    m = results["machine"]
    peak = results["peak"]
    lines = [
        f"cnnlab training benchmark  {m['date']}",
        f"CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs)   python {m['python']}",
        f"torch {m['torch']}   tensorflow {m.get('tensorflow') or '-'}",
        f"matmul peak: fp32 {_fmt(peak.get('fp32_gflops'), '.1f')} GFLOP/s, "
        f"bf16 {_fmt(peak.get('bf16_gflops'), '.1f')} GFLOP/s ({peak.get('threads')} threads)",
        "",
        f"{'task':6} {'contestant':14} {'wall s':>8} {'fit s':>8} {'img/s':>8} {'test acc':>8} "
        f"{'GFLOP/s':>8} {'%fp32pk':>7} {'%bf16pk':>7} {'x keras':>7}",
    ]
    for task, t in results["tasks"].items():
        for name, r in t["contestants"].items():
            if r.get("status") != "ok":
                lines.append(f"{task:6} {name:14} {r.get('status')}: {r.get('reason', '')}"[:160])
                continue
            pf, pb = r.get("frac_peak_fp32"), r.get("frac_peak_bf16")
            lines.append(
                f"{task:6} {name:14} {r['wall_s']:8.1f} {r['fit_s']:8.1f} "
                f"{r['images_per_s']:8.0f} {_fmt(r.get('test_accuracy'), '8.4f')} "
                f"{r['train_gflops']:8.1f} {_fmt(pf and 100 * pf, '7.1f')} "
                f"{_fmt(pb and 100 * pb, '7.0f')} {_fmt(r.get('ratio_to_keras'), '7.2f')}"
            )
        busy = [n for n, r in t["contestants"].items() if (r.get("cpu_busy_before") or 0) > BUSY]
        if busy:
            lines.append(
                f"{'':6} warning: machine busy (> {BUSY:.0%} of CPU time in use in the second "
                f"before) before {', '.join(busy)}"
            )
        target = t.get("target_vs_keras")
        lines.append(f"{'':6} target: cnnlab wall <= {target} x keras -> {t.get('target_met')}")
        own = t["contestants"].get("cnnlab", {})
        if own.get("frac_peak_own") is not None:
            why = own["runtime"].get("amp_reason") or own["precision"]
            lines.append(
                f"{'':6} cnnlab trained in {own['precision']}: "
                f"{100 * own['frac_peak_own']:.1f}% of the {own['precision']} peak ({why})"
            )
        if own.get("executed_gflops") is not None:
            lines.append(
                f"{'':6} cnnlab ran its later convolutions by Winograd F(2x2,3x3): GFLOP/s above "
                f"count a direct convolution's; it executed {own['executed_gflops']:.1f} GFLOP/s"
                f" = {100 * (own.get('frac_peak_executed') or 0):.1f}% of that peak"
            )
    return "\n".join(lines)


def chart(results: dict, path: Path) -> Path:
    """Bar chart of wall time per contestant, one panel per task, ratio to Keras annotated."""
    from cnnlab.plots import new_figure, save_figure

    tasks = list(results["tasks"])
    fig = new_figure(figsize=(4.2 * max(1, len(tasks)), 3.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(tasks)), squeeze=False)[0]
    colors = {"keras": "#d62728", "cnnlab": "#2ca02c"}
    for ax, task in zip(axes, tasks, strict=False):
        recs = results["tasks"][task]["contestants"]
        names = list(recs)
        walls = [recs[n]["wall_s"] if recs[n].get("status") == "ok" else 0.0 for n in names]
        bars = ax.bar(names, walls, color=[colors.get(n, "#1f77b4") for n in names])
        for bar, n in zip(bars, names, strict=True):
            r = recs[n]
            if r.get("status") != "ok":
                label = "n/a"
            elif r.get("ratio_to_keras") is not None:
                label = f"{r['wall_s']:.0f} s\n{r['ratio_to_keras']:.2f}x keras"
            else:
                label = f"{r['wall_s']:.0f} s"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        cfg = results["tasks"][task]["config"]
        ax.set_title(
            f"{TASKS[task].model}: {cfg['epochs']} ep, batch {cfg['batch_size']}, "
            f"{cfg['n_train']} train",
            fontsize=9,
        )
        if ax is axes[0]:
            ax.set_ylabel("wall time, whole process (s)")
        ax.set_ylim(0, max([*walls, 1.0]) * 1.3)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.suptitle(f"{results['machine']['cpu']}, {results['machine']['date']}", fontsize=9)
    return save_figure(fig, path)


# ---------------------------------------------------------------- driver


def ensure_keras_env() -> None:
    """Create benchmarks/.venv-keras with setup_keras_env.sh when it is not there yet."""
    if not (HERE / ".venv-keras" / ".installed").is_file():
        subprocess.run(["bash", str(KERAS_SETUP)], check=True)


def tf_version() -> str | None:
    """TensorFlow's version in the Keras env, read from its package metadata (no TF import)."""
    found = sorted((HERE / ".venv-keras").glob("lib/python*/site-packages/tensorflow_cpu-*"))
    found = found or sorted((HERE / ".venv-keras").glob("lib/python*/site-packages/tensorflow-*"))
    return found[-1].name.split("-")[1].removesuffix(".dist") if found else None


def run_bench(args: argparse.Namespace) -> dict:
    """Export data, measure the peak, run every contestant on every task; return the results."""
    import peak as peak_mod
    import torch

    from cnnlab.runtime import physical_cores

    if args.data:  # cnnlab's loader and `cnnlab train` read $CNNLAB_DATA
        os.environ["CNNLAB_DATA"] = str(Path(args.data).resolve())
    contestants = [c for c in args.contestants if c not in args.skip]
    if "keras" in contestants:
        ensure_keras_env()
    out = Path(args.out)
    logs = out / "logs"
    work = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    try:
        infos = {}
        for task in args.only:
            t0 = time.perf_counter()
            infos[task] = export_task(task, work / task, subset=args.subset, seed=args.seed)
            infos[task]["export_s"] = time.perf_counter() - t0
            print(
                f"exported {task}: {infos[task]['n_train']} train / {infos[task]['n_test']} "
                f"test from {infos[task]['source']}",
                file=sys.stderr,
            )

        print("measuring matmul peak ...", file=sys.stderr)
        peak = peak_mod.matmul_peak(args.peak_sizes, repeats=3)
        results: dict = {
            "machine": {
                "date": dt.datetime.now().isoformat(timespec="seconds"),
                "cpu": cpu_model(),
                "logical_cpus": os.cpu_count(),
                "physical_cores": physical_cores(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "tensorflow": tf_version() if "keras" in contestants else None,
                "loadavg_1min_at_start": os.getloadavg()[0],
            },
            "peak": peak,
            "options": {"subset": args.subset, "epochs_scale": args.epochs_scale},
            "tasks": {},
        }
        for task in args.only:
            arch, info = TASKS[task], infos[task]
            epochs = max(1, round(arch.epochs * args.epochs_scale))
            recs = {}
            for name in contestants:
                print(f"running {task} / {name} ...", file=sys.stderr)
                rec = run_contestant(
                    name, task, info, epochs, arch.batch_size, logs, work, timeout=args.timeout
                )
                recs[name] = add_derived(rec, arch, info["n_train"], epochs, peak)
                print(f"  {name}: {rec.get('status')} in {rec['wall_s']:.1f} s", file=sys.stderr)
            keras = recs.get("keras", {})
            for r in recs.values():
                if keras.get("status") == "ok" and r.get("status") == "ok":
                    r["ratio_to_keras"] = r["wall_s"] / keras["wall_s"]
            ratio = recs.get("cnnlab", {}).get("ratio_to_keras")
            results["tasks"][task] = {
                "config": {
                    "model": arch.model,
                    "epochs": epochs,
                    "batch_size": arch.batch_size,
                    "n_train": info["n_train"],
                    "n_test": info["n_test"],
                    "data_source": info["source"],
                    "forward_flops_per_image": forward_flops(arch),
                    "training_flops": training_flops(arch, info["n_train"] * epochs),
                },
                "contestants": recs,
                "target_vs_keras": TARGETS[task],
                "target_met": None if ratio is None else ratio <= TARGETS[task],
            }
        return results
    finally:
        if args.keep_data:
            print(f"exported data and cnnlab runs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    """The driver's options."""
    p = argparse.ArgumentParser(
        prog="bench_train.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = ["keras", "torch", "torch+cl", "torch+bf16", "torch+cl+bf16", "cnnlab"]
    p.add_argument(
        "--only",
        nargs="+",
        choices=sorted(TASKS),
        default=list(TASKS),
        help="tasks to run (default: both)",
    )
    p.add_argument(
        "--contestants",
        nargs="+",
        choices=names,
        default=["keras", "torch", "cnnlab"],
        help="who runs (default: keras torch cnnlab)",
    )
    p.add_argument("--skip", nargs="+", choices=names, default=[], help="contestants to leave out")
    p.add_argument(
        "--subset", type=int, default=None, help="at most N train and N test images (smoke runs)"
    )
    p.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply the notes' epochs (rounded, at least 1), e.g. 0.1 for 1 epoch",
    )
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/DATE)")
    p.add_argument("--data", default=None, help="data root (default $CNNLAB_DATA)")
    p.add_argument("--seed", type=int, default=0, help="NEU split and subset seed")
    p.add_argument(
        "--peak-sizes",
        type=int,
        nargs="+",
        default=[2048, 4096],
        help="matmul sizes for the peak measurement",
    )
    p.add_argument(
        "--timeout", type=float, default=7200, help="seconds per contestant before it is stopped"
    )
    p.add_argument("--keep-data", action="store_true", help="keep the exported .npy folder")
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, write results.json + chart.png, print the table."""
    from cnnlab.atomic import write_json, write_text
    from cnnlab.errors import CnnlabError

    args = build_parser().parse_args(argv)
    if args.subset is not None and args.subset <= 0:
        print("bench_train: error: --subset must be positive", file=sys.stderr)
        return 2
    if args.epochs_scale <= 0:
        print("bench_train: error: --epochs-scale must be positive", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    args.out = args.out or str(HERE / "results" / stamp)
    try:
        results = run_bench(args)
    except CnnlabError as e:
        print(f"bench_train: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_json(out / "results.json", results)
    text = table(results)
    write_text(out / "table.txt", text + "\n")
    chart(results, out / "chart.png")
    print(json.dumps(results, indent=2) if args.json else text)
    print(f"wrote {out / 'results.json'}, {out / 'chart.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
