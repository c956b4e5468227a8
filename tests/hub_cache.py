"""Test helper: put a folder in the Hub cache layout, as ``huggingface_hub`` leaves a downloaded repo.

``SentenceTransformer("org/name")`` then loads it with ``HF_HUB_OFFLINE=1``: a test can load what a push uploaded
exactly as a user of the Hub would, with no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_to_hub_cache(folder: str | Path, repo_id: str, cache_dir: str | Path, revision: str = "main") -> Path:
    """Place ``folder`` in ``cache_dir`` as the snapshot of ``repo_id`` at ``revision``; returns the snapshot.

    Layout: ``models--{org}--{name}/blobs/<sha256 for LFS-sized files, git sha1 for the others>``,
    ``snapshots/<commit>/<path>`` as relative symlinks to the blobs, and ``refs/<revision>`` holding the commit.
    """
    from huggingface_hub.utils.sha import git_hash

    folder, cache_dir = Path(folder), Path(cache_dir)
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    hashes = {}
    for path in files:
        data = path.read_bytes()
        is_lfs = path.suffix == ".safetensors" or len(data) > 10 * 1024 * 1024
        hashes[path] = hashlib.sha256(data).hexdigest() if is_lfs else git_hash(data)
    listing = "".join(f"{p.relative_to(folder).as_posix()}:{h}\n" for p, h in hashes.items())
    commit_hash = hashlib.sha1(listing.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit_hash
    for path, blob_hash in hashes.items():
        blob = repo_dir / "blobs" / blob_hash
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit_hash, encoding="utf-8")
    return snapshot
