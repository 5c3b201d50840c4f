"""ferry's errors arrive as Python exceptions of named classes with the CLI's message, and
ferry.plan is `ferry plan --json`."""
import pytest

from conftest import GPTJ, cli_error, cli_json, ferry


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ferry.Error) as e:
        ferry.load(missing, device="cpu", progress=False)
    assert str(e.value) == cli_error("run", "-m", missing, "--ids", "1 2", "-q")
    assert str(missing) in str(e.value)


def test_impossible_budget_names_the_minimum():
    # Shaped as `ferry run --ids "1 2"` shapes its engine (2 + 32 tokens, a 2-row prompt
    # pass, one row of logits), the budget's refusal is the CLI's, word for word and number
    # for number.
    with pytest.raises(ferry.PlanError) as e:
        ferry.load(GPTJ, max_ram="64KiB", device="cpu", progress=False, context=34,
                   max_batch_rows=2, max_logit_rows=1)
    msg = str(e.value)
    assert msg == cli_error("run", "-m", GPTJ, "--ids", "1 2", "--max-ram", "64KiB", "-q")
    assert "raise --max-ram to at least" in msg  # names the smallest budget that works


def test_bad_arguments():
    with pytest.raises(ferry.InvalidArgument, match="tpu"):
        ferry.load(GPTJ, device="tpu", progress=False)
    with pytest.raises(ferry.InvalidArgument):
        ferry.load(GPTJ, device="cpu", max_seqs=0, progress=False)
    with pytest.raises(ferry.InvalidArgument):
        ferry.load(GPTJ, device="cpu", max_ram="lots", progress=False)
    with pytest.raises(ValueError):
        ferry.load(GPTJ, device="cpu", context=1 << 20, progress=False)


def test_no_tokenizer_says_so():
    m = ferry.load(GPTJ, device="cpu", progress=False)
    assert m.tokenizer is None
    with pytest.raises(ferry.InvalidArgument, match="no tokenizer"):
        m.generate("text")
    assert len(m.generate([1, 2, 3], max_new_tokens=4, ignore_eos=True)) == 4  # ids work
    with pytest.raises(ferry.InvalidArgument, match="no tokenizer"):
        ferry.AutoTokenizer.from_pretrained(GPTJ)


def test_exception_classes():
    assert issubclass(ferry.InvalidArgument, ValueError)
    assert issubclass(ferry.IoError, OSError)
    for c in (ferry.FormatError, ferry.InvalidArgument, ferry.PlanError, ferry.IoError):
        assert issubclass(c, ferry.Error)


@pytest.mark.parametrize("profile", ["colab-t4", "colab-cpu"])
def test_plan_equals_cli(profile):
    got = ferry.plan(GPTJ, profile=profile)
    assert got == cli_json("plan", "-m", GPTJ, "--profile", profile, "--json")
    got = ferry.plan(GPTJ, profile=profile, max_ram="60MiB", device="cpu", context=64)
    assert got == cli_json("plan", "-m", GPTJ, "--profile", profile, "--json", "--max-ram",
                           "60MiB", "--device", "cpu", "--ctx", 64)


def test_plan_refusal_is_plan_error():
    with pytest.raises(ferry.PlanError) as e:
        ferry.plan(GPTJ, profile="colab-cpu", max_ram="64KiB", device="cpu")
    assert str(e.value) == cli_error("plan", "-m", GPTJ, "--profile", "colab-cpu", "--max-ram",
                                     "64KiB", "--device", "cpu")
