"""Safety: secrets stay out of every sink, media never write outside the run directory, and
nothing received from another rank is unpickled."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distlog
from distlog.config import REDACTED

SRC = Path(distlog.__file__).resolve().parent

# ----------------------------------------------------------------------------- redaction

SECRET_KEYS = [
    "token",
    "api_key",
    "apiKey",
    "API_KEY",
    "WANDB_API_KEY",
    "hf_token",
    "HfToken",
    "accessToken",
    "clientSecret",
    "secret",
    "aws_secret_access_key",
    "private_key",
    "db_password",
    "Password",
    "passwd",
    "credentials",
    "openai-api-key",
    "auth.token",
    "github_pat_token",
    "authorization",
]
PLAIN_KEYS = [
    "tokenizer",
    "tokenizer_name",
    "monkey",
    "keyboard",
    "secretary",
    "lr",
    "name",
    "pad_token",  # tokenizer special tokens are not secrets
    "eos_token",
    "bos_token",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_string_values_under_secret_looking_keys_are_redacted(key):
    out = distlog.to_config_dict({"outer": {key: "s3cr3t-value"}, "also": [{key: "s3cr3t-2"}]})
    assert out["outer"][key] == REDACTED
    assert out["also"][0][key] == REDACTED


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_ordinary_keys_are_kept(key):
    assert distlog.to_config_dict({key: "visible"})[key] == "visible"


@pytest.mark.parametrize("key", ["max_tokens", "num_tokens", "key_dim", "sort_keys", "use_auth"])
def test_numbers_and_flags_under_secret_looking_keys_are_kept(key):
    """Secrets are strings: max_tokens=512 or key_dim=64 are hyperparameters, not credentials."""
    for value in (512, 0.5, True, None):
        assert distlog.to_config_dict({key: value})[key] == value


def test_every_string_of_a_list_under_a_secret_key_is_redacted():
    out = distlog.to_config_dict({"api_keys": ["k1", "k2"], "tokens": ("t1",)})
    assert out == {"api_keys": [REDACTED, REDACTED], "tokens": [REDACTED]}


def test_passwords_in_urls_are_masked_wherever_they_are():
    out = distlog.to_config_dict(
        {"db": "postgresql://alice:pa55w0rd@db.example:5432/runs", "mirror": "https://h/x:y@z"}
    )
    assert out["db"] == f"postgresql://alice:{REDACTED}@db.example:5432/runs"
    assert "pa55w0rd" not in json.dumps(out)
    assert out["mirror"] == "https://h/x:y@z"  # no userinfo: untouched


@dataclasses.dataclass
class _Cfg:
    name: str = "run"
    hf_token: str = "hf_abcdefgh"
    db: str = "mysql://u:topsecret@h/db"
    nested: dict = dataclasses.field(default_factory=lambda: {"clientSecret": "cs-123"})


def test_no_sink_sees_a_secret(tmp_path):
    seen = []

    class Recorder:
        def log_scalars(self, step, values): ...
        def log_media(self, step, key, item): ...
        def log_config(self, config):
            seen.append(json.dumps(config))

        def close(self, exit_code=0): ...

    logger = distlog.Logger(run_dir=tmp_path, sinks=[Recorder()], handle_signals=False)
    plain = logger.log_config(_Cfg())
    logger.finish()
    on_disk = "\n".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    for secret in ("hf_abcdefgh", "topsecret", "cs-123"):
        assert secret not in on_disk and secret not in seen[0] and secret not in json.dumps(plain)
    assert plain["name"] == "run"
    assert distlog.to_config_dict(_Cfg(), redact=False)["hf_token"] == "hf_abcdefgh"


# ----------------------------------------------------------------------------- media paths

NASTY_KEYS = [
    "../../escape",
    "/etc/passwd",
    "..",
    "a/../../b",
    "C:\\Windows\\x",
    "~/x",
    "a\x00b",
    "\u202e/evil",
    "./../../x",
    "ok/../../../x",
]


def _all_files(root: Path) -> set[Path]:
    return {p.resolve() for p in root.rglob("*") if p.is_file()}


def _log_media(logger: distlog.Logger, key: str) -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    logger.log_images(image, desc=key)
    logger.log_table(["a", "img"], [[1, image]], desc=key + "_t")
    logger.log_histogram(np.arange(10.0), desc=key + "_h")


def _check_inside(tmp_path: Path, run_dir: Path, before: set[Path]) -> None:
    outside = _all_files(tmp_path) - before - _all_files(run_dir)
    assert not outside, f"files written outside the run directory: {outside}"
    for row in distlog.runlog.iter_rows(run_dir):
        for record in row.get("media", {}).values():
            for path in re.findall(r'"path": "([^"]+)"', json.dumps(record)):
                assert (run_dir / path).resolve().is_relative_to(run_dir.resolve()), path


@pytest.mark.parametrize("key", NASTY_KEYS)
def test_media_keys_never_write_outside_the_run_dir(tmp_path, key):
    run_dir = tmp_path / "deep" / "run"
    before = _all_files(tmp_path)
    logger = distlog.Logger(run_dir=run_dir, handle_signals=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _log_media(logger, key)
        except distlog.DistlogError:
            pass  # a clear refusal is fine too
        logger.flush(0)
        logger.finish()
    _check_inside(tmp_path, run_dir, before)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(alphabet=st.sampled_from(list("./\\~:a_-.\x00 é")), min_size=1, max_size=12))
def test_random_media_keys_never_write_outside_the_run_dir(tmp_path_factory, key):
    tmp_path = tmp_path_factory.mktemp("media")
    run_dir = tmp_path / "run"
    before = _all_files(tmp_path)
    logger = distlog.Logger(run_dir=run_dir, handle_signals=False, async_write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _log_media(logger, key)
        except distlog.DistlogError:
            pass
        logger.flush(0)
        logger.finish()
    _check_inside(tmp_path, run_dir, before)


def test_a_symlink_inside_the_media_dir_cannot_lead_out(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    (run_dir / "media").mkdir(parents=True)
    (run_dir / "media" / "evil").symlink_to(outside, target_is_directory=True)
    logger = distlog.Logger(run_dir=run_dir, handle_signals=False, async_write=False)
    with pytest.warns(UserWarning, match="outside"):
        logger.log_images(np.zeros((4, 4, 3), dtype=np.uint8), desc="evil/x")
        logger.flush(0)
    logger.finish()
    assert not list(outside.iterdir())


# ----------------------------------------------------------------------------- no pickle


def test_no_module_unpickles_what_another_rank_sends():
    """Audit of the source: cross-rank exchanges move tensors (JSON bytes at most)."""
    banned = re.compile(
        r"\b(pickle|cloudpickle|dill|marshal|shelve)\b|_object(_list)?\(|torch\.load\("
        r"|(?<![\w.])(eval|exec)\("
    )
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if banned.search(code) and "never pickle" not in line and "not pickle" not in line:
                hits.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
