"""kv_memory= is `--kv-memory`: ferry.plan places the KV cache as `ferry plan --kv-memory` does,
and a bad value, or "device" on the CPU, raises InvalidArgument with the CLI's message."""
import pytest

from conftest import GPTJ, cli_error, cli_json, ferry


@pytest.mark.parametrize("kv_memory", ["auto", "device", "host"])
def test_plan_equals_cli(kv_memory):
    got = ferry.plan(GPTJ, profile="colab-t4", kv_memory=kv_memory)
    assert got == cli_json("plan", "-m", GPTJ, "--profile", "colab-t4", "--kv-memory", kv_memory,
                           "--json")
    assert got["kv_cache"]["memory"] == kv_memory
    if kv_memory != "auto":
        assert got["kv_cache"]["place"] == kv_memory


def test_bad_value_is_the_clis_invalid_argument():
    want = cli_error("plan", "-m", GPTJ, "--kv-memory", "vram")
    assert "--kv-memory 'vram' is not auto, device or host" in want
    with pytest.raises(ferry.InvalidArgument) as e:
        ferry.plan(GPTJ, kv_memory="vram", measure=False)
    assert str(e.value) == want
    with pytest.raises(ferry.InvalidArgument) as e:
        ferry.load(GPTJ, device="cpu", kv_memory="vram", progress=False)
    assert str(e.value) == want


def test_device_memory_needs_cuda():
    want = cli_error("run", "-m", GPTJ, "--ids", "1 2", "--device", "cpu", "--kv-memory",
                     "device", "-q")
    assert "needs --device cuda" in want
    with pytest.raises(ferry.InvalidArgument) as e:
        ferry.load(GPTJ, device="cpu", kv_memory="device", progress=False)
    assert str(e.value) == want
    with pytest.raises(ferry.InvalidArgument) as e:
        ferry.plan(GPTJ, device="cpu", kv_memory="device", measure=False)
    assert str(e.value) == want
    # host on the CPU is where the cache lives anyway
    assert ferry.load(GPTJ, device="cpu", kv_memory="host", progress=False).device == "cpu"
