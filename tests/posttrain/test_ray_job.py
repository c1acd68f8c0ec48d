"""The real distributed path: a Ray head on loopback, `ray job submit -- posttrain sft`, then stop it."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_sft_on_a_cluster(tmp_path):
    gcs, dash, agent = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's unix sockets live under it
    # --block keeps the head in one process group that we stop ourselves; `ray stop` would also stop
    # any other Ray on this machine (other tests', other users').
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out = tmp_path / "sft"
    try:
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            f"--address=http://127.0.0.1:{dash}",
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "posttrain.cli",
            "sft",
            "--config",
            "configs/tiny/sft.yaml",
            f"output_dir={out}",
            "max_steps=4",
            f"target_cache={tmp_path / 'targets'}",
        ]
        deadline = time.time() + 120
        while True:  # the job agent needs a few seconds after the head is up
            proc = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if (
                proc.returncode == 0
                or time.time() > deadline
                or "succeeded" in proc.stdout
                or "entrypoint command failed" in proc.stdout + proc.stderr
            ):
                break
            time.sleep(3)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout + proc.stderr
        assert (out / "DONE").is_file() and (out / "model.safetensors").is_file()
        record = json.loads((out / "posttrain.json").read_text())
        assert record["ray"]["embedded"] is False
        assert record["ray"]["gcs_address"].endswith(f":{gcs}")
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
