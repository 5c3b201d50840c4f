"""The transformers-style classes: code written for Hugging Face's

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, max_memory={"cpu": "8GiB"})
    out = model.generate(tok(text, return_tensors="np").input_ids, max_length=50)
    print(tok.decode(out[0], skip_special_tokens=True))

runs on ferry by changing the import. Arrays are numpy int64, as transformers' are torch int64
(return_tensors="pt" gives torch tensors when torch is installed).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _ferry


def _tensor(rows: List[List[int]], return_tensors: Optional[str]) -> Any:
    if return_tensors is None:
        return rows[0] if len(rows) == 1 else rows
    a = np.asarray(rows, dtype=np.int64)
    if return_tensors == "np":
        return a
    if return_tensors == "pt":
        import torch  # type: ignore

        return torch.from_numpy(a)
    raise _ferry.InvalidArgument(f"return_tensors={return_tensors!r}: give 'np', 'pt' or None")


class BatchEncoding(dict):
    """What calling the tokenizer returns: input_ids and attention_mask, as keys and as
    attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class PreTrainedTokenizer:
    """A model's tokenizer with transformers' calls (__call__, encode, decode, batch_decode)."""

    def __init__(self, tokenizer: "_ferry.Tokenizer", path: str):
        from . import Tokenizer

        self._tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
        self.name_or_path = path

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._tok.eos_token_id

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._tok.bos_token_id

    @property
    def pad_token_id(self) -> Optional[int]:
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.vocab_size

    def __len__(self) -> int:
        return self._tok.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True,
               return_tensors: Optional[str] = None) -> Any:
        ids = self._tok.encode(text, add_special_tokens)
        return ids if return_tensors is None else _tensor([ids], return_tensors)

    def __call__(self, text: Union[str, Sequence[str]], return_tensors: Optional[str] = None,
                 add_special_tokens: bool = True, **_: Any) -> BatchEncoding:
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self._tok.encode(t, add_special_tokens) for t in texts]
        if return_tensors is not None and len({len(r) for r in rows}) > 1:
            raise _ferry.InvalidArgument(
                "texts of different token lengths cannot make one array (ferry does not pad); "
                "call the tokenizer once per text")
        masks = [[1] * len(r) for r in rows]
        if isinstance(text, str) and return_tensors is None:
            return BatchEncoding(input_ids=rows[0], attention_mask=masks[0])
        return BatchEncoding(input_ids=_tensor(rows, return_tensors) if return_tensors else rows,
                             attention_mask=_tensor(masks, return_tensors) if return_tensors
                             else masks)

    def decode(self, ids: Any, skip_special_tokens: bool = False, **_: Any) -> str:
        a = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids)
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        return self._tok.decode(a, skip_special_tokens)

    def batch_decode(self, rows: Any, skip_special_tokens: bool = False, **_: Any) -> List[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path: Union[str, os.PathLike], **_: Any) -> PreTrainedTokenizer:
        """The tokenizer of a model directory or GGUF file (tokenizer.json, vocab.json +
        merges.txt, or the GGUF file's own)."""
        p = os.path.expanduser(os.fspath(path))
        return PreTrainedTokenizer(_ferry.read_tokenizer(p), p)


def _bytes(v: Any) -> Any:
    # transformers' max_memory values: "8GiB", "8GB", or bytes.
    return v if isinstance(v, int) else str(v).replace(" ", "")


