"""`cnnlab data info` / `cnnlab data show` through a subprocess."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from cnnlab.images import write_image


def _tree(root):
    for k, c in enumerate(["ok", "scratch"]):
        for i in range(5):
            write_image(root / c / f"{i}.png", np.full((12, 9), 40 * k + i, np.uint8))


def test_info_json_and_text(tmp_path, cli):
    _tree(tmp_path / "d")
    r = cli("data", "info", str(tmp_path / "d"), "--json", "--val-split", "0.25")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layout"] == "folders" and info["image_size"] == [12, 9]
    assert info["splits"]["all"] == {"ok": 5, "scratch": 5}
    assert info["splits"]["test"] == {"ok": 1, "scratch": 1}
    assert sum(info["splits"]["val"].values()) == 2


def test_show_writes_grid(tmp_path, cli):
    _tree(tmp_path / "d")
    out = tmp_path / "grid.png"
    r = cli("data", "show", str(tmp_path / "d"), "-o", str(out), "--per-class", "3")
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size[0] > 100


def test_bad_input_one_line_exit_2(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("data", "info", str(tmp_path / "empty"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"cnnlab: error: {tmp_path / 'empty'}: dataset folder is empty"
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = cli("data", "show", str(tmp_path / "bad"), "-o", str(tmp_path / "g.png"))
    assert r.returncode == 2 and "x.png" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "g.png").exists()
