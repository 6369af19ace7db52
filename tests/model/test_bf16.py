"""bf16 autocast on the CPU (what ``trainer.precision=bf16-mixed`` runs): a training step's loss
and gradients are finite and close to float32's, with either RNN-T loss implementation."""

from __future__ import annotations

import pytest
import torch

from lowbit_asr.model.rnnt import build_model

CONFIG = {"encoder": {"d_model": 96, "num_layers": 2, "num_heads": 4, "conv_kernel": 7,
                      "subsampling_channels": 16, "dropout": 0.0, "attention_dropout": 0.0},
          "predictor": {"dropout": 0.0, "embed_dim": 64, "hidden_dim": 64},
          "joiner": {"dim": 64}, "ctc_weight": 0.3}


def _step(model, batch, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(*batch)["loss"]
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads


@pytest.mark.parametrize("impl", ["torch", "torchaudio"])
def test_a_bf16_step_is_finite_and_close_to_float32(impl):
    torch.manual_seed(0)
    model = build_model({**CONFIG, "rnnt_loss_impl": impl}, 30)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(3, 200, 80, generator=g), torch.tensor([200, 150, 120]),
             torch.randint(1, 30, (3, 12), generator=g), torch.tensor([12, 10, 8]))
    loss32, grads32 = _step(model, batch, bf16=False)
    loss16, grads16 = _step(model, batch, bf16=True)
    assert loss16.dtype == torch.float32  # the loss itself is computed in float32
    assert torch.isfinite(loss16) and torch.isfinite(grads16).all()
    assert abs(float(loss16 - loss32)) < 1e-2 * float(loss32)
    cosine = torch.nn.functional.cosine_similarity(grads16, grads32, dim=0)
    assert cosine > 0.99, float(cosine)
