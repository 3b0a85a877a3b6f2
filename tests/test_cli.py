"""Bad input on the command line: one line naming the argument, exit status 2, nothing written."""

import pytest

from reimagen.cli.main import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "x", "--guidance", "nope"], "unknown guidance 'nope'; known guidance names:"),
        (["generate", "x", "--sampler", "euler"], "unknown sampler 'euler'; known sampler names:"),
        (["generate", "x", "--eta", "2"], "eta must be in [0.0, 1.0], got 2.0"),
        (["generate", "x", "--w-text", "0.5"], "w_text must be in [1.0, inf]"),
        (["generate", "x", "--stages", "base,huge"], "--stages: unknown stage(s) ['huge']"),
        (
            ["generate", "x", "--backend", "tpu"],
            "unknown backend 'tpu'; known backend names: jax, torch",
        ),
        (["generate", "x", "--k", "-1"], "--k must be an integer in [0, 8]"),
        (
            ["generate", "x", "--kb", "/nonexistent/kb"],
            "--kb: no knowledge base at /nonexistent/kb",
        ),
        (["demo", "--entities", "unicorn horse"], "--entities: unknown entity name(s)"),
        (["train", "--stage", "sr", "--preset", "tiny"], "--preset tiny does not fit --stage sr"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "x.png"
    argv = [*argv, "--out", str(out)] if argv[0] in ("generate", "demo") else argv
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reimagen: error: ") and len(err.splitlines()) == 1, err
    assert message in err
    assert not out.parent.exists()  # not even the output folder


def test_out_must_be_png(tmp_path, capsys):
    assert main(["generate", "x", "--out", str(tmp_path / "x.jpg")]) == 2
    assert "--out must be a .png path" in capsys.readouterr().err
