"""The whole stack can learn: 8 real (TTS) utterances are memorised to WER 0 in bounded steps."""

from __future__ import annotations

import torch

from lowbit_asr.data.datamodule import AsrDataModule, AsrDataset, collate
from lowbit_asr.model.rnnt import build_model
from lowbit_asr.train.module import word_errors

MAX_STEPS = 300


def test_overfit_eight_utterances_to_zero_wer(tiny_corpus, tmp_path):
    torch.manual_seed(0)
    data = AsrDataModule({
        "root": str(tiny_corpus.root), "cache_dir": str(tmp_path), "num_workers": 0,
        "tokenizer": {"units": "char"}, "precompute_features": False,
    })
    data.setup("fit")
    utterances = sorted(data.manifest("train").utterances, key=lambda u: u.duration)[:8]
    model = build_model({
        "encoder": {"d_model": 96, "num_layers": 2, "num_heads": 4, "conv_kernel": 7,
                    "subsampling_factor": 4, "subsampling_channels": 32, "dropout": 0.0,
                    "attention_dropout": 0.0},
        "predictor": {"embed_dim": 64, "hidden_dim": 96, "dropout": 0.0},
        "joiner": {"dim": 96}, "rnnt_loss_impl": "torch", "ctc_weight": 0.3,
    }, data.tokenizer.vocab_size)
    data.use_frontend(model.frontend)  # the train statistics setup computed
    dataset = AsrDataset(utterances, data.tokenizer, model.frontend.normalise, data.features)
    batch = collate([dataset.example(i) for i in range(len(dataset))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    wer_at: dict[int, float] = {}
    for step in range(1, MAX_STEPS + 1):
        model.train()
        loss = model(batch["feats"], batch["feat_lens"], batch["targets"],
                     batch["target_lens"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            hyps = [data.tokenizer.decode(ids)
                    for ids in model.decode(batch["feats"], batch["feat_lens"])]
            errors, words = word_errors(batch["texts"], hyps)
            wer_at[step] = errors / words
            if errors == 0:
                break
    print(f"WER by step: {wer_at}")
    assert min(wer_at.values()) == 0.0, f"WER by step: {wer_at}"
