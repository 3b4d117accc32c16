"""Fetch Triton's perf_analyzer for the interoperability test.

The tritonclient 2.41.0 wheel on PyPI still carries the perf_analyzer binary
(later ones split it out); it links libcudart.so.12 (from the
nvidia-cuda-runtime-cu12 wheel, loaded even without a GPU) and libb64 (Debian's
libb64-0d, installed by `make system-deps`). Nothing of it is committed: this
downloads the two wheels from PyPI into .tools/perf_analyzer and unpacks the
binary and the library.

    python tools/fetch_perf_analyzer.py   ->  .tools/perf_analyzer/bin/perf_analyzer
"""

from __future__ import annotations

import platform
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".tools" / "perf_analyzer"
WHEELS = {
    "tritonclient==2.41.0": "manylinux1_x86_64",
    "nvidia-cuda-runtime-cu12==12.9.79": "manylinux2014_x86_64",
}


def main() -> int:
    binary = DEST / "bin" / "perf_analyzer"
    if binary.exists():
        return 0
    if platform.machine() != "x86_64":
        print(f"perf_analyzer wheels are x86_64 only; this machine is {platform.machine()}", file=sys.stderr)
        return 1
    wheels = DEST / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for spec, plat in WHEELS.items():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                plat,
                "-d",
                str(wheels),
                spec,
            ],
            check=True,
        )
    (DEST / "bin").mkdir(exist_ok=True)
    (DEST / "lib").mkdir(exist_ok=True)
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.endswith("/bin/perf_analyzer"):
                    binary.write_bytes(zf.read(name))
                    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
                elif name.endswith("libcudart.so.12"):
                    (DEST / "lib" / "libcudart.so.12").write_bytes(zf.read(name))
    if not binary.exists():
        print("no perf_analyzer in the downloaded wheel", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
