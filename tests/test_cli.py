import subprocess
import sys

from attnlab.cli import main


def test_model_prints_config_and_parameter_count(capsys):
    assert main(["model", "--set", "n_heads=16", "--set", "d_k=32"]) == 0
    out = capsys.readouterr().out
    assert "n_heads: 16" in out and "d_k=32 d_v=32" in out and "parameters=" in out


def test_typo_in_a_key_is_an_error_with_a_suggestion(capsys):
    assert main(["model", "--set", "n_head=16"]) == 2
    assert "did you mean 'n_heads'" in capsys.readouterr().err


def test_table3_lists_every_row(capsys):
    assert main(["model", "--table3"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 21 and "big" in out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "attnlab.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "model" in result.stdout
