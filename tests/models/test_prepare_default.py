"""`llmserve model prepare-default` prints the default model's directory."""

from llmserve.models.default import DEFAULT_MODEL_NAME


def test_prints_an_already_prepared_default_model_without_preparing_it(
    llmserve, tmp_path, monkeypatch
):
    monkeypatch.setenv("LLMSERVE_CACHE_DIR", str(tmp_path))
    model_dir = tmp_path / "models" / DEFAULT_MODEL_NAME
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"")

    result = llmserve("model", "prepare-default")

    assert result.exit_code == 0
    assert result.stdout == f"{model_dir}\n"
    assert "Preparing" not in result.stderr
