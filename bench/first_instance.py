"""From `git clone` to a stand-in Foundry answering through the edge, by the README alone.

Target (issue 16): <= 3 minutes on a fresh machine with packages cached (Debian's packages installed,
pip's download cache warm). What a person does, each step timed:
  git clone                      the repository, into a new directory
  make run (until it serves)     venv, locked Python packages, `init`, `up` in the foreground
  release add ZIP                a stand-in release zip (tests/support/foundry_standin: a real node server)
  instance create                the first instance, started
  first answer through the edge  GET https://<instance>.localhost:<https port>/-/api/status -> 200
The ports are moved off the defaults with INIT_ARGS (as the README says), so a fleet already on this
machine does not stop it. The anchor: the same steps with the checkout's venv already made (a second
`make run` of the same clone), as a ratio.
Run: .venv/bin/python bench/first_instance.py [--repo .]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.machine import describe  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from tests.support.edge_client import local_ca, tls_context  # noqa: E402
from tests.support.foundry_standin import build_release_zip  # noqa: E402

PORT_LOW = 31900  # instance ports 31900-31909: below the kernel's ephemeral range, as init requires
HTTP, HTTPS, WEB = 31920, 31921, 31922


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def serves(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=2) as c:
            return c.get("http://fleet/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


def one_run(repo: Path, work: Path, clone: bool, zip_path: Path) -> dict[str, float]:
    steps: dict[str, float] = {}
    checkout = work / "checkout"
    t0 = time.monotonic()
    if clone:
        subprocess.run(["git", "clone", "-q", str(repo), str(checkout)], check=True)
        steps["git clone"] = time.monotonic() - t0
    root = work / "fleet-data"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)  # the clone's own code, as a person runs it
    t = time.monotonic()
    run = subprocess.Popen(
        ["make", "run", f"ROOT={root}",
         f"INIT_ARGS=--http-port {HTTP} --https-port {HTTPS} --web-port {WEB} "
         f"--instance-ports {PORT_LOW}-{PORT_LOW + 9}"],
        cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: serves(root / "run" / "control.sock") or run.poll() is not None, 600, "make run to serve")
        if run.poll() is not None:
            raise RuntimeError(f"make run ended: {run.stderr.read().decode()[-2000:]}")
        steps["make run (until it serves)"] = time.monotonic() - t
        cli = [str(checkout / ".venv" / "bin" / "foundry-fleet"), "--config", str(root / "fleet.toml")]
        t = time.monotonic()
        subprocess.run([*cli, "release", "add", str(zip_path)], check=True, capture_output=True, env=env)
        steps["release add"] = time.monotonic() - t
        t = time.monotonic()
        subprocess.run([*cli, "instance", "create", "alice", "--release", "13.345"], check=True, capture_output=True,
                       env=env)
        steps["instance create"] = time.monotonic() - t
        t = time.monotonic()
        ca = local_ca(root)

        def answers() -> bool:
            try:
                with httpx.Client(verify=tls_context(ca), timeout=2) as c:
                    r = c.get(f"https://127.0.0.1:{HTTPS}/-/api/status", headers={"Host": f"alice.localhost:{HTTPS}"},
                              extensions={"sni_hostname": "alice.localhost"})
                    return r.status_code == 200
            except (httpx.HTTPError, OSError):
                return False

        wait_for(lambda: ca.exists() and answers(), 120, "alice through the edge")
        steps["first answer through the edge"] = time.monotonic() - t
        steps["total"] = time.monotonic() - t0
        return steps
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C, as the README says: instances and Caddy stop with it
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-instance-"))
    try:
        zip_path = build_release_zip(work, ReleaseLayout.NODE, 13, 345)
        fresh = one_run(Path(args.repo), work, clone=True, zip_path=zip_path)
        remove_tree(work / "fleet-data")
        again = one_run(Path(args.repo), work, clone=False, zip_path=zip_path)
    finally:
        remove_tree(work)
    print(describe())
    print(f"{'step':34s} {'fresh clone':>12s} {'venv made':>10s}")
    for step in fresh:
        print(f"{step:34s} {fresh[step]:10.1f} s {again.get(step, 0.0):8.1f} s")
    print(f"fresh clone / venv made: {fresh['total'] / again['total']:.2f}x; target <= 180 s: "
          f"{'met' if fresh['total'] <= 180 else 'NOT met'}")


if __name__ == "__main__":
    main()
