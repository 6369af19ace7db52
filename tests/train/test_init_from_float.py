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


@pytest.mark.parametrize("loss_warmup", [True, False])
def test_a_run_from_a_float_checkpoint_skips_the_pruned_loss_warmup(loss_warmup, monkeypatch):
    """training_step hands the model its step during a from-scratch run's warm-up, and None
    (the final loss scales) when the module was built for a run initialised from a float
    checkpoint (`lowbit-asr train` passes loss_warmup=False then)."""
    module = RNNTModule(model={**TINY, "rnnt_loss_impl": "pruned"},
                        tokenizer=CharTokenizer().state_dict(), loss_warmup=loss_warmup)
    seen = []

    def fake_forward(*args, step=None):
        seen.append(step)
        zero = torch.zeros((), requires_grad=True)
        return {"loss": zero, "rnnt_loss": zero, "ctc_loss": zero, "simple_loss": zero}

    monkeypatch.setattr(module.model, "forward", fake_forward)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = {"feats": torch.zeros(1, 8, N_MELS), "feat_lens": torch.tensor([8]),
             "targets": torch.tensor([[1]]), "target_lens": torch.tensor([1]), "ids": ["u"]}
    module.training_step(batch, 0)
    assert seen == [0 if loss_warmup else None]
    assert module.hparams["loss_warmup"] is loss_warmup  # kept in checkpoints, so resumes agree
