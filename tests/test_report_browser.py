"""The offline report in a real headless browser (Debian's chromium, installed here by the test
set-up when missing): it renders its figures, with no errors in the console."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib import image as mpimg

from dpresearch.report.__main__ import build_report
from tests.helpers.runs import fake_run


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium, and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(cmd, capture_output=True, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            pytest.skip(f"apt-get install chromium failed: {result.stderr[-300:]}")
    return shutil.which("chromium")


def test_report_renders_its_figures_in_headless_chromium(tmp_path) -> None:
    browser = chromium()
    runs = tmp_path / "runs"
    for seed in range(2):
        for eps in (1.0, 4.0):
            fake_run(runs, f"r{eps}-{seed}", status="completed", seed=seed, target_epsilon=eps,
                     epsilon=eps, test_accuracy=0.5 + eps / 10, clip=eps,
                     lr=0.01 * (seed + 1))  # fmt: skip
    fake_run(runs, "crashed", status="failed", error="boom")
    report = build_report([runs], tmp_path / "out")
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,3000",
         f"--screenshot={shot}", "--enable-logging=stderr", "--v=0", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists(), result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower()], console
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    # The figures are drawn: the matplotlib default blue of the lines and bars is on the page.
    blue = np.array([0x1F, 0x77, 0xB4]) / 255
    assert (np.abs(pixels - blue).sum(-1) < 0.05).sum() > 500
