"""Generation through Python: streaming equals not streaming, a list equals one prompt at a
time (batched or not), Ctrl-C leaves the model usable, and the CLI's tokens."""
import _thread
import json
import threading

import numpy as np
import pytest

from conftest import GGUF, ferry, run_cli

PROMPTS = ["The license grants", "Copyright holders may", "Permission is hereby"]


def test_text_equals_cli(gguf_model):
    out = gguf_model.generate(PROMPTS[0], max_new_tokens=12, return_ids=True)
    r = run_cli("run", "-m", GGUF, "-p", PROMPTS[0], "-n", 12, "--print-ids", "-q")
    assert out == json.loads(r.stdout.strip().splitlines()[-1])
    text = gguf_model.generate(PROMPTS[0], max_new_tokens=12)
    assert isinstance(text, str)
    assert text == gguf_model.tokenizer.decode([t for t in out if t not in gguf_model.eos_ids])


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 7}],
                         ids=["greedy", "sampled"])
def test_stream_equals_plain(gguf_model, sampling):
    plain = gguf_model.generate(PROMPTS[1], max_new_tokens=16, **sampling)
    ids = gguf_model.generate(PROMPTS[1], max_new_tokens=16, return_ids=True, **sampling)
    items = list(gguf_model.generate(PROMPTS[1], max_new_tokens=16, stream=True, **sampling))
    assert "".join(t.text for t in items) == plain
    assert [t.id for t in items if t.id is not None] == ids


def test_list_equals_one_at_a_time(gguf_model):
    one = [gguf_model.generate(p, max_new_tokens=10, ignore_eos=True) for p in PROMPTS]
    assert gguf_model.generate(PROMPTS, max_new_tokens=10, ignore_eos=True) == one
    batched = ferry.load(GGUF, device="cpu", progress=False, max_seqs=3)
    assert batched.generate(PROMPTS, max_new_tokens=10, ignore_eos=True) == one
    # Streaming a list: each item says which prompt it belongs to.
    texts = ["", "", ""]
    for t in batched.generate(PROMPTS, max_new_tokens=10, ignore_eos=True, stream=True):
        texts[t.index] += t.text
    assert texts == one


def test_ids_prompt(gguf_model):
    ids = gguf_model.tokenizer.encode(PROMPTS[2])
    assert gguf_model.generate(ids, max_new_tokens=5, return_ids=True) == \
        gguf_model.generate(PROMPTS[2], max_new_tokens=5, return_ids=True)
    assert gguf_model.generate(np.array(ids), max_new_tokens=5) == \
        gguf_model.generate(PROMPTS[2], max_new_tokens=5)


def test_keyboard_interrupt_leaves_model_usable(gguf_model):
    want = gguf_model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True, return_ids=True)
    ids = gguf_model.tokenizer.encode(PROMPTS[0])
    seen = []

    def on_token(index, token):  # Ctrl-C arrives while the third token is handed over
        seen.append(token)
        if len(seen) == 3:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        gguf_model._native.generate([ids], 20, 0.0, 1.0, 0, 0, True, on_token)
    assert 3 <= len(seen) < 20  # stopped at the next token, not at the end
    assert gguf_model.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True,
                               return_ids=True) == want


def test_callback_exception_stops_and_propagates(gguf_model):
    want = gguf_model.generate(PROMPTS[1], max_new_tokens=8, return_ids=True)
    ids = gguf_model.tokenizer.encode(PROMPTS[1])

    def on_token(index, token):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        gguf_model._native.generate([ids], 8, 0.0, 1.0, 0, 0, False, on_token)
    assert gguf_model.generate(PROMPTS[1], max_new_tokens=8, return_ids=True) == want


def test_stream_closed_early_leaves_model_usable(gguf_model):
    want = gguf_model.generate(PROMPTS[2], max_new_tokens=12, ignore_eos=True)
    it = gguf_model.generate(PROMPTS[2], max_new_tokens=12, ignore_eos=True, stream=True)
    next(it)
    it.close()  # what a `break` out of the loop does
    assert gguf_model.generate(PROMPTS[2], max_new_tokens=12, ignore_eos=True) == want


