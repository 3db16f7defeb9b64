"""The learner's HF export (``workers.learner.export_hf``), without a process group."""
import json

import torch

from workers.learner import export_hf


def test_a_bf16_export_of_fp32_master_weights_says_bf16(tmp_path):
    """FSDP2 keeps fp32 master weights and exports in the compute dtype; ``save_pretrained`` wrote the model's own
    dtype (float32) into config.json, so ``from_pretrained`` loaded a bf16 export in fp32, at twice its size."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    out = tmp_path / "export"
    export_hf(model, state, torch.bfloat16, str(out), str(tok))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "tokenizer.json").read_text() == "{}"
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight.to(torch.bfloat16))
