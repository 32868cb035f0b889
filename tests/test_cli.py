import subprocess
import sys

from attnlab.cli import main


def test_model_prints_config_and_parameter_count(capsys):
    assert main(["model", "--set", "n_heads=16", "--set", "d_k=32"]) == 0
    out = capsys.readouterr().out
    assert "n_heads: 16" in out and "d_k=32 d_v=32" in out and "parameters=" in out


def test_typo_in_a_key_is_an_error_with_a_suggestion(capsys):
    assert main(["model", "--set", "n_head=16"]) == 2
    assert "--set n_head=16: unknown key 'model.n_head'; did you mean 'model.n_heads'" in capsys.readouterr().err


def test_table3_lists_every_row(capsys):
    assert main(["model", "--table3"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 21 and "big" in out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "attnlab.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "model" in result.stdout


def test_data_prepares_and_summarises(mirror, cache, capsys):
    assert main(["data", "--set", f"mirror={mirror}", "--set", f"cache_dir={cache}", "--set", "vocab_size=2000",
                 "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    train = summary["splits"][0]
    assert (train["role"], train["sentences"], train["dropped"]) == ("train", 28998, {"placeholder": 2})
    assert summary["vocab_size"] == 2000 and train["tgt_tokens"] > train["sentences"]


def test_data_prepares_a_study_files_data(mirror, cache, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("study: s\nbase:\n  data: {max_train_sentences: 300, vocab_size: 500, test_splits: []}\n"
                     "  train: {max_steps: 1}\nrows: [{id: a}]\n")
    assert main(["data", str(study), "--set", f"mirror={mirror}", "--set", f"cache_dir={cache}", "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == 500 and summary["splits"][0]["sentences"] == 300
    assert summary["train_prepared"].startswith(str(cache)) and len(summary["splits"]) == 2
    study.write_text(study.read_text().replace("vocab_size", "vocab_sise"))
    assert main(["data", str(study)]) == 2
    assert "unknown key 'data.vocab_sise'" in capsys.readouterr().err
    study.write_text("study: s\nbase: 5\nrows: [{id: a}]\n")
    assert main(["data", str(study)]) == 2
    assert f"{study}: base: expected a mapping" in capsys.readouterr().err


def test_data_errors_are_one_clear_line(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("data:\n  corpus: multi30k\n  vocab_sise: 8000\n")
    assert main(["data", str(config)]) == 2
    err = capsys.readouterr().err
    assert "study.yaml: unknown key 'data.vocab_sise'; did you mean 'data.vocab_size'" in err
    assert main(["data", "--set", "corpus=multi30k", "--set", "mirror=/nonexistent",
                 "--set", f"cache_dir={tmp_path}"]) == 2
    assert "missing file /nonexistent/multi30k/train.en.gz" in capsys.readouterr().err


def test_example_configs_parse():
    from pathlib import Path

    from attnlab.cli import load_experiment

    for path in sorted(Path(__file__).resolve().parents[1].glob("examples/*.yaml")):
        config = load_experiment(str(path), ["train.max_steps=5"])
        assert config.train.max_steps == 5


def test_train_config_typo_names_section_and_suggestion(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train:\n  max_step: 3\n")
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "c.yaml: unknown key 'train.max_step'; did you mean 'train.max_steps'?" in capsys.readouterr().err
