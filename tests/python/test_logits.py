"""Logits through Python are the CLI's, bit for bit (the same libraries do the arithmetic)."""
import numpy as np
import pytest

from conftest import GPTJ, LLAMA, cli_json, ferry

IDS = [5, 17, 301, 42, 7, 999, 0, 64]


@pytest.mark.parametrize("model", [GPTJ, LLAMA], ids=["gptj", "llama"])
def test_last_position_equals_cli(model):
    m = ferry.load(model, device="cpu", progress=False)
    got = m.logits(IDS)
    want = np.asarray(cli_json("logits", "-m", model, "--ids", " ".join(map(str, IDS)))["logits"],
                      dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == (m.config["vocab_size"],)
    assert np.array_equal(got, want)
    # numpy ids and a second call give the same numbers (the slot is reset between calls).
    assert np.array_equal(m.logits(np.array(IDS, dtype=np.int64)), got)


@pytest.mark.parametrize("model", [GPTJ, LLAMA], ids=["gptj", "llama"])
def test_all_positions_equal_cli(model):
    m = ferry.load(model, device="cpu", progress=False, max_logit_rows=len(IDS))
    got = m.logits(IDS, all_positions=True)
    want = np.asarray(cli_json("logits", "-m", model, "--ids", " ".join(map(str, IDS)),
                               "--all-positions")["logits"], dtype=np.float32)
    assert got.shape == (len(IDS), m.config["vocab_size"])
    assert np.array_equal(got, want)


def test_all_positions_beyond_rows_says_how():
    m = ferry.load(GPTJ, device="cpu", progress=False)
    with pytest.raises(ferry.InvalidArgument, match="max_logit_rows=8"):
        m.logits(IDS, all_positions=True)


def test_bad_ids():
    m = ferry.load(GPTJ, device="cpu", progress=False)
    with pytest.raises(ferry.InvalidArgument):
        m.logits([5, 100000])
    with pytest.raises(ferry.InvalidArgument, match="one-dimensional"):
        m.logits(np.zeros((2, 2), dtype=np.int32))
    assert m.logits([5]).shape == (1000,)  # still usable
