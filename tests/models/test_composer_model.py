import pytest
import torch
import torch.nn.functional as F
from mpt_helpers import VOCAB, tiny_config

from foundry.models import MODELS, ComposerMPTCausalLM, build_mpt_causal_lm, count_parameters, flops_per_token
from foundry.models.mpt import MPTBlock


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0  # right padding, as the collator makes it
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    sequence_id = torch.zeros_like(input_ids)
    sequence_id[:, 6:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "sequence_id": sequence_id}


def composer_model(loss_fn: str = "torch_crossentropy", **overrides) -> ComposerMPTCausalLM:
    """The full-logits path, whose forward returns logits to check (chunked: tests/models/test_loss.py)."""
    torch.manual_seed(0)
    return ComposerMPTCausalLM(tiny_config(**overrides), loss_fn=loss_fn).eval()


def hand_loss(logits, labels):
    losses, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = labels[b, t + 1].item()
            if target == -100:
                continue
            losses += -F.log_softmax(logits[b, t].double(), dim=-1)[target].item()
            count += 1
    return losses / count


def test_loss_is_mean_next_token_ce_ignoring_padding():
    model, batch = composer_model(), make_batch()
    with torch.no_grad():
        logits = model(batch)
        loss = model.loss(logits, batch)
    assert logits.shape == (3, 12, VOCAB)
    assert loss.item() == pytest.approx(hand_loss(logits, batch["labels"]), rel=1e-5)
    with torch.no_grad():  # the HF-style labels= path computes the same loss
        hf = model.model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert hf.loss.item() == pytest.approx(loss.item(), rel=1e-6)


def test_sequence_id_reaches_the_model():
    plain, masked = composer_model(), composer_model(attn_config={"attn_uses_sequence_id": True})
    batch = make_batch()
    with torch.no_grad():
        assert torch.allclose(plain(batch)[:, :6], masked(batch)[:, :6], atol=1e-6)
        assert not torch.allclose(plain(batch)[:, 6:], masked(batch)[:, 6:])


def test_metrics_match_loss():
    model, batch = composer_model(), make_batch()
    # Train metrics would recompute the logged loss over full logits every micro-batch: opt-in.
    assert model.get_metrics(is_train=True) == {}
    opted_in = ComposerMPTCausalLM(tiny_config(), use_train_metrics=True)
    assert set(opted_in.get_metrics(is_train=True)) == {"LanguageCrossEntropy", "LanguagePerplexity"}
    assert set(model.get_metrics(is_train=False)) == {"LanguageCrossEntropy", "LanguagePerplexity"}
    metrics = model.get_metrics(is_train=False)
    with torch.no_grad():
        out = model.eval_forward(batch)
        loss = model.loss(out, batch).item()
        for metric in metrics.values():
            metric.reset()
            model.update_metric(batch, out, metric)
    assert metrics["LanguageCrossEntropy"].compute().item() == pytest.approx(loss, rel=1e-5)
    assert metrics["LanguagePerplexity"].compute().item() == pytest.approx(torch.tensor(loss).exp().item(), rel=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_batch_matches_formula(tied):
    model, batch = composer_model(tie_word_embeddings=tied), make_batch()
    cfg = model.config
    total = sum(p.numel() for p in model.model.parameters())
    # N: everything that takes part in a matmul = all params, minus the input table when untied.
    n = total if tied else total - cfg.vocab_size * cfg.d_model
    b, t = batch["input_ids"].shape
    expected = b * 3 * (2 * n * t + 4 * cfg.n_layers * cfg.d_model * t * t)
    assert model.flops_per_batch(batch) == expected
    assert flops_per_token(cfg, t) * t * b == expected
    assert flops_per_token(cfg, t, passes=4) == pytest.approx(flops_per_token(cfg, t) * 4 / 3)


def test_registry_builds_from_yaml_section():
    section = {"d_model": 32, "n_heads": 4, "n_layers": 2, "max_seq_len": 64, "vocab_size": VOCAB,
               "init_device": "meta", "attn_config": {"attn_uses_sequence_id": True}}
    model = MODELS["mpt_causal_lm"](section)
    assert isinstance(model, ComposerMPTCausalLM)
    assert all(p.is_meta for p in model.parameters())
    assert model.num_params() == count_parameters(tiny_config())
    with pytest.raises(ValueError, match="Did you mean 'n_layers'"):
        build_mpt_causal_lm({**section, "n_layer": 3})
    assert isinstance(build_mpt_causal_lm({**section, "loss_fn": "torch_crossentropy"}), ComposerMPTCausalLM)
    assert build_mpt_causal_lm({**section, "loss_fn": "fused_crossentropy"}).loss_fn == "chunked_crossentropy"
    with pytest.raises(ValueError, match="loss_fn"):
        build_mpt_causal_lm({**section, "loss_fn": "mse"})

    class FakeTokenizer:
        def __len__(self):
            return VOCAB + 1

    with pytest.raises(ValueError, match="vocab_size"):
        build_mpt_causal_lm(section, tokenizer=FakeTokenizer())


def test_composer_finds_the_hooks_on_the_direct_child():
    from composer.distributed.fsdp2_utils import generate_composer_model_policy

    model = composer_model()
    policy = generate_composer_model_policy(model)
    wrapped = {m for m in model.modules() if policy._lambda_fn(m)}
    blocks = {m for m in model.modules() if isinstance(m, MPTBlock)}
    assert blocks <= wrapped and model.model in wrapped and model not in wrapped
    assert wrapped - blocks == {model.model}
    assert callable(model.model.param_init_fn) and callable(model.model.activation_checkpointing_fn)


def test_trains_a_few_steps_with_composer(tmp_path):
    from composer import Trainer

    torch.manual_seed(0)
    model = ComposerMPTCausalLM(tiny_config())
    batch = make_batch()
    data = [{k: v[i] for k, v in batch.items()} for i in range(3)] * 4
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    trainer = Trainer(model=model, train_dataloader=loader, max_duration="4ba",
                      optimizers=torch.optim.AdamW(model.parameters(), lr=1e-2), device="cpu",
                      progress_bar=False, log_to_console=False, save_folder=None,
                      run_name="mpt-test", loggers=[])
    with torch.no_grad():
        before = model.loss(model(batch), batch).item()
    trainer.fit()
    with torch.no_grad():
        after = model.loss(model(batch), batch).item()
    assert after < before
    trainer.close()