class CausalLM:
    """A ferry model with transformers' generate(): token arrays in, token arrays out."""

    def __init__(self, model: Any):
        self.model = model  # the ferry.Model
        self.name_or_path = model.path

    @property
    def config(self) -> dict:
        return self.model.config

    @property
    def plan(self) -> Optional[dict]:
        return self.model.plan

    @property
    def device(self) -> str:
        return self.model.device

    def eval(self) -> "CausalLM":  # no training mode to leave
        return self

    def generate(self, input_ids: Any = None, max_length: Optional[int] = None,
                 max_new_tokens: Optional[int] = None, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 50,
                 seed: int = 0, attention_mask: Any = None, eos_token_id: Any = None,
                 pad_token_id: Optional[int] = None, **kwargs: Any) -> Any:
        """Like transformers: input_ids [batch, n] in, [batch, n + new] out (int64), the prompt
        then the new tokens, an end token included when generation stops at one (rows that
        stop early are padded with pad_token_id, else the end id). max_length counts the
        prompt, max_new_tokens does not (default: max_length 20, as transformers' is).
        do_sample=False is greedy; True samples with temperature, top_k and top_p."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise _ferry.InvalidArgument("generate() needs input_ids")
        torch_in = hasattr(input_ids, "cpu")
        a = np.asarray(input_ids.cpu() if torch_in else input_ids)
        if a.ndim == 1:
            a = a[None, :]
        mask = None
        if attention_mask is not None:
            mask = np.asarray(attention_mask.cpu() if hasattr(attention_mask, "cpu")
                              else attention_mask).reshape(a.shape)
        prompts = [row[mask[i] != 0] if mask is not None else row for i, row in enumerate(a)]
        n = a.shape[1]
        if max_new_tokens is None:
            max_new_tokens = (max_length if max_length is not None else 20) - n
        if max_new_tokens < 0:
            raise _ferry.InvalidArgument(
                f"max_length {max_length} is shorter than the prompt's {n} tokens; give "
                "max_new_tokens, or a max_length above the prompt's length")
        if do_sample:
            sampling = dict(temperature=float(temperature), top_p=float(top_p),
                            top_k=int(top_k or 0), seed=int(seed))
        else:
            sampling = dict(temperature=0.0, top_p=1.0, top_k=0, seed=int(seed))
        new = self.model.generate([p.astype(np.int32) for p in prompts],
                                  max_new_tokens=int(max_new_tokens),
                                  return_ids=True, **sampling)
        eos = self.model.eos_ids
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        width = n + max((len(t) for t in new), default=0)
        out = np.full((a.shape[0], width), pad, dtype=np.int64)
        out[:, :n] = a
        for i, t in enumerate(new):
            out[i, n:n + len(t)] = t
        if torch_in:
            import torch  # type: ignore

            return torch.from_numpy(out)
        return out

    __call__ = generate


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(path: Union[str, os.PathLike], max_memory: Optional[Dict[Any, Any]] = None,
                        device_map: Union[str, int, None] = "auto", max_ram: Any = None,
                        progress: Any = True, **kwargs: Any) -> CausalLM:
        """Opens the model with ferry.load. max_memory in transformers' form: {"cpu": "8GiB"}
        caps host RAM, a GPU key (0, "cuda:0") caps VRAM when a GPU is used; device_map
        "auto" uses a GPU when one answers, "cpu" never does, "cuda" (or 0) insists. Other keyword
        arguments of ferry.load (context, max_seqs, ...) pass through; transformers' loading
        options ferry has no use for (torch_dtype, low_cpu_mem_usage, ...) are ignored."""
        from . import _device, load

        ram = max_ram
        vram = None
        for key, value in (max_memory or {}).items():
            if key == "cpu":
                ram = _bytes(value) if ram is None else ram
            elif key != "disk":  # ferry streams from the checkpoint itself: no offload folder
                vram = _bytes(value)
        if device_map == "cpu":
            device = "cpu"
        elif device_map in ("cuda", 0, "cuda:0"):
            device = "cuda"
        else:  # "auto", None, or a per-layer map: the GPU when one answers
            device = _device("auto")
        if device == "cpu":
            vram = None
        passed = {k: v for k, v in kwargs.items()
                  if k in ("context", "max_seqs", "max_batch_rows", "max_logit_rows", "mmap")}
        return CausalLM(load(path, max_ram=ram, device=device, max_vram=vram, progress=progress,
                             **passed))
