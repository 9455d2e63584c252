"""End to end: `cnnlab serve` on 127.0.0.1, its page driven in headless Chromium.

Needs Debian's `chromium` and `chromium-driver`; the set-up installs them with apt-get when
it may (root, or sudo without a password) and skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_train_helpers import CLASSES, bar_image, train_tiny_run

from cnnlab.images import write_image
from cnnlab.predict import predict_files

pytestmark = pytest.mark.slow
APT_PACKAGES = ("chromium", "chromium-driver")
SERVER_START_S = 90  # importing torch on a busy 2-core machine takes a while
PAGE_WAIT_S = 20


def _find_browser() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    return (browser, driver) if browser and driver else None


def _install_browser() -> str:
    """apt-get install Debian's chromium + driver; returns why it could not, or ''."""
    if not shutil.which("apt-get"):
        return "no apt-get on this system"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and not shutil.which("sudo"):
        return "not root and no sudo to run apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get failed ({e})"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`{' '.join(cmd)}` failed: {last}"
    return ""


@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")
    found = _find_browser()
    if found is None:
        why = _install_browser()
        found = _find_browser()
        if found is None:
            pytest.skip(f"headless Chromium unavailable: {why or 'installed but not found'}")
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real server process; yields (base URL, audit log path)."""
    port = _free_port()
    audit = tmp_path_factory.mktemp("serve") / "audit.jsonl"
    cmd = [sys.executable, "-m", "cnnlab", "serve", str(tiny_run), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--quiet", "--audit-log", str(audit)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health within {SERVER_START_S} s")
            time.sleep(0.3)
        yield url, audit
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_page_shows_the_predicted_label(browser, server, tiny_run: Path, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, audit = server
    image = write_image(tmp_path / "bar.png", bar_image(1, 16, np.random.default_rng(3)))
    want = predict_files(tiny_run, [image], device="cpu")[0]

    chrome, chromedriver = browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, PAGE_WAIT_S)
        wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(image))
        label = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".card .label")))
        assert label.text == want["label"]
        bars = driver.find_elements(By.CSS_SELECTOR, ".card .bar")
        assert [b.find_element(By.TAG_NAME, "span").text for b in bars] == list(CLASSES)
        top = driver.find_element(By.CSS_SELECTOR, ".card .bar.top .num").text
        assert top == f"{100 * want['probability']:.1f}%"
        assert "done in" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert lines[-1]["label"] == want["label"] and lines[-1]["file"] == "bar.png"
