"""Conformer encoder, RNN-T predictor and joiner, decoding — plain ``nn.Module``s.

Usage::

    cfg = ModelConfig(**yaml_dict)  # or an OmegaConf structured merge
    model = build_model(cfg, vocab_size)  # vocab size from the tokenizer
    out = model(feats, feat_lens, targets, target_lens)  # {"loss", "rnnt_loss", "ctc_loss"}
    hyps = model.eval().decode(feats, feat_lens)  # list[list[int]], blank removed
"""

from lowbit_asr.data.tokenizer import BLANK_ID
from lowbit_asr.model.config import (
    DecodingConfig,
    EncoderConfig,
    FrontEndConfig,
    JoinerConfig,
    ModelConfig,
    PredictorConfig,
)
from lowbit_asr.model.conformer import ConformerEncoder
from lowbit_asr.model.decoding import beam_search, greedy_search
from lowbit_asr.model.frontend import FrontEnd
from lowbit_asr.model.rnnt import RNNT, Joiner, Predictor, build_model, count_parameters

__all__ = [
    "BLANK_ID",
    "RNNT",
    "ConformerEncoder",
    "DecodingConfig",
    "EncoderConfig",
    "FrontEnd",
    "FrontEndConfig",
    "Joiner",
    "JoinerConfig",
    "ModelConfig",
    "Predictor",
    "PredictorConfig",
    "beam_search",
    "build_model",
    "count_parameters",
    "greedy_search",
]
