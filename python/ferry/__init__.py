"""ferry from Python: run a language model bigger than the memory it is given.

    import ferry
    m = ferry.load("~/models/gpt-j-6b", max_ram="8GiB")       # plans exactly like `ferry run`
    print(m.generate("The quick brown fox", max_new_tokens=32))
    for tok in m.generate("Once upon a time", stream=True):
        print(tok.text, end="", flush=True)

The model is opened, planned and run by the same libraries as the `ferry` command (the native
module ferry._ferry); this package adds text in and out, streaming, progress bars and the
transformers-style classes (AutoTokenizer, AutoModelForCausalLM).
"""
from __future__ import annotations

import json
import os
import pkgutil
import queue
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

# The build tree keeps the native module in <build>/python/ferry/, beside no __init__.py: with
# PYTHONPATH=<build>/python:python both directories make up this package (ctest runs so).
__path__ = pkgutil.extend_path(__path__, __name__)

from . import _ferry  # noqa: E402
from ._ferry import (  # noqa: E402,F401
    CudaError,
    Error,
    FormatError,
    InvalidArgument,
    IoError,
    PlanError,
)

import numpy as np  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "load", "plan", "Model", "Tokenizer", "Token", "AutoTokenizer", "AutoModelForCausalLM",
    "Error", "FormatError", "InvalidArgument", "PlanError", "IoError", "CudaError",
]

Size = Union[str, int, None]
Prompt = Union[str, Sequence[int], np.ndarray]


def _path(path: Union[str, os.PathLike]) -> str:
    return os.path.expanduser(os.fspath(path))


def _device(device: Optional[str]) -> str:
    """"auto" (or None): cuda when this build has the CUDA backend and a GPU answers, else cpu."""
    if device in (None, "auto"):
        if "cuda" in _ferry.compiled_backends() and _ferry.has_gpu():
            return "cuda"
        return "cpu"
    return str(device)


