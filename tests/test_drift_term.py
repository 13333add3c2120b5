"""The drift term: the gate's general-drift measure, made a training loss."""

import pytest
import torch

from dreamer.sleep.seeding.distill import drift_loss
from dreamer.eval.evaluate import general_drift
from dreamer.lm.scoring import KL_BATCH
from dreamer.sleep.config import DistillConfig, LoadConfig, sleep_config_from_dict
from dreamer.lm.weights import NEW, build_stack, load_base, plan_device
from dreamer.bench.tiny import make_tiny_model_dir

TEXTS = ["The library opens at nine in the morning.", "Water boils at one hundred degrees.",
         "A week has seven days.", "To make tea, heat fresh water.", "Paris is the capital of France, a city on the Seine.",
         "Sleep helps."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def test_drift_loss_is_the_gates_drift_with_a_gradient(tiny_dir):
    """Against evaluate.general_drift, which computes KL(reference || candidate) by hand."""
    assert len(TEXTS) > KL_BATCH  # several batches of different lengths: the mean must weight by tokens
    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))
    model = build_stack(base, [], DistillConfig(rank=4))
    assert drift_loss(model, tokenizer, TEXTS, [], max_len=64).item() == pytest.approx(0.0, abs=1e-7)  # B = 0
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()  # no dropout, as in the gate
    got = drift_loss(model, tokenizer, TEXTS, [], max_len=64)
    assert got.requires_grad and got.item() > 0
    assert got.item() == pytest.approx(general_drift(model, tokenizer, TEXTS, [], [NEW], max_len=64), rel=1e-4)
    got.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_drift_weight_is_validated():
    with pytest.raises(ValueError, match="distill.drift_weight must be a number >= 0"):
        sleep_config_from_dict({"distill": {"drift_weight": -0.1}})
    with pytest.raises(ValueError, match="distill.drift_batch must be a positive integer"):
        sleep_config_from_dict({"distill": {"drift_batch": 0}})
