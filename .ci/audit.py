"""`make audit`: pip-audit over the locked dependencies (constraints.txt and the torch pin of
pyproject.toml, whose `+cpu` build is the PyPI release's), with the dated waivers of
.ci/audit-waivers.txt. Exit 1 on a vulnerability without a waiver, a stale or malformed waiver,
or a package that could not be audited while others could; exit 3 when the vulnerability service
answered for no package at all (nothing was checked), unless --allow-unreachable."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_AGE = dt.timedelta(days=90)


def waivers(path: Path, today: dt.date) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(vulnerability id -> reason, skipped package -> reason, problems) from the waiver file."""
    vulns: dict[str, str] = {}
    skips: dict[str, str] = {}
    problems: list[str] = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind = "skip" if line.split()[0] == "skip" else "vuln"
        parts = line.split(None, 3)[1:] if kind == "skip" else line.split(None, 2)
        if len(parts) < 3:
            problems.append(f"{path.name}:{n}: expected 'ID YYYY-MM-DD reason', got {raw!r}")
            continue
        key, date, reason = parts[0], parts[1], parts[2]
        try:
            when = dt.date.fromisoformat(date)
        except ValueError:
            problems.append(f"{path.name}:{n}: {date!r} is not a YYYY-MM-DD date")
            continue
        if today - when > MAX_AGE:
            problems.append(f"{path.name}:{n}: waiver for {key} reviewed {date}, over 90 days")
        (skips if kind == "skip" else vulns)[key.lower() if kind == "skip" else key] = reason
    return vulns, skips, problems


def locked(skips: dict[str, str]) -> list[str]:
    """`name==version` lines to audit: constraints.txt and torch, minus the skipped names."""
    out = []
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and line.split("==")[0].strip().lower() not in skips:
            out.append(line)
    torch = re.search(r'"torch==([^"+]+)', (ROOT / "pyproject.toml").read_text())
    if torch and "torch" not in skips:
        out.append(f"torch=={torch.group(1)}")
    return out


def main() -> int:
    """Run the audit and judge its JSON report (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--waivers", type=Path, default=ROOT / ".ci" / "audit-waivers.txt")
    ap.add_argument("--requirements", type=Path, help="audit this file instead of the lock")
    ap.add_argument("--allow-unreachable", action="store_true")
    args = ap.parse_args()
    vulns, skips, problems = waivers(args.waivers, dt.date.today())
    with tempfile.TemporaryDirectory() as tmp:
        req = args.requirements or Path(tmp) / "locked.txt"
        if args.requirements is None:
            req.write_text("\n".join(locked(skips)) + "\n")
        report = Path(tmp) / "report.json"
        cmd = [str(Path(sys.executable).with_name("pip-audit")), "-r", str(req), "--no-deps",
               "--disable-pip", "-s", "pypi", "--progress-spinner", "off", "-f", "json",
               "-o", str(report)]  # fmt: skip
        for vid in vulns:
            cmd += ["--ignore-vuln", vid]
        rc = subprocess.run(cmd, check=False).returncode
        if not report.exists():
            print(f"audit: pip-audit failed (exit {rc}) without a report", file=sys.stderr)
            return 1
        deps = json.loads(report.read_text())["dependencies"]
    found = [(d["name"], d["version"], v["id"], v.get("fix_versions", []))
             for d in deps for v in d.get("vulns", [])]  # fmt: skip
    unaudited = [d["name"] for d in deps if "skip_reason" in d]
    audited = len(deps) - len(unaudited)
    for name, version, vid, fixes in found:
        print(f"audit: {name}=={version}: {vid} (fixed in {', '.join(fixes) or 'no release'})")
    for p in problems:
        print(f"audit: {p}")
    print(f"audit: {audited} of {len(deps)} packages audited, {len(found)} known "
          f"vulnerabilities, {len(vulns)} waived, {len(skips)} skipped by waiver")  # fmt: skip
    if found or problems:
        return 1
    if unaudited and audited == 0:
        print("audit: NOTHING WAS AUDITED: the vulnerability service (pypi.org/pypi/<name>/"
              "<version>/json) answered for no package", file=sys.stderr)  # fmt: skip
        return 0 if args.allow_unreachable else 3
    if unaudited:
        print(f"audit: not on PyPI, add a dated 'skip' waiver: {', '.join(unaudited)}")
        return 1
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
