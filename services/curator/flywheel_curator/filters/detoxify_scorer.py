"""``DetoxifyScorer``: a Detoxify model loaded from a local checkpoint, never from the hub (the
``detoxify`` extra; torch). Detoxify 0.5.4's wheel holds no weights, so ``Detoxify('original')``
fails offline; see the class for how the loader stays offline."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from flywheel_common.errors import ConfigError

__all__ = ["DetoxifyScorer"]

_DEFAULT_MAX_TOKENS = 512
# Detoxify renames some Jigsaw classes when it loads a checkpoint; we score by the new names.
_DETOXIFY_CLASS_NAMES = {
    "toxic": "toxicity",
    "identity_hate": "identity_attack",
    "severe_toxic": "severe_toxicity",
}


class DetoxifyScorer:
    """A Detoxify model loaded from a local checkpoint, never from the hub.

    Detoxify 0.5.4's own loader builds the transformer config from the checkpoint's
    ``config.arch.args.model_type`` (``bert-base-uncased``), which reaches for the hub even when
    a local config folder is given. This loader points ``model_type`` at the local folder
    (``hf_config_dir``, or ``model_type`` itself when it already names a folder) and loads with
    ``local_files_only``, so it works offline.
    """

    def __init__(
        self,
        *,
        checkpoint: Path,
        hf_config_dir: Path | None = None,
        device: str = "cpu",
        label: str = "toxicity",
        checkpoint_loading: Literal["weights_only", "full_pickle"] = "weights_only",
    ) -> None:
        try:
            # Optional dependencies (the ``detoxify`` extra pulls torch): imported by name so
            # the curator's light environment type-checks and imports without them.
            torch = importlib.import_module("torch")
            get_model_and_tokenizer = importlib.import_module(
                "detoxify.detoxify"
            ).get_model_and_tokenizer
        except ImportError as exc:
            raise ConfigError(
                "the detoxify toxicity backend needs the 'detoxify' extra "
                "(pip install 'flywheel-curator[detoxify]')"
            ) from exc
        if not checkpoint.is_file():
            raise ConfigError(f"Detoxify checkpoint {checkpoint} does not exist")
        try:
            loaded = torch.load(
                checkpoint, map_location=device, weights_only=checkpoint_loading == "weights_only"
            )
        except Exception as exc:
            raise ConfigError(
                f"cannot read Detoxify checkpoint {checkpoint} ({checkpoint_loading}): {exc}"
            ) from exc
        try:
            arch_args: dict[str, Any] = dict(loaded["config"]["arch"]["args"])
            classes = [str(c) for c in loaded["config"]["dataset"]["args"]["classes"]]
            state_dict = loaded["state_dict"]
            model_type = str(arch_args["model_type"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"{checkpoint} is not a Detoxify checkpoint (needs config.arch.args, "
                f"config.dataset.args.classes and state_dict): missing {exc}"
            ) from exc
        config_dir = hf_config_dir
        if config_dir is None and Path(model_type).is_dir():
            config_dir = Path(model_type)
        if config_dir is None:
            raise ConfigError(
                f"Detoxify checkpoint {checkpoint} names hub model {model_type!r}; set "
                "toxicity.detoxify.hf_config_dir to a local folder with its config.json and "
                "tokenizer files (loading would otherwise reach for the hub)"
            )
        if not (config_dir / "config.json").is_file():
            raise ConfigError(f"{config_dir} has no config.json (toxicity.detoxify.hf_config_dir)")
        self.class_names = [_DETOXIFY_CLASS_NAMES.get(c, c) for c in classes]
        if label != "max" and label not in self.class_names:
            raise ConfigError(
                f"Detoxify label {label!r} is not among the checkpoint's classes "
                f"{self.class_names} (or 'max')"
            )
        arch_args["model_type"] = str(config_dir)
        model, tokenizer = get_model_and_tokenizer(
            **arch_args, state_dict=state_dict, huggingface_config_path=str(config_dir)
        )
        model.to(device)
        model.eval()
        # Truncate to what the model can embed: a tokenizer saved without model_max_length
        # reports ~1e30, and one over-long text would then crash every batch it is in, which
        # (fail closed) would stop the curator.
        self._max_length = min(
            int(getattr(tokenizer, "model_max_length", _DEFAULT_MAX_TOKENS)),
            int(getattr(model.config, "max_position_embeddings", _DEFAULT_MAX_TOKENS)),
        )
        self._torch = torch
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self._column = None if label == "max" else self.class_names.index(label)
        self._identity = f"detoxify/{model_type}/{checkpoint.name}/{label}"

    @property
    def identity(self) -> str:
        return self._identity

    def score_many(self, texts: Sequence[str]) -> Sequence[float]:
        if not texts:
            return []
        with self._torch.no_grad():
            inputs = self._tokenizer(
                list(texts),
                return_tensors="pt",
                truncation=True,
                max_length=self._max_length,
                padding=True,
            ).to(self._device)
            scores = self._torch.sigmoid(self._model(**inputs)[0]).cpu()
        picked = scores.max(dim=1).values if self._column is None else scores[:, self._column]
        return [float(s) for s in picked.tolist()]
