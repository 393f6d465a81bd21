"""Shared fixtures: one local Ray for the whole session (2 CPUs, token auth off in tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_FUSED_ATTN", "0")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_mlflow_uri():
    """CLI entry points (``pipeline.main``) set MLFLOW_TRACKING_URI for their process; called
    in-process by a test they must not point a later test at that test's store."""
    from unspur.tracking import scoped_tracking_uri

    with scoped_tracking_uri():
        yield


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster shared by every test that needs one (started once, ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def kill_half_way(ray_local) -> Callable[[list[str], Path, int], None]:
    """``kill(argv, store, at_least)``: run ``unspur <argv>`` on the test cluster in a subprocess,
    SIGKILL it once ``store`` holds ``at_least`` finished shards (``part-*.parquet``), then wait
    until its actors have given their CPUs back."""

    def kill(argv: list[str], store: Path, at_least: int, timeout: float = 180.0) -> None:
        address = ray_local.get_runtime_context().gcs_address
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "unspur.workflows.cli", *argv, "--address", address],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while len(list(store.glob("part-*.parquet"))) < at_least:
                if proc.poll() is not None:
                    raise AssertionError(f"the job ended (rc {proc.returncode}) before it could be killed")
                if time.monotonic() > deadline:
                    raise AssertionError("no shards appeared in time")
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 60
        while ray_local.available_resources().get("CPU", 0.0) < 2.0 and time.monotonic() < deadline:
            time.sleep(0.2)

    return kill


@pytest.fixture
def tiny_clip():
    """A random-init ``unspur-tiny-clip`` at 32 px over SpuriousWorld's four classes (seed 0) and
    its tokenizer."""
    import torch

    from unspur.config import ClipModelConfig
    from unspur.models.families import get_family

    cfg = ClipModelConfig(img_size=32, classes=["bird", "airplane", "bicycle", "tree"])
    family = get_family("clip")
    torch.manual_seed(0)
    return family.build(cfg).eval(), family.tokenizer(cfg)


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """Factory of tiny GPT-2 causal LMs saved with a word-level tokenizer and a chat template.

    ``make(silent=False)`` -> model folder. The random model's output is noise over a vocabulary
    without ``[``, ``-`` or digits (so it can never be a JSON list or a bullet list);
    ``silent=True`` suppresses every token but EOS: the model returns nothing.
    """

    def make(silent: bool = False) -> str:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

        path = tmp_path_factory.mktemp("tiny_lm_silent" if silent else "tiny_lm")
        words = [
            "[UNK]",
            "[PAD]",
            "[EOS]",
            "user",
            "assistant",
            "system",
            ":",
            ",",
            '"',
            "a",
            "the",
            "bird",
            "beak",
            "wing",
            "feather",
            "photo",
            "of",
            "in",
            "snow",
        ]
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf_tok = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
        )
        hf_tok.chat_template = (
            "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}"
        )
        hf_tok.save_pretrained(path)
        cfg = GPT2Config(
            vocab_size=len(words),
            n_positions=1024,
            n_embd=16,
            n_layer=1,
            n_head=2,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        )
        GPT2LMHeadModel(cfg).save_pretrained(path)
        if silent:
            GenerationConfig(
                eos_token_id=2, pad_token_id=1, suppress_tokens=[i for i in range(len(words)) if i != 2]
            ).save_pretrained(path)
        return str(path)

    return make