class _Progress:
    """Loading progress: a tqdm bar where stderr is not a terminal (a notebook) and tqdm is
    installed, else a line on stderr rewritten in place (a terminal) or printed every 10 %."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.tty = sys.stderr.isatty() if hasattr(sys.stderr, "isatty") else False
        self.shown = -1
        if not self.tty:
            try:
                from tqdm.auto import tqdm  # type: ignore
                self.bar = tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                                leave=False)
            except ImportError:
                self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            if self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)
            return
        pct = int(100 * done / total) if total else 100
        if self.tty:
            if pct != self.shown:
                sys.stderr.write(f"\r{self.label} {pct:3d}% ({done / 2**30:.2f} / "
                                 f"{total / 2**30:.2f} GiB)")
                sys.stderr.flush()
        elif pct // 10 != self.shown // 10 or self.shown < 0:
            sys.stderr.write(f"{self.label} {pct}% ({done / 2**30:.2f} / {total / 2**30:.2f} GiB)\n")
            sys.stderr.flush()
        self.shown = pct

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.tty and self.shown >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()


class Token:
    """One streamed token: its id, the text it completed (multi-byte characters are held back
    until whole, so .text may be empty) and which prompt of a list it belongs to."""

    __slots__ = ("id", "text", "index")

    def __init__(self, id: Optional[int], text: str, index: int = 0):
        self.id = id
        self.text = text
        self.index = index

    def __repr__(self) -> str:
        return f"Token(id={self.id}, text={self.text!r}, index={self.index})"


class Tokenizer:
    """A model's tokenizer: encode(text) → ids, decode(ids) → text, as ferry's CLI does."""

    def __init__(self, native: "_ferry.Tokenizer"):
        self._native = native

    def encode(self, text: str, add_special: bool = True,
               return_tensors: Optional[str] = None) -> Union[List[int], np.ndarray]:
        """Ids of text; with add_special the ids the tokenizer puts around it (Llama's BOS).
        return_tensors="np" gives an int32 array instead of a list."""
        ids = self._native.encode(text, add_special)
        return np.asarray(ids, dtype=np.int32) if return_tensors == "np" else ids

    def decode(self, ids: Union[Sequence[int], np.ndarray],
               skip_special_tokens: bool = False) -> str:
        return self._native.decode(_as_ids(ids), skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._native.vocab_size

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._native.bos_id

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._native.eos_id

    def token_id(self, token: str) -> Optional[int]:
        return self._native.token_id(token)

    def __repr__(self) -> str:
        return f"ferry.Tokenizer(vocab_size={self.vocab_size})"


def _as_ids(ids: Any) -> np.ndarray:
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        if a.size == 0:
            return np.zeros(0, dtype=np.int32)
        raise InvalidArgument(f"token ids must be integers; got an array of {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _is_ids(p: Any) -> bool:
    if isinstance(p, np.ndarray):
        return p.ndim == 1
    return isinstance(p, (list, tuple)) and all(
        isinstance(x, (int, np.integer)) for x in p) and len(p) > 0


class Model:
    """A model opened for generation (see ferry.load)."""

    def __init__(self, native: "_ferry.Model", path: str):
        self._native = native
        self.path = path
        self._plan: Optional[dict] = None
        self._config: Optional[dict] = None
        tok = native.tokenizer
        self.tokenizer: Optional[Tokenizer] = Tokenizer(tok) if tok is not None else None

    @property
    def plan(self) -> Optional[dict]:
        """The plan the model was loaded with: the fields of `ferry plan --json` (None when the
        placement was forced, as with mmap=True)."""
        if self._plan is None:
            text = self._native.plan_json()
            self._plan = json.loads(text) if text is not None else None
        return self._plan

    @property
    def config(self) -> dict:
        """The model's configuration (config.json's fields as ferry read them)."""
        if self._config is None:
            self._config = json.loads(self._native.config_json())
        return self._config

    @property
    def device(self) -> str:
        return self._native.device

    @property
    def context(self) -> int:
        return self._native.context

    @property
    def max_seqs(self) -> int:
        return self._native.max_seqs

    @property
    def eos_ids(self) -> List[int]:
        return list(self._native.eos_ids)

    @property
    def draft(self) -> Optional[str]:
        """The drafter of speculative decoding ("lookup"), or None."""
        return self._native.draft

    def draft_stats(self) -> Dict[str, int]:
        """Speculative decoding over every generate() so far: drafted tokens the model scored
        ("proposed"), kept ("accepted") and turned down ("rejected"; at most one a pass)."""
        return dict(self._native.draft_stats())

    def describe(self) -> str:
        """Where the weights went and the plan's summary, as `ferry run` prints them."""
        return "\n".join(self._native.describe())

    def _prompt_ids(self, prompt: Prompt, add_special: bool) -> np.ndarray:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgument(
                    f"{self.path} has no tokenizer, so text cannot be encoded; give token ids "
                    "instead, or copy the model's tokenizer files (tokenizer.json, or vocab.json "
                    "+ merges.txt) beside its weights")
            return np.asarray(self.tokenizer.encode(prompt, add_special), dtype=np.int32)
        return _as_ids(prompt)

    def generate(self, prompt: Union[Prompt, Sequence[Prompt]], max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                 ignore_eos: bool = False, stream: bool = False, add_special: bool = True,
                 return_ids: bool = False) -> Any:
        """Generates from a prompt (text or token ids) or a list of prompts.

        Returns the new text (a list of texts for a list of prompts), or the new token ids with
        return_ids=True or when the model has no tokenizer; the end token, when generation
        stops at one, is in the ids but not in the text. With stream=True, an iterator of Token
        (.id, .text, .index) as each token is sampled. A list is batched (continuous batching)
        when the model was loaded with max_seqs > 1, else run one prompt after another; each
        prompt samples with the same seed either way, so the results are the same.

        Ctrl-C (KeyboardInterrupt) stops generation after the current token and leaves the
        model usable.
        """
        many = isinstance(prompt, (list, tuple)) and not _is_ids(prompt)
        prompts = list(prompt) if many else [prompt]
        if many and not prompts:
            return iter(()) if stream else []
        ids = [self._prompt_ids(p, add_special) for p in prompts]
        args = (int(max_new_tokens), float(temperature), float(top_p), int(top_k), int(seed),
                bool(ignore_eos))
        as_text = self.tokenizer is not None and not return_ids
        if stream:
            return self._stream(ids, args, as_text)
        out = self._native.generate(ids, *args, None)
        if not as_text:
            return out if many else out[0]
        texts = [self._text(o) for o in out]
        return texts if many else texts[0]

    def _text(self, ids: Sequence[int]) -> str:
        dec = _ferry.StreamDecoder(self.tokenizer._native, False)
        eos = set(self._native.eos_ids)
        parts = [dec.push(t) for t in ids if t not in eos]
        parts.append(dec.flush())
        return "".join(parts)

    def _stream(self, ids: List[np.ndarray], args: tuple, as_text: bool) -> Iterator[Token]:
        # The native generate runs on a worker thread (the GIL released while it computes) and
        # hands each token over a queue; closing the iterator (break, Ctrl-C) stops it after
        # the token it is computing.
        items: "queue.Queue" = queue.Queue()
        cancel = threading.Event()
        done = object()

        def on_token(index: int, token: int) -> bool:
            items.put((index, token))
            return not cancel.is_set()

        def work() -> None:
            try:
                self._native.generate(ids, *args, on_token)
                items.put(done)
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                items.put(e)

        worker = threading.Thread(target=work, name="ferry-generate", daemon=True)
        decoders: dict = {}
        eos = set(self._native.eos_ids)
        worker.start()
        try:
            while True:
                item = items.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                index, token = item
                if not as_text:
                    yield Token(token, "", index)
                    continue
                dec = decoders.get(index)
                if dec is None:
                    dec = decoders[index] = _ferry.StreamDecoder(self.tokenizer._native, False)
                yield Token(token, "" if token in eos else dec.push(token), index)
            for index, dec in decoders.items():
                rest = dec.flush()
                if rest:
                    yield Token(None, rest, index)
        finally:
            cancel.set()
            worker.join()

    def logits(self, ids: Union[Sequence[int], np.ndarray],
               all_positions: bool = False) -> np.ndarray:
        """The logits after the last id (float32 [vocab]), or after every id ([n, vocab]) with
        all_positions=True (the model must be loaded with max_logit_rows >= n). The same numbers
        as `ferry logits`."""
        return self._native.logits(_as_ids(ids), all_positions)

    def memory(self) -> dict:
        """Where the weights live and what the process used: resident_bytes (weights kept in
        RAM or VRAM), streamed_bytes (read from disk every token), kv_cache_bytes, the plan's
        predicted peak_ram_bytes, and the process's peak_rss_bytes (VmHWM) and rss_bytes."""
        d: dict = {"resident_bytes": None, "streamed_bytes": None, "kv_cache_bytes": None,
                   "predicted_peak_ram_bytes": None, "predicted_peak_vram_bytes": None}
        p = self.plan
        if p is not None:
            layers = p.get("layers", [])
            d["resident_bytes"] = sum(u["bytes"] for u in layers if u.get("tier") != "disk")
            d["streamed_bytes"] = sum(u["bytes"] for u in layers if u.get("tier") == "disk")
            d["kv_cache_bytes"] = p.get("kv_cache", {}).get("bytes")
            d["predicted_peak_ram_bytes"] = p.get("peak_ram_bytes")
            d["predicted_peak_vram_bytes"] = p.get("peak_vram_bytes")
        d.update(self._native.memory())
        d["rss_bytes"] = _status_bytes("VmRSS")
        return d

    def __repr__(self) -> str:
        return (f"ferry.Model({self.path!r}, device={self.device!r}, context={self.context}, "
                f"max_seqs={self.max_seqs})")


