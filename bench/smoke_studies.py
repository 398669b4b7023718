"""Every study's smoke profile, run as a user runs it (``ablab run STUDY --profile smoke``), one after another:
its wall and its claims' verdicts, as a markdown table (the README's "Every study on the smoke data").

    python bench/smoke_studies.py [--fp32] [--out-root DIR] [studies/table3.yaml ...]

``--fp32`` forces fp32 (``ABLAB_NATIVE_BF16=0``: what ``precision: auto`` picks on a CPU without native bf16).
Each study runs in its own fresh output root, so nothing is reused from an earlier run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="*", type=Path)
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--out-root", type=Path, default=None, help="default: a temporary folder per study")
    args = ap.parse_args()
    studies = args.studies or sorted((REPO / "studies").glob("*.yaml"))
    env = {**os.environ, **({"ABLAB_NATIVE_BF16": "0"} if args.fp32 else {})}

    import ablab
    from ablab.evidence import verdict_text

    rows = []
    for study in studies:
        out = args.out_root / study.stem if args.out_root else Path(tempfile.mkdtemp(prefix=f"ablab-{study.stem}-"))
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "ablab.cli", "run", str(study), "--profile", "smoke",
                              "--out-root", str(out)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if run.returncode != 0:
            rows.append(f"| {study.stem} | {wall / 60:.1f} min | failed (exit {run.returncode}): "
                        f"{run.stderr.strip().splitlines()[-1][:200] if run.stderr.strip() else ''} |")
        else:
            claims = ablab.claims(str(study), profile="smoke", out_root=str(out))
            said = [verdict_text(r) for _, r in claims.iterrows()]
            counts = ", ".join(f"{said.count(v)} {v}" for v in dict.fromkeys(sorted(said))) or "no claims"
            kinds = ", ".join(f"{n} {k}" for k, n in claims["kind"].value_counts().items())
            rows.append(f"| {study.stem} | {wall / 60:.1f} min | {counts} | {kinds} |")
        print(rows[-1], flush=True)
    print("\n| study | smoke wall | verdicts | claims' kinds |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
