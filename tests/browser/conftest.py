"""A real JupyterLab and a real Chromium for the browser tests (`make test-browser`).

Chromium is Debian's package (`apt-get install chromium`; `.ci/run` installs it), driven by Playwright with its
`executable_path`: Playwright's own browser download needs the network. JupyterLab runs from this environment on
127.0.0.1 with a token, on a copy of the committed notebooks and their student copies, with its own settings,
workspace and runtime folders and the same flags as `make lab`. Screenshots of each step go to build/browser/.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check"]
LAB_FLAGS = ["--ServerApp.log_level=WARN", "--LabApp.log_level=WARN",  # as `make lab`
             "--MappingKernelManager.transport_encryption=auto"]
QUIET_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                  {"fetchNews": "false", "checkForUpdates": False}}  # no news toast over the notebook


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory) -> Path:
    """notebooks/ as committed, with student copies in notebooks/student, as `make student` writes them."""
    from helpers.course.student import make_student_copies

    root = tmp_path_factory.mktemp("lab") / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns("student", ".ipynb_checkpoints"))
    make_student_copies(root / "student", force=True)
    return root


@pytest.fixture(scope="session")
def lab(lab_root, tmp_path_factory):
    """A JupyterLab server on 127.0.0.1; yields its address, token, root and log file."""
    work = tmp_path_factory.mktemp("lab-work")
    for name, value in QUIET_SETTINGS.items():
        (work / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "settings" / name).write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_HEADLESS", "JUPYTER_TOKEN")}
    env.update(COURSE_PROFILE="smoke", OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(work / "config"),
               JUPYTER_RUNTIME_DIR=str(work / "runtime"))
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab_root}",
               f"--LabApp.user_settings_dir={work / 'settings'}", f"--LabApp.workspaces_dir={work / 'workspaces'}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               *LAB_FLAGS] + (["--allow-root"] if os.geteuid() == 0 else [])
    log_path = work / "jupyterlab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=lab_root)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_server(server, f"{base}/api/status?token={token}", log_path)
            yield {"base": base, "token": token, "root": lab_root, "log": log_path}
        finally:
            stop(server, f"{base}/api/shutdown?token={token}")


def wait_for_server(server: subprocess.Popen, status_url: str, log_path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {server.returncode}: see {log_path}")
        try:
            with urllib.request.urlopen(status_url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s: see {log_path}")


def stop(server: subprocess.Popen, shutdown_url: str) -> None:
    try:
        urllib.request.urlopen(urllib.request.Request(shutdown_url, method="POST"), timeout=10)
        server.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"No Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) or set "
                           "CHROMIUM to a Chromium binary.")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page that keeps off this machine (requests elsewhere are aborted and listed) and records errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.console_errors, page.offsite = [], []

    def route(request_route):
        if urlparse(request_route.request.url).hostname in ("127.0.0.1", "localhost"):
            return request_route.continue_()
        page.offsite.append(request_route.request.url)
        return request_route.abort()

    context.route("**/*", route)
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(f"page error: {e}"))
    page.set_default_timeout(60_000)
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def own_errors(page) -> list[str]:
    """Console errors, less the failed loads of what the page wanted from elsewhere (aborted: we are offline)."""
    return [e for e in page.console_errors if not (page.offsite and e.startswith("Failed to load resource"))]
