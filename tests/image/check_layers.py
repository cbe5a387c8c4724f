"""Check that no layer of an OCI image layout holds the build's secrets, and print the image's size.

    python3 tests/image/check_layers.py OCI_DIR BASE_LAYERS SECRET_FILE...

A secret mounted with `RUN --mount=type=secret` exists only while that step runs; this proves it:
no layer has a path under run/secrets, and no file in any layer has a secret file's exact bytes
(compared by size first, then sha256, so a multi-GB layer is read once). The first BASE_LAYERS
layers, the base image's, are only counted: a base made on this host may hold the same CA bundle
from Debian's ca-certificates. Prints
`image-size-bytes=N`, the sum of the uncompressed layers. Standard library only: the host's python3.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path


def blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def main(layout: Path, base_layers: int, secret_files: list[Path]) -> int:
    secrets = {}
    for path in secret_files:
        if path.is_file():
            data = path.read_bytes()
            secrets[(len(data), hashlib.sha256(data).hexdigest())] = str(path)
    sizes = {size for size, _ in secrets}
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    manifest = json.loads(blob(layout, entry["digest"]).read_text())
    total, problems = 0, []
    for index, layer in enumerate(manifest["layers"]):
        checked = index >= base_layers
        with tarfile.open(blob(layout, layer["digest"]), "r|*") as tar:  # plain or gzip
            for member in tar:
                total += member.size
                name = member.name.lstrip("./")
                if checked and name.startswith("run/secrets/") and name != "run/secrets/":
                    problems.append(f"{layer['digest'][:19]}: {name}")
                if checked and member.isfile() and member.size in sizes:
                    digest = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
                    if (member.size, digest) in secrets:
                        problems.append(f"{layer['digest'][:19]}: {name} is {secrets[(member.size, digest)]}")
    for problem in problems:
        print(f"check_layers: secret in a layer: {problem}", file=sys.stderr)
    print(f"layers={len(manifest['layers'])} checked={len(manifest['layers']) - base_layers} image-size-bytes={total}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]))
