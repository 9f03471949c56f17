"""Hugging Face transformers models, built from tiny configs (no downloads): exact removal on the
models themselves with dict inputs, GPT-2's Conv1D, the Trainer callback and the pruned save/reload
(skipped without transformers)."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")

import demp  # noqa: E402
from demp import DempError  # noqa: E402
from demp.core import tp_compat  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
VOCAB = 64


def _opt():
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="relu",
        bos_token_id=0, eos_token_id=0, pad_token_id=0))


def _bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act="relu", max_position_embeddings=64, num_labels=3))


def _roberta():
    return transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act="relu", max_position_embeddings=72, pad_token_id=1))


def _vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, hidden_act="relu", num_labels=5))


def _t5():
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="relu",
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def _producer(model: nn.Module) -> tuple[str, nn.Module]:
    """The first FFN's first layer (the one whose output units the first ReLU site reads)."""
    names = ("decoder.layers.0.fc1", "h.0.mlp.c_fc", "layers.0.mlp.fc1", "layer.0.intermediate.dense", "block.0.layer.1.DenseReluDense.wi")
    return next((n, m) for n, m in model.named_modules() if n.endswith(names))


def _inputs(name: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if name == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    ids = torch.randint(3, VOCAB, (2, 12), generator=g)
    if name == "t5":
        return {"input_ids": ids, "decoder_input_ids": torch.randint(3, VOCAB, (2, 6), generator=g)}
    return {"input_ids": ids}


MODELS = {"opt": _opt, "gpt2": _gpt2, "bert": _bert, "roberta": _roberta, "vit": _vit, "t5": _t5}
PLANTED = torch.tensor([1, 5, 6, 20, 33])


def planted(name: str) -> nn.Module:
    """A tiny model whose first FFN has units PLANTED dead on every input (zero weights, bias -1)."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    _, layer = _producer(model)
    transposed = isinstance(layer, tp_compat.transposed_linear_types())
    with torch.no_grad():
        if transposed:
            layer.weight[:, PLANTED] = 0.0
        else:
            layer.weight[PLANTED] = 0.0
        if layer.bias is not None:
            layer.bias[PLANTED] = -1.0
    return model


def _trained_optimizer(model: nn.Module, x: dict) -> torch.optim.AdamW:
    """AdamW with state from one step on the model's own loss (planted units get no gradient)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(**x)
    logits = out.logits
    logits.float().pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def _first_site(model: nn.Module, x: dict) -> str:
    return demp.list_sites(model, x)[0].name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_planted_units_go_outputs_and_adamw_state_follow(name):
    model, x = planted(name), _inputs(name)
    optimizer = _trained_optimizer(model, x)
    site = _first_site(model, x)
    dead = demp.find_dead_units(model, [x, _inputs(name, 1)])
    assert dead[site][PLANTED].all()
    mask = torch.zeros_like(dead[site])
    mask[PLANTED] = True
    layer_name, layer = _producer(model)
    old_weight, old_state = layer.weight, {k: v.clone() for k, v in optimizer.state[layer.weight].items()}
    with torch.no_grad():
        before = model(**x).logits
    report = demp.remove_units(model, {site: mask}, x, optimizer)
    assert report.sites[site].removed == len(PLANTED) and report.params_after < report.params_before
    with torch.no_grad():
        after = model(**x).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)

    layer = dict(model.named_modules())[layer_name]
    keep = torch.ones(mask.numel(), dtype=torch.bool)
    keep[PLANTED] = False
    transposed = isinstance(layer, tp_compat.transposed_linear_types())
    rows = (lambda t: t[:, keep]) if transposed else (lambda t: t[keep])
    assert layer.weight is not old_weight and torch.equal(layer.weight, rows(old_weight.detach()))
    state = optimizer.state[layer.weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], rows(old_state[key]))
    params = {id(p) for p in model.parameters()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == params
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in model.parameters() if p in optimizer.state)
    _trained_optimizer(model, x)  # trains on at the new widths


@pytest.mark.parametrize("name", ["opt", "gpt2", "t5"])
def test_generate_is_unchanged_after_removal(name):
    model, x = planted(name), _inputs(name)
    prompt = {"input_ids": x["input_ids"]}
    greedy = dict(max_new_tokens=4, do_sample=False)
    before = model.generate(**prompt, **greedy)
    site = _first_site(model, x)
    mask = torch.zeros(demp.list_sites(model, x)[0].width, dtype=torch.bool)
    mask[PLANTED] = True
    demp.remove_units(model, {site: mask}, x)
    assert torch.equal(model.generate(**prompt, **greedy), before)