def _status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load(path: Union[str, os.PathLike], max_ram: Size = None, device: Optional[str] = "auto",
         max_vram: Size = None, context: Optional[int] = None, max_seqs: int = 1,
         max_batch_rows: Optional[int] = None, max_logit_rows: Optional[int] = None,
         mmap: bool = False, progress: Union[bool, Callable[[int, int], Any]] = True,
         draft: Optional[str] = None, draft_k: int = 4, kv_memory: str = "auto") -> Model:
    """Opens a model (a directory of config.json + weights, a ferry pack or a GGUF file) as
    `ferry run` does: the device, a plan within the RAM budget, the weights, the engine.

    max_ram / max_vram: "8GiB", "6GB" or bytes (default: what is free). device: "auto" (cuda
    when a GPU answers, else cpu), "cpu" or "cuda". context: KV tokens per sequence (default:
    the model's, at most 4096). max_seqs: sequences generated together. max_batch_rows: most
    tokens in one pass (the longest prompt; default: the context). max_logit_rows: most rows of
    logits one pass returns (for logits(all_positions=True); default: max_seqs). progress: a
    loading bar (tqdm in a notebook), False for none, or a function (bytes_done, bytes_total).
    draft: "lookup" for speculative decoding (each sequence drafts up to draft_k tokens from
    n-grams of its own text and the model verifies them in the same pass; the tokens are the
    same as without, fewer passes when the text repeats itself); draft models are not
    supported here yet. kv_memory: where a CUDA plan puts the KV cache, as `--kv-memory`:
    "auto" (the planner chooses), "device" (VRAM) or "host" (pinned host memory, read over
    PCIe); the CPU keeps it in host memory.

    Raises PlanError (naming the smallest budget that works) when the model cannot fit,
    FormatError for a damaged file, InvalidArgument for a bad option, IoError when reading fails.
    """
    p = _path(path)
    bar = None
    if callable(progress):
        on_progress = progress
    elif progress:
        bar = _Progress("loading")
        on_progress = bar
    else:
        on_progress = None
    try:
        native = _ferry.load(p, max_ram, _device(device), max_vram, int(context or 0),
                             int(max_seqs), int(max_batch_rows or 0), int(max_logit_rows or 0),
                             bool(mmap), on_progress, draft, int(draft_k), str(kv_memory))
    finally:
        if bar is not None:
            bar.close()
    return Model(native, p)


def plan(path: Union[str, os.PathLike], max_ram: Size = None, profile: Optional[str] = None,
         device: Optional[str] = None, max_vram: Size = None, context: Optional[int] = None,
         batch: int = 1, measure: bool = True, kv_memory: str = "auto") -> dict:
    """What `ferry plan --json` prints: will the model fit, where each layer goes, how fast it
    will run. profile plans for a named machine (colab-t4, colab-cpu, kaggle-p100, laptop-8g,
    or a JSON file) instead of this one; device "cpu" | "cuda" (default: cuda when the machine
    has a GPU); kv_memory "auto" | "device" | "host" as `--kv-memory`. Raises PlanError naming
    the smallest budget when nothing fits."""
    dev = "" if device in (None, "auto") else device
    return json.loads(_ferry.plan_json(_path(path), max_ram, profile or "", dev, max_vram,
                                       int(context or 0), int(batch), bool(measure),
                                       str(kv_memory)))


from ._transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