def test_gil_released_while_generating(gguf_model):
    # Another thread runs Python while generation computes.
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        gguf_model.generate(PROMPTS, max_new_tokens=30, ignore_eos=True)
    finally:
        stop.set()
        t.join()
    assert ticks


def test_sampling_options_checked(gguf_model):
    with pytest.raises(ferry.InvalidArgument):
        gguf_model.generate("x", top_p=0.0)
    with pytest.raises(ValueError):  # InvalidArgument is a ValueError too
        gguf_model.generate("x", temperature=-1.0)


def test_memory_and_plan(gguf_model):
    mem = gguf_model.memory()
    assert mem["peak_rss_bytes"] and mem["peak_rss_bytes"] > 0
    assert mem["resident_bytes"] + mem["streamed_bytes"] > 0
    assert gguf_model.plan["backend"] == "cpu"
    assert gguf_model.config["vocab_size"] == gguf_model.tokenizer.vocab_size or \
        gguf_model.config["vocab_size"] > 0


def test_tokenizer_roundtrip(gguf_model):
    tok = gguf_model.tokenizer
    ids = tok.encode("Hello world")
    assert tok.decode(ids, skip_special_tokens=True).endswith("Hello world")
    assert isinstance(tok.encode("Hello", return_tensors="np"), np.ndarray)


def test_load_progress_callback():
    seen = []
    ferry.load(GGUF, device="cpu", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))


def test_load_progress_line_without_tqdm(capsys):
    ferry.load(GGUF, device="cpu")  # stderr is not a terminal here, and tqdm may be missing
    err = capsys.readouterr().err
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert "loading 100%" in err


def test_sigint_mid_generation(gguf_model):
    # A real SIGINT (what Ctrl-C sends), through Python's handler: KeyboardInterrupt, and the
    # next generation gives the same tokens as before.
    import os
    import signal

    want = gguf_model.generate(PROMPTS[2], max_new_tokens=16, ignore_eos=True, return_ids=True)
    ids = gguf_model.tokenizer.encode(PROMPTS[2])
    seen = []

    def on_token(index, token):
        seen.append(token)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        gguf_model._native.generate([ids], 16, 0.0, 1.0, 0, 0, True, on_token)
    assert len(seen) < 16
    assert gguf_model.generate(PROMPTS[2], max_new_tokens=16, ignore_eos=True,
                               return_ids=True) == want


def test_interrupted_stream_leaves_model_usable(gguf_model):
    want = gguf_model.generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True)
    it = gguf_model.generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True, stream=True)
    with pytest.raises(KeyboardInterrupt):
        for n, _ in enumerate(it):
            if n == 2:
                _thread.interrupt_main()
                for _ in range(1000):  # the interrupt lands at the next bytecode
                    pass
    it.close()  # the worker stops after its current token
    assert gguf_model.generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True) == want


def test_speculative_lookup_equals_plain(gguf_model):
    """draft="lookup": the same tokens, one prompt alone and a batch, with drafts counted; a
    draft model is refused with the way out."""
    repeating = [p + ". " + p + ". " + p for p in PROMPTS]
    want = [gguf_model.generate(p, max_new_tokens=16, ignore_eos=True, return_ids=True)
            for p in repeating]
    spec = ferry.load(GGUF, device="cpu", progress=False, max_seqs=3, draft="lookup", draft_k=4)
    assert spec.draft == "lookup"
    assert spec.generate(repeating[0], max_new_tokens=16, ignore_eos=True,
                         return_ids=True) == want[0]
    assert spec.generate(repeating, max_new_tokens=16, ignore_eos=True, return_ids=True) == want
    stats = spec.draft_stats()
    assert stats["accepted"] + stats["rejected"] <= stats["proposed"]
    assert gguf_model.draft is None
    with pytest.raises(ferry.InvalidArgument, match="not supported yet; use draft=\"lookup\""):
        ferry.load(GGUF, device="cpu", progress=False, draft="self-int4")