def test_cache_and_tuple_outputs_do_not_break_the_graph():
    model, x = planted("opt"), _inputs("opt")
    for extra in ({"use_cache": True}, {"use_cache": True, "return_dict": False}):
        inputs = {**x, **extra}
        site = _first_site(model, inputs)
        dead = demp.find_dead_units(model, [inputs])
        before = model(**inputs)[0]
        demp.remove_units(model, {site: dead[site]}, inputs)
        torch.testing.assert_close(model(**inputs)[0], before, rtol=1e-5, atol=1e-6)
    assert demp.list_sites(model, x)[0].width <= 64 - len(PLANTED)


def test_gpt2_conv1d_pruner_slices_columns_and_widths():
    model = planted("gpt2")
    _, c_fc = _producer(model)
    report = demp.remove_units(model, demp.find_dead_units(model, [_inputs("gpt2")]), _inputs("gpt2"))
    c_proj = model.transformer.h[0].mlp.c_proj
    assert report.units_removed >= len(PLANTED)
    assert c_fc.nf == c_fc.weight.shape[1] == c_fc.bias.shape[0] == c_proj.nx == c_proj.weight.shape[0] < 128


def test_graph_failure_is_told_apart_from_bad_inputs(monkeypatch):
    model, x = planted("gpt2"), _inputs("gpt2")
    with pytest.raises(DempError, match="cannot run on example_inputs"):
        demp.remove_units(model, {}, {"input_idz": x["input_ids"]})
    # torch-pruning 1.6.1 as it is: no Conv1D pruner, and its concatenation bug on the key/value cache
    monkeypatch.setattr(tp_compat, "graph_pruners", lambda pruners: dict(pruners or {}))
    monkeypatch.setattr(tp_compat, "_concat_sizes_checked", contextlib.nullcontext)
    with pytest.raises(DempError, match=r"dependency graph of GPT2LMHeadModel could not be built.*Conv1D.*pruners="):
        demp.remove_units(model, {}, x)


def test_core_does_not_import_transformers():
    import subprocess
    import sys
    code = ("import sys, torch, demp; from demp.core import surgery, pruner, tp_compat; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- Trainer and saving

from demp.integrations import hf  # noqa: E402


class _Tokens(torch.utils.data.Dataset):
    """Causal-LM examples: random token rows, labels = inputs."""

    def __init__(self, n: int, seed: int = 0):
        self.ids = torch.randint(3, VOCAB, (n, 12), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(tmp_path, steps: int, **kw):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8, learning_rate=2e-3,
        report_to=[], save_strategy="steps", save_steps=4, logging_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=0, lr_scheduler_type="linear", **kw)


def _callback(**kw):
    probe = [{"input_ids": _Tokens(8, seed=9).ids}]
    return hf.DemonPruningCallback(probe, reg_peak=1e-3, noise_peak=1e-4, prune_every=4, **kw)


def _fit(tmp_path, steps: int, model=None, resume=None, **kw):
    model = model if model is not None else planted("opt")
    cb = _callback()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, steps, **kw), train_dataset=_Tokens(64),
                                   callbacks=[cb])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, cb


def _ffn_widths(model) -> list[int]:
    return [layer.fc1.out_features for layer in model.model.decoder.layers]


def test_callback_prunes_inside_trainer_and_slices_accelerates_optimizer(tmp_path):
    calls = []
    original = demp.DemonPruner.add_penalty_grad

    def spy(self, grad_scale=1.0):
        calls.append(grad_scale)
        return original(self, grad_scale)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demp.DemonPruner, "add_penalty_grad", spy)
        trainer, cb = _fit(tmp_path, 8, gradient_accumulation_steps=2)
    model = trainer.model
    assert calls == [1.0] * 8 and cb.pruner.step_count == 8     # once per optimizer step
    assert _ffn_widths(model)[0] <= 64 - len(PLANTED) and cb.pruner.history[0].units_before == 128
    inner = trainer.optimizer.optimizer                          # accelerate's wrapper keeps the same groups
    assert trainer.optimizer.param_groups is inner.param_groups
    assert {id(p) for g in inner.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert all(inner.state[p]["exp_avg"].shape == p.shape for p in model.parameters())
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0)   # linear decay ran to its end
    assert (tmp_path / "out" / "checkpoint-8" / hf.SHAPES_FILE).is_file()


