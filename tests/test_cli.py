from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from md2pr_st.cli import main
from test_data import CORPUS, QUERIES, write_beir


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "eval" in out and "COMMAND" in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: md2pr" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate"])
    assert exc.value.code == 2
    assert "unknown command 'evaluate'" in capsys.readouterr().err


def test_eval_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--index_factory" in out and "--relevance_cut" in out


def test_eval_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--batch_size", "many"])
    assert exc.value.code == 2
    assert main(["eval", "--split", "validation"]) == 1
    assert "Unknown split 'validation'" in capsys.readouterr().err
    assert main(["eval", "--dataset", str(tmp_path / "nowhere")]) == 1
    assert "Unknown dataset" in capsys.readouterr().err


def test_eval_on_a_beir_folder_writes_json(tiny_model_path, tmp_path, capsys):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 2), ("q2", "d3", 3), ("q2", "d2", 0)])
    out = tmp_path / "results.json"
    args = ["eval", "--model", str(tiny_model_path), "--dataset", str(folder), "--output", str(out)]
    assert main(args + ["--index_dir", str(tmp_path / "index")]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result) >= {"ndcg@10", "mrr@10", "recall@100", "map@100", "n_queries", "corpus_size"}
    assert result["n_queries"] == 2 and result["corpus_size"] == 3
    assert result["recall@100"] == 1.0  # a 3-passage corpus: everything is retrieved
    assert f"{result['ndcg@10']:.4f}" in printed
    # The second run reuses the saved index and gives the same numbers.
    assert main(args + ["--index_dir", str(tmp_path / "index"), "--output", str(tmp_path / "again.json")]) == 0
    assert "Reusing the index" in capsys.readouterr().err
    again = json.loads((tmp_path / "again.json").read_text())
    assert {k: again[k] for k in ("ndcg@10", "mrr@10")} == {k: result[k] for k in ("ndcg@10", "mrr@10")}


def test_eval_from_a_json_config(tiny_model_path, tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 2)])
    config = tmp_path / "eval.json"
    out = tmp_path / "r.json"
    config.write_text(json.dumps({"model": str(tiny_model_path), "dataset": str(folder), "output": str(out)}))
    assert main(["eval", str(config)]) == 0
    assert json.loads(out.read_text())["n_queries"] == 1


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "md2pr"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "eval" in proc.stdout


def test_unknown_flag_and_bad_config_exit_cleanly(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--no_such_flag", "1"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no_such_flag 1" in capsys.readouterr().err
    config = tmp_path / "bad.json"
    config.write_text('{"modle": "typo"}')
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(config)])
    assert exc.value.code == 2
    assert "modle" in capsys.readouterr().err


def test_host_training_arguments_and_a_config_file_with_overriding_flags(tmp_path, monkeypatch):
    """md2pr train / teacher / pipeline pass flags that are not theirs to the host's training arguments; a config
    file may come first and flags after it override it; a flag nobody knows is one clear error."""
    import md2pr_st.cli as cli
    from md2pr_st.cli.arguments import LossArguments, TrainArguments

    seen = {}

    def fake_driver(name):
        return lambda *parsed: seen.update({name: parsed})

    monkeypatch.setattr(cli, "driver", fake_driver)
    monkeypatch.setattr(cli, "check_environment", lambda parsed: None)
    (tmp_path / "train.yaml").write_text(
        "input: rows\nlearning_rate: 0.001\nalpha: 2.0\ngradient_accumulation_steps: 2\n"
    )
    code = cli.main(["train", str(tmp_path / "train.yaml"), "--learning_rate", "0.0005", "--bf16", "false",
                     "--report_to", "tensorboard", "--max_steps", "7"])  # fmt: skip
    assert code == 0
    args, loss_args, trainer = seen["train"]
    assert isinstance(args, TrainArguments) and isinstance(loss_args, LossArguments)
    assert (args.input, args.learning_rate, loss_args.alpha) == ("rows", 0.0005, 2.0)  # the flag overrides the file
    assert trainer == {"gradient_accumulation_steps": 2, "bf16": False, "report_to": "tensorboard", "max_steps": 7}
    assert cli.main(["teacher", "--warmup_steps", "3"]) == 0 and seen["teacher"][-1] == {"warmup_steps": 3}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--no_such_option", "1"])
    assert exit_info.value.code == 2


def test_help_names_each_default_once(capsys):
    from md2pr_st.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: auto). (default" not in text
    assert "gradient_accumulation_steps" in text  # the host's trainer options are announced


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["pipeline", "--help"], ["teacher", "--help"]])
def test_help_imports_no_heavy_library(argv):
    """``--help`` stays fast by importing neither torch nor the host library, datasets or faiss (lazy imports)."""
    code = (
        "import sys\nfrom md2pr_st.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'datasets', 'faiss') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
