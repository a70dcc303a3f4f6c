"""`nas watch` at the microscope: latency from the writer's rename to the decision row, burst throughput, and
memory over many frames, with the watcher in its own process as an acquisition computer would run it.

- latency: 1024x1024 uint16 TIFFs handed over one at a time (write to a temporary name, rename), spaced so
  each is decided alone; measured from just after the rename to the moment its row is readable in
  decisions.jsonl (a reader polls the file every 2 ms, so figures are at most ~2 ms pessimistic).
- burst: the same frames, already written, renamed into the folder all at once; frames per second from the
  first rename to the last row.
- memory: a fresh watcher fed 10,000 frames of 256x256 (each deleted once decided, as a share is emptied);
  its resident memory (VmRSS) after 1,000 decisions and after 10,000.
- fsync: what one fsynced append costs on this file system (a batch of rows pays it once).
Usage: python benchmarks/watch.py [--latency-frames 60] [--burst 300] [--rss-frames 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile
from common import REPO, small_run


class Tail:
    """Arrival time of each decision row, by file name, from a reader polling decisions.jsonl."""

    def __init__(self, log: Path):
        self.log, self.arrived, self.rows, self.stop = log, {}, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        offset, partial = 0, b""
        while not self.stop:
            try:
                with open(self.log, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            if data:
                now = time.perf_counter()
                offset += len(data)
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    row = json.loads(line)
                    self.arrived[Path(row["path"]).name] = now
                    self.rows += 1
            time.sleep(0.002)

    def wait(self, count: int, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while self.rows < count:
            if time.time() > deadline:
                raise SystemExit(f"timed out: {self.rows} of {count} rows")
            time.sleep(0.005)


def start_watcher(export: Path, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "nas", "watch", str(export), str(folder), "--quiet", "--batch", "32"],
                            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    while "watching" not in (line := proc.stderr.readline()):
        if not line and proc.poll() is not None:
            raise SystemExit("nas watch did not start")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain, so the pipe never blocks it
    time.sleep(1.0)  # the observer is up
    return proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


def fsync_ms(folder: Path, n: int = 200) -> float:
    path, line = folder / "fsync_probe.jsonl", (json.dumps({"x": "y" * 300}) + "\n").encode()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, line)
        os.fsync(fd)
        os.close(fd)
        times.append(time.perf_counter() - t0)
    path.unlink()
    return float(np.median(times) * 1000)


def latency_and_burst(export: Path, work: Path, n_latency: int, n_burst: int) -> tuple[np.ndarray, float]:
    inbox, staging = work / "inbox", work / "staging"
    inbox.mkdir()
    staging.mkdir()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 60000, (1024, 1024), dtype=np.uint16) for _ in range(8)]
    proc = start_watcher(export, inbox)
    tail = Tail(inbox / "decisions.jsonl")
    try:
        latencies = []
        for i in range(n_latency):
            tmp = inbox / f".lat{i:04d}.part"
            tifffile.imwrite(tmp, frames[i % len(frames)])
            os.rename(tmp, inbox / f"lat{i:04d}.tif")
            t0 = time.perf_counter()
            tail.wait(i + 1)
            latencies.append((tail.arrived[f"lat{i:04d}.tif"] - t0) * 1000)
            time.sleep(0.1)
        for i in range(n_burst):
            tifffile.imwrite(staging / f"burst{i:04d}.tif", frames[i % len(frames)])
        t0 = time.perf_counter()
        for i in range(n_burst):
            os.rename(staging / f"burst{i:04d}.tif", inbox / f"burst{i:04d}.tif")
        tail.wait(n_latency + n_burst)
        burst = n_burst / (max(tail.arrived[f"burst{i:04d}.tif"] for i in range(n_burst)) - t0)
    finally:
        tail.stop = True
        proc.terminate()
        proc.wait(timeout=60)
    return np.array(latencies), burst


def memory(export: Path, work: Path, n: int) -> tuple[float, float]:
    inbox = work / "rss"
    inbox.mkdir()
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 60000, (256, 256), dtype=np.uint16) for _ in range(16)]
    proc = start_watcher(export, inbox)
    tail = Tail(inbox / "decisions.jsonl")
    at, deleted = {}, set()
    try:
        for i in range(n):
            tmp = inbox / f".m{i:05d}.part"
            tifffile.imwrite(tmp, frames[i % len(frames)])
            os.rename(tmp, inbox / f"m{i:05d}.tif")
            if i % 100 == 0:  # keep the share small: delete frames already decided
                for name in [k for k in list(tail.arrived) if k not in deleted]:
                    (inbox / name).unlink(missing_ok=True)
                    deleted.add(name)
            if i + 1 in (1_000, n):
                tail.wait(i + 1)
                time.sleep(0.5)
                at[i + 1] = rss_mb(proc.pid)
    finally:
        tail.stop = True
        proc.terminate()
        proc.wait(timeout=60)
    return at[1_000], at[n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-frames", type=int, default=60)
    ap.add_argument("--burst", type=int, default=300)
    ap.add_argument("--rss-frames", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export = small_run(work) / "export"
        sync = fsync_ms(work)
        lat, burst = latency_and_burst(export, work, args.latency_frames, args.burst)
        rss_1k, rss_n = memory(export, work, args.rss_frames)
    p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
    print(f"rename -> decision row, 1024x1024 uint16, {len(lat)} frames one at a time: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    print(f"burst of {args.burst} frames renamed at once: {burst:.1f} frames/s")
    print(f"watcher VmRSS: {rss_1k:.0f} MB after 1,000 frames, {rss_n:.0f} MB after {args.rss_frames:,} (256x256)")
    print(f"one fsynced append here: {sync:.2f} ms (median of 200)")
    print(json.dumps({"watch_p50_ms_1024": round(p50, 2), "watch_p95_ms_1024": round(p95, 2),
                      "watch_frames_per_s_burst": round(burst, 1), "watch_rss_10k_vs_1k": round(rss_n / rss_1k, 3),
                      "fsync_ms": round(sync, 2)}))


if __name__ == "__main__":
    main()
