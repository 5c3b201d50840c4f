"""The transformers-style classes give the tokens `ferry run` gives."""
import json

import numpy as np

from conftest import GGUF, ferry, run_cli

TEXT = "The license grants"


def test_shim_equals_ferry_run():
    tok = ferry.AutoTokenizer.from_pretrained(GGUF)
    model = ferry.AutoModelForCausalLM.from_pretrained(GGUF, max_memory={"cpu": "1GiB"},
                                                       device_map="cpu", progress=False)
    inputs = tok(TEXT, return_tensors="np")
    assert inputs.input_ids.dtype == np.int64 and inputs.input_ids.shape[0] == 1
    n = inputs.input_ids.shape[1]
    out = model.generate(inputs.input_ids, max_length=n + 10)
    assert out.dtype == np.int64 and out.shape[0] == 1
    assert np.array_equal(out[0, :n], inputs.input_ids[0])
    r = run_cli("run", "-m", GGUF, "-p", TEXT, "-n", 10, "--print-ids", "-q")
    assert out[0, n:].tolist() == json.loads(r.stdout.strip().splitlines()[-1])
    # max_new_tokens, and decode of the whole row.
    out2 = model.generate(inputs.input_ids, max_new_tokens=10, do_sample=False)
    assert np.array_equal(out, out2)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert isinstance(text, str) and TEXT in text
    assert tok.encode(TEXT) == inputs.input_ids[0].tolist()
    assert tok.eos_token_id is not None


def test_shim_sampling_is_seeded():
    tok = ferry.AutoTokenizer.from_pretrained(GGUF)
    model = ferry.AutoModelForCausalLM.from_pretrained(GGUF, device_map="cpu", progress=False)
    ids = tok(TEXT, return_tensors="np").input_ids
    a = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=0.9, top_k=40)
    b = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=0.9, top_k=40)
    assert np.array_equal(a, b)


def test_max_memory_forms():
    # A GPU key on a machine without one (device_map auto) plans for the CPU; "8 GB" is a size.
    model = ferry.AutoModelForCausalLM.from_pretrained(
        GGUF, max_memory={"cpu": "1 GiB", 0: "6GiB", "disk": "100GiB"}, progress=False)
    if not ferry._ferry.has_gpu():
        assert model.device == "cpu"
    assert model.plan["ram_budget_bytes"] == 1 << 30
