"""md2pr push: dry run, the calls made to huggingface_hub's API (one commit), token hygiene, huggingface_hub's own
errors, what is pushed (the shipped MiniLM folder, no symlinks out, no pickles), the CLI, loading from the Hub cache.

No test reaches a network or uses a real token: the HfApi is an autospec of the real class (so every call is
checked against huggingface_hub's signatures), or the real HfApi on a mock HTTP transport.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import traceback
from types import SimpleNamespace
from unittest import mock

import httpx2
import numpy as np
import pytest
from hub_cache import add_to_hub_cache
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import hf_raise_for_status

from md2pr_st import cli
from md2pr_st.hub import HubPushError, push_to_hub, validate_model_folder, write_model_card

FAKE_TOKEN = "hf_fakeTOKENnotReal0123456789"
METRICS = {
    "before": {"ndcg@10": 0.3, "mrr@10": 0.4, "recall@100": 0.6, "map@100": 0.2, "n_queries": 60, "corpus_size": 6011},
    "after": {"ndcg@10": 0.45, "mrr@10": 0.5, "recall@100": 0.7, "map@100": 0.3, "n_queries": 60, "corpus_size": 6011},
}
RUN_INFO = {"teacher": "cross-encoder/ms-marco-MiniLM-L6-v2", "alpha": 1.0, "beta": 0.5, "command": "md2pr train"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\1" * 32


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere: not in HF_TOKEN, not in the login cache."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_file"))


@pytest.fixture
def run_dir(tiny_model_path, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_model_path, run / "model")
    (run / "metrics.json").write_text(json.dumps(METRICS))
    (run / "run_info.json").write_text(json.dumps(RUN_INFO))
    (run / "dev_ndcg.png").write_bytes(PNG)
    (run / "round_1").mkdir()
    (run / "round_1" / "filter_gaps.png").write_bytes(PNG + b"gaps")
    return run


def fake_api(remote_dir=None, exists=False):
    """An autospec of HfApi: calls with arguments HfApi does not accept fail; create_commit writes the commit's
    files to ``remote_dir``."""
    api = mock.create_autospec(HfApi, instance=True)
    api.repo_exists.return_value = exists

    def create_commit(repo_id, operations, **kwargs):
        for op in operations:
            assert isinstance(op, CommitOperationAdd)
            if remote_dir is not None:
                target = remote_dir / op.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(op.path_or_fileobj, target)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{'a' * 40}", oid="a" * 40)

    api.create_commit.side_effect = create_commit
    return api


def hub_error(status: int, path: str, **headers) -> HfHubHTTPError:
    """A real huggingface_hub error from a response to a request that carried the token; the server even
    echoes the token in its message (the worst case for hygiene)."""
    request = httpx2.Request(
        "POST", f"https://huggingface.co{path}", headers={"authorization": f"Bearer {FAKE_TOKEN}"}
    )
    response = httpx2.Response(
        status, request=request, headers=headers, json={"error": f"refused for token {FAKE_TOKEN}"}
    )
    try:
        hf_raise_for_status(response)
    except HfHubHTTPError as exc:
        return exc
    raise AssertionError("no error raised")


def listing(text: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"^    (\S+)\s+([\d,]+) bytes$", text, re.M)
    }


def expected_files(run) -> dict[str, int]:
    model = run / "model"
    files = {p.relative_to(model).as_posix(): p.stat().st_size for p in model.rglob("*") if p.is_file()}
    files["metrics.json"] = (run / "metrics.json").stat().st_size
    files["run_info.json"] = (run / "run_info.json").stat().st_size
    files["plots/dev_ndcg.png"] = (run / "dev_ndcg.png").stat().st_size
    files["plots/round_1_filter_gaps.png"] = (run / "round_1" / "filter_gaps.png").stat().st_size
    files["md2pr_card_data.json"] = None  # the card's state, written with the card
    return files


def test_dry_run_lists_exactly_what_is_uploaded_and_calls_no_api(run_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr("huggingface_hub.HfApi", mock.Mock(side_effect=AssertionError("no API in a dry run")))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    code = cli.main(["push", str(run_dir), "--repo-id", "org/md2pr-tiny", "--dry-run", "--private"])
    out, err = capsys.readouterr()

    assert code == 0
    assert "Dry run: nothing uploaded, no Hub API called." in out
    assert "  repo_id: org/md2pr-tiny" in out and "  private: True" in out and "  revision: main" in out
    assert "  token: found (HF_TOKEN)" in out
    files = listing(out)
    expected = expected_files(run_dir)
    assert set(files) == set(expected)
    for path, size in files.items():
        if path not in ("README.md", "md2pr_card_data.json"):  # the card is rendered for the repo id
            assert size == expected[path], path
    assert FAKE_TOKEN not in out + err
    # The source is untouched and nothing is left behind
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_push_is_one_commit_with_the_card_and_plots(run_dir, tmp_path):
    remote = tmp_path / "remote"
    api = fake_api(remote)
    result = push_to_hub(
        run_dir, "org/md2pr-tiny", private=True, revision="v1", token=FAKE_TOKEN, commit_message="MD2PR v1", api=api
    )

    api.repo_exists.assert_called_once_with("org/md2pr-tiny", repo_type="model")
    api.create_repo.assert_called_once_with("org/md2pr-tiny", repo_type="model", private=True, exist_ok=True)
    api.create_branch.assert_called_once_with("org/md2pr-tiny", branch="v1", repo_type="model", exist_ok=True)
    api.create_commit.assert_called_once()
    args, kwargs = api.create_commit.call_args
    assert args[0] == "org/md2pr-tiny"
    assert kwargs == {"commit_message": "MD2PR v1", "repo_type": "model", "revision": "v1"}
    assert not api.upload_folder.called and not api.upload_file.called  # one commit, nothing else
    assert result.created is True and result.commit_url.endswith("a" * 40)
    # What was uploaded is what the result lists; the card's image links resolve inside the upload
    uploaded = {p.relative_to(remote).as_posix(): p.stat().st_size for p in remote.rglob("*") if p.is_file()}
    assert uploaded == dict(result.files)
    card = ModelCard.load(remote / "README.md")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    assert links == ["plots/dev_ndcg.png", "plots/round_1_filter_gaps.png"]
    assert all((remote / link).is_file() for link in links)
    assert 'SentenceTransformer("org/md2pr-tiny")' in card.text
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0] == {
        "type": "ndcg_at_10",
        "value": 0.45,
        "name": "nDCG@10",
    }
    assert FAKE_TOKEN not in result.summary() and FAKE_TOKEN not in repr(result)


def test_push_of_a_model_folder_to_an_existing_repo(tiny_model_path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    remote = tmp_path / "remote"
    api = fake_api(remote, exists=True)
    result = push_to_hub(model, "acme/md2pr-tiny", private=True, token=FAKE_TOKEN, api=api)

    assert result.created is False
    assert "acme/md2pr-tiny already exists: this push adds one commit" in result.notes[0]
    assert "--private applies only to new repos" in result.notes[0]
    api.create_repo.assert_not_called()
    api.create_branch.assert_not_called()
    assert api.create_commit.call_args.kwargs["revision"] is None
    assert {p.name for p in remote.iterdir()} >= {"modules.json", "model.safetensors", "README.md"}
    # A plain model folder keeps its card, pointed at the repo id as the host does
    assert 'SentenceTransformer("acme/md2pr-tiny")' in (remote / "README.md").read_text()


def test_a_card_written_by_the_pipeline_keeps_its_plots_when_pushed(run_dir, tmp_path):
    plots = [run_dir / "dev_ndcg.png", run_dir / "round_1" / "filter_gaps.png"]
    write_model_card(run_dir / "model", METRICS, RUN_INFO, plots=plots)
    for plot in plots:
        plot.unlink()  # the plots now live only in model/plots/
    plot_bytes = (run_dir / "model" / "plots" / "dev_ndcg.png").read_bytes()
    for source, remote in ((run_dir, tmp_path / "remote_run"), (run_dir / "model", tmp_path / "remote_model")):
        push_to_hub(source, "org/md2pr-tiny", token=FAKE_TOKEN, api=fake_api(remote))
        text = (remote / "README.md").read_text()
        assert "![dev ndcg](plots/dev_ndcg.png)" in text and text.count("![dev ndcg]") == 1
        assert "![round 1 filter gaps](plots/round_1_filter_gaps.png)" in text
        assert (remote / "plots" / "dev_ndcg.png").read_bytes() == plot_bytes
        assert 'SentenceTransformer("org/md2pr-tiny")' in text and "sentence_transformers_model_id" not in text
        assert "| Sentence-level weight `alpha` | 1.000000 |" in text  # the run info kept with the card
    assert (run_dir / "model" / "plots" / "dev_ndcg.png").read_bytes() == plot_bytes
    assert "sentence_transformers_model_id" in (run_dir / "model" / "README.md").read_text()  # source untouched


def test_the_shipped_minilm_folder_is_pushed_as_the_host_loads_it(minilm_path, capsys):
    """all-MiniLM-L6-v2 as on the Hub: modules.json names 2_Normalize, which has no folder (nothing to save)."""
    assert not (minilm_path / "2_Normalize").exists()
    validate_model_folder(minilm_path)
    result = push_to_hub(minilm_path, "org/minilm", dry_run=True)
    files = dict(result.files)
    assert files["model.safetensors"] == (minilm_path / "model.safetensors").stat().st_size
    assert "modules.json" in files and "1_Pooling/config.json" in files and ".gitattributes" not in files
    assert not any(path.startswith("2_Normalize") for path in files)
    assert cli.main(["push", str(minilm_path), "--repo_id", "org/minilm", "--dry_run"]) == 0
    assert "model.safetensors" in capsys.readouterr().out


def test_symlinks_out_of_the_folder_are_refused(tiny_model_path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    secret = tmp_path / "secret.txt"
    secret.write_text("private notes")
    (model / "notes.txt").symlink_to(secret)
    with pytest.raises(ValueError, match=r"notes.txt is a symlink to .*secret.txt, outside .*only the folder's own"):
        push_to_hub(model, "org/x", dry_run=True)
    (model / "notes.txt").unlink()
    (model / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match="elsewhere is a symlink to .*, outside"):
        validate_model_folder(model)
    (model / "elsewhere").unlink()
    # A link to a file inside the folder is the folder's own file
    (model / "modules_copy.json").symlink_to(model / "modules.json")
    assert "modules_copy.json" in dict(push_to_hub(model, "org/x", dry_run=True).files)
    (model / "modules_copy.json").unlink()
    (model / "gone.json").symlink_to(model / "no_such_file.json")
    with pytest.raises(ValueError, match="gone.json is a broken symlink"):
        validate_model_folder(model)


def test_a_folder_that_does_not_load_is_refused(tiny_model_path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    (model / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"does not load with SentenceTransformer\(\.\.\., trust_remote_code=False\)"):
        push_to_hub(model, "org/x", dry_run=True)


def _error_cases():
    def offline(*args, **kwargs):
        raise OfflineModeIsEnabled(
            "Cannot reach https://huggingface.co/api/models/org/x: offline mode is enabled. To disable it, please "
            "unset the `HF_HUB_OFFLINE` environment variable."
        )

    def network(*args, **kwargs):
        raise httpx2.ConnectError(f"connection refused (token {FAKE_TOKEN})")

    return {
        # case: (method to break, side effect, words the message must contain)
        "rejected token": ("repo_exists", hub_error(401, "/api/models/org/x"), ["401", "came from argument"]),
        "forbidden": ("create_repo", hub_error(403, "/api/repos/create"), ["403 Forbidden", "write access"]),
        "offline": ("repo_exists", offline, ["OfflineModeIsEnabled", "HF_HUB_OFFLINE"]),
        "network": ("create_repo", network, ["ConnectError", "connection refused"]),
        "server error": ("create_commit", hub_error(500, "/api/models/org/x/commit/main"), ["500", "hf_***"]),
        "revision": (
            "create_commit",
            hub_error(404, "/api/models/org/x/commit/v9", **{"X-Error-Code": "RevisionNotFound"}),
            ["RevisionNotFoundError", "Revision Not Found"],
        ),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_huggingface_hub_errors_speak_without_the_token(case, run_dir, capsys, caplog):
    method, effect, words = _error_cases()[case]
    api = fake_api()
    getattr(api, method).side_effect = effect
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubPushError) as info:
        push_to_hub(run_dir, "org/x", token=FAKE_TOKEN, api=api, check_load=False)
    message = str(info.value)
    for word in words:
        assert word in message
    assert info.value.error_type == type(effect).__name__ if isinstance(effect, Exception) else info.value.error_type
    shown = "".join(traceback.format_exception(info.value)) + repr(info.value)
    out, err = capsys.readouterr()
    assert FAKE_TOKEN not in message + shown + out + err + caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # the cause's request holds the token
    if method != "create_commit":
        api.create_commit.assert_not_called()


def test_someone_elses_namespace_fails_before_any_upload(run_dir):
    api = fake_api()
    api.create_repo.side_effect = hub_error(403, "/api/repos/create")
    with pytest.raises(HubPushError, match="403 Forbidden") as info:
        push_to_hub(run_dir, "bob/x", token=FAKE_TOKEN, api=api, check_load=False)
    assert info.value.status_code == 403
    api.create_commit.assert_not_called()


def test_missing_token_names_the_fix(run_dir, no_token, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.HfApi", mock.Mock(side_effect=AssertionError("no API without a token")))
    code = cli.main(["push", str(run_dir), "--repo_id", "org/x"])
    err = capsys.readouterr().err
    assert code == 1
    assert "md2pr push: error: No Hugging Face token found" in err
    assert "hf auth login" in err and "huggingface-cli login" in err and "HF_TOKEN" in err


@pytest.fixture
def mock_hub(monkeypatch):
    """The real HfApi on a mock HTTP transport (no network): returns the requests seen; the handler is set by
    the test."""
    from huggingface_hub.utils import _http

    seen, handler = [], {}

    def factory():
        def respond(request):
            seen.append(request)
            return handler["fn"](request)

        return httpx2.Client(
            transport=httpx2.MockTransport(respond), event_hooks={"request": [_http.hf_request_event_hook]}
        )

    _http.set_client_factory(factory)
    yield seen, handler
    _http.set_client_factory(_http.default_client_factory)


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, ["401 Unauthorized", "came from HF_TOKEN", "hf auth login"]),
        (403, ["403 Forbidden", "You don't have the rights", "write access"]),
    ],
)
def test_real_hfapi_errors_through_a_mock_transport(status, words, run_dir, mock_hub, monkeypatch, capsys):
    seen, handler = mock_hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)

    def respond(request):
        assert request.headers["authorization"] == f"Bearer {FAKE_TOKEN}"  # the token goes in the header only
        if request.url.path.startswith("/api/models/org/x"):  # repo_exists: it does not (or cannot be seen)
            return httpx2.Response(
                401 if status == 401 else 404, headers={"X-Error-Code": "RepoNotFound"}, json={"error": "Not found"}
            )
        if request.url.path == "/api/repos/create":
            payload = json.loads(request.content)
            assert (payload["name"], payload["organization"], payload["type"]) == ("x", "org", "model")
            assert payload["visibility"] == "public"
            return httpx2.Response(status, json={"error": "You don't have the rights to create a model under org"})
        raise AssertionError(f"unexpected request {request.url}")

    handler["fn"] = respond
    with pytest.raises(HubPushError) as info:
        push_to_hub(run_dir, "org/x", check_load=False)
    for word in words:
        assert word in str(info.value)
    assert info.value.status_code == status
    paths = [r.url.path for r in seen]
    assert paths[:2] == ["/api/models/org/x", "/api/repos/create"]
    assert set(paths) == {"/api/models/org/x", "/api/repos/create"}  # nothing uploaded
    out, err = capsys.readouterr()
    assert FAKE_TOKEN not in str(info.value) + out + err


def test_real_hfapi_in_offline_mode(run_dir, mock_hub, monkeypatch):
    seen, handler = mock_hub
    handler["fn"] = lambda request: httpx2.Response(200, json={})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="offline mode is enabled.*HF_HUB_OFFLINE") as info:
        push_to_hub(run_dir, "org/x", token=FAKE_TOKEN, check_load=False)
    assert seen == [] and FAKE_TOKEN not in str(info.value)


def test_pickle_weights_and_custom_code_are_refused(tiny_model_path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    validate_model_folder(model)

    (model / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickle-based files \['pytorch_model.bin'\].*safetensors"):
        push_to_hub(model, "org/x", dry_run=True)
    (model / "pytorch_model.bin").unlink()

    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.MyModel"}}))
    with pytest.raises(ValueError, match="auto_map.*trust_remote_code"):
        validate_model_folder(model)
    (model / "config.json").write_text(json.dumps(config))

    modules = json.loads((model / "modules.json").read_text())
    modules[1]["path"] = "../outside"
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="module path '../outside' is not a folder inside the model"):
        validate_model_folder(model)
    modules[1]["type"] = "my_package.CustomPooling"
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="not part of sentence-transformers.*trust_remote_code"):
        validate_model_folder(model)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a model folder .* nor a run folder"):
        push_to_hub(tmp_path / "empty", "org/x", dry_run=True)


def test_cli_help_and_bad_arguments(run_dir, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["push", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for text in ("usage: md2pr push", "RUN_OR_MODEL_DIR", "--repo_id REPO_ID, --repo-id REPO_ID", "--private"):
        assert text in out
    assert "--dry_run" in out and "--dry-run" in out and "--revision" in out and "--token" not in out
    assert "--dataset_ids" in out

    with pytest.raises(SystemExit) as info:
        cli.main(["push", str(run_dir)])
    assert info.value.code == 2
    assert "the following arguments are required: --repo_id/--repo-id" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        cli.main(["push", "--repo_id", "org/x"])
    assert info.value.code == 2
    assert "required: RUN_OR_MODEL_DIR" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        cli.main(["push", str(run_dir), "--repo_id", "org/x", "--private", "maybe"])
    assert info.value.code == 2 and "--private" in capsys.readouterr().err

    assert cli.main(["push", str(run_dir), "--repo_id", "no-namespace", "--dry_run"]) == 1
    assert "repo_id must be NAMESPACE/NAME" in capsys.readouterr().err
    assert cli.main(["push", str(run_dir), "--repo_id", "org/bad name!", "--dry_run"]) == 1
    assert "Invalid repo_id 'org/bad name!'" in capsys.readouterr().err
    assert cli.main(["push", str(run_dir / "missing"), "--repo_id", "org/x", "--dry_run"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["push", str(run_dir), "--repo_id", "org/x", "--dry_run", "--dataset_ids", str(run_dir)]) == 1
    assert "is a local folder, not a Hub dataset id" in capsys.readouterr().err


def test_pushed_folder_loads_from_the_hub_cache_and_re_saves_with_its_plots(
    run_dir, tiny_model_path, tmp_path, monkeypatch
):
    from sentence_transformers import SentenceTransformer

    from md2pr_st.hub import MD2PRModelCardData

    remote = tmp_path / "remote"
    push_to_hub(run_dir, "org/md2pr-tiny", token=FAKE_TOKEN, api=fake_api(remote), check_load=False)
    cache = tmp_path / "hf_cache"
    snapshot = add_to_hub_cache(remote, "org/md2pr-tiny", cache)
    # The cache's snapshot links into its blobs/: still the repo's own files, so it can be pushed again
    assert (snapshot / "model.safetensors").is_symlink()
    assert dict(push_to_hub(snapshot, "org/copy", dry_run=True, check_load=False).files)["model.safetensors"] > 0

    monkeypatch.chdir(tmp_path)  # no local folder called org/md2pr-tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub_model = SentenceTransformer("org/md2pr-tiny", cache_folder=str(cache), device="cpu")
    local_model = SentenceTransformer(str(tiny_model_path), device="cpu")
    texts = ["what is a python", "Paris is the capital of France."]
    np.testing.assert_array_equal(hub_model.encode(texts), local_model.encode(texts))
    assert hub_model.get_embedding_dimension() == 32

    # Loaded with its card data, a downloaded model saves its card again with the plots
    card_data = MD2PRModelCardData.from_folder(snapshot)
    SentenceTransformer(str(snapshot), device="cpu", model_card_data=card_data).save(str(tmp_path / "again"))
    again_dir = tmp_path / "again"
    text = (again_dir / "README.md").read_text()
    assert (again_dir / "plots" / "round_1_filter_gaps.png").read_bytes() == PNG + b"gaps"
    assert "![round 1 filter gaps](plots/round_1_filter_gaps.png)" in text and "| `after` | 0.4500 |" in text
    assert os.path.isfile(again_dir / "md2pr_card_data.json")
