"""QAT from a float checkpoint: its weights and its front end's statistics come with it; a model
config that differs (the front end included) is refused, naming each differing key."""

from __future__ import annotations

import pytest
import torch

from lowbit_asr.data.audio import N_MELS
from lowbit_asr.data.features import FeatureStats
from lowbit_asr.data.tokenizer import CharTokenizer
from lowbit_asr.train.checkpoint import init_from_float
from lowbit_asr.train.module import RNNTModule

TINY = {"encoder": {"d_model": 32, "num_layers": 1, "num_heads": 2, "conv_kernel": 3,
                    "subsampling_channels": 8},
        "predictor": {"embed_dim": 16, "hidden_dim": 16}, "joiner": {"dim": 16}}


def _module(frontend: dict | None = None, quantizer: dict | None = None) -> RNNTModule:
    tokenizer = CharTokenizer().state_dict()
    model = {**TINY, **({"frontend": frontend} if frontend else {})}
    return RNNTModule(model=model, tokenizer=tokenizer, quantizer=quantizer)


def _checkpoint(module: RNNTModule) -> dict:
    return {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}


def test_weights_and_front_end_statistics_come_along() -> None:
    torch.manual_seed(0)
    float_module = _module()
    float_module.model.frontend.set_stats(
        FeatureStats(torch.randn(N_MELS), torch.rand(N_MELS) + 1, 7, 700))
    qat = _module(quantizer={"name": "int4", "default": {"bits": 4}})
    init_from_float(qat, _checkpoint(float_module), "float.ckpt")
    assert qat.model.frontend.has_stats
    for key in ("mean", "std", "stats_count"):
        assert torch.equal(getattr(qat.model.frontend, key),
                           getattr(float_module.model.frontend, key))


def test_a_different_front_end_is_refused_naming_the_key() -> None:
    ckpt = _checkpoint(_module({"normalisation": "utterance", "cepstral_lifter": 30}))
    with pytest.raises(ValueError, match=r"float.ckpt: model config differs.*"
                       r"model.frontend.cepstral_lifter: checkpoint 30, this run 0; "
                       r"model.frontend.normalisation: checkpoint 'utterance', this run 'global'"):
        init_from_float(_module(), ckpt, "float.ckpt")
    # A key written out on one side and left to its default on the other is no difference.
    init_from_float(_module({"normalisation": "global"}), _checkpoint(_module()), "float.ckpt")