def test_resume_from_a_pruned_checkpoint_continues_the_run(tmp_path):
    trainer, cb = _fit(tmp_path, 8)
    widths = _ffn_widths(trainer.model)
    assert widths[0] < 64
    ckpt = tmp_path / "out" / "checkpoint-4"
    saved = hf.read_shapes(ckpt)
    resumed, cb2 = _fit(tmp_path, 8, model=planted("opt"), resume=str(ckpt))
    assert cb2.pruner.step_count == 8 and cb2.pruner.history[0].step == cb.pruner.history[0].step
    assert len(cb2.pruner.history) == len(cb.pruner.history)
    assert saved["modules"]["model.decoder.layers.0.fc1"]["out_features"] < 64
    assert _ffn_widths(resumed.model) == widths


def test_save_model_reloads_in_one_call_with_identical_logits(tmp_path):
    trainer, _ = _fit(tmp_path, 4)
    model = trainer.model.eval()
    x = _inputs("opt")
    trainer.save_model(str(tmp_path / "final"))
    hf.save_pretrained_pruned(model, tmp_path / "direct")
    for folder in ("final", "direct"):
        again = hf.from_pretrained_pruned(transformers.OPTForCausalLM, tmp_path / folder)
        assert _ffn_widths(again) == _ffn_widths(model) and _ffn_widths(model)[0] < 64
        with torch.no_grad():
            assert torch.equal(again(**x).logits, model(**x).logits)


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_pruned_models_of_other_classes_reload(tmp_path, name):
    model, x = planted(name), _inputs(name)
    demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    hf.save_pretrained_pruned(model, tmp_path)
    again = hf.from_pretrained_pruned(type(model), tmp_path)
    with torch.no_grad():
        assert torch.equal(again(**x).logits, model.eval()(**x).logits)


def test_reload_refuses_folders_that_do_not_match(tmp_path):
    model, x = planted("opt"), _inputs("opt")
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(DempError, match="no demp_shapes.json"):
        hf.from_pretrained_pruned(transformers.OPTForCausalLM, tmp_path / "plain")
    demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    hf.save_pretrained_pruned(model, tmp_path / "pruned")
    with pytest.raises(DempError, match="holds a OPTForCausalLM"):
        hf.from_pretrained_pruned(transformers.GPT2LMHeadModel, tmp_path / "pruned")
    (tmp_path / "plain" / hf.SHAPES_FILE).write_text((tmp_path / "pruned" / hf.SHAPES_FILE).read_text())
    with pytest.raises(DempError, match="do not match"):   # full-width weights, pruned widths file
        hf.from_pretrained_pruned(transformers.OPTForCausalLM, tmp_path / "plain")


def test_gpt2_units_are_penalised_through_conv1d_columns():
    from demp.core import regulariser
    from demp.core.costs import site_costs
    model, x = planted("gpt2"), _inputs("gpt2")
    costs = site_costs(model, x)
    mlp = model.transformer.h[0].mlp
    first = costs["transformer.h.0.mlp.act"]
    assert first.producers == (mlp.c_fc,) and first.consumers == (mlp.c_proj,) and first.flops > 0
    norms = regulariser.unit_norms(regulariser.UnitGroup(first.producers, first.consumers))
    manual = (mlp.c_fc.weight.pow(2).sum(0) + mlp.c_fc.bias.pow(2) + mlp.c_proj.weight.pow(2).sum(1)).sqrt()
    torch.testing.assert_close(norms, manual)
    pruner = demp.DemonPruner(model, torch.optim.SGD(model.parameters(), lr=0.1), x, 10, [x], reg_peak=1e-2,
                              schedule="constant")
    assert len(pruner.penalised.groups) == 2 and float(pruner.penalty()) > 0


def test_batchnorm_resnet_trains_prunes_and_settles_statistics_on_dict_inputs():
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4))
    x = {"pixel_values": torch.randn(4, 3, 32, 32)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = demp.DemonPruner(model, optimizer, x, 4, [x], prune_every=2, reg_peak=1e-2)
    for _ in range(4):
        (model(**x).logits.pow(2).mean() + pruner.penalty()).backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    pruner.finish()
    assert pruner.penalised.scales and pruner.final_statistics.kept in ("trained", "re-estimated")


def test_penalty_gradient_carries_the_amp_loss_scale_until_gradients_are_unscaled():
    class Wrapped:   # what accelerate's AcceleratedOptimizer exposes: the torch optimizer and the scaler
        def __init__(self, optimizer, scaler):
            self.optimizer, self.scaler = optimizer, scaler

    p = nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(p.sum()).backward()
    assert hf._grad_scale(Wrapped(sgd, scaler)) == 8.0
    scaler.unscale_(sgd)                                   # what gradient clipping does first
    assert hf._grad_scale(Wrapped(sgd, scaler)) == 1.0
    assert hf._grad_scale(sgd) == 1.0 and hf._grad_scale(Wrapped(sgd, None)) == 1.0
