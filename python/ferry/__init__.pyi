# Type stubs of the ferry package (python/ferry/__init__.py), for completion in notebooks.
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union, overload

import numpy as np

from ._ferry import CudaError as CudaError
from ._ferry import Error as Error
from ._ferry import FormatError as FormatError
from ._ferry import InvalidArgument as InvalidArgument
from ._ferry import IoError as IoError
from ._ferry import PlanError as PlanError
from ._transformers import AutoModelForCausalLM as AutoModelForCausalLM
from ._transformers import AutoTokenizer as AutoTokenizer

__version__: str

Size = Union[str, int, None]
Ids = Union[Sequence[int], np.ndarray]
Prompt = Union[str, Ids]
PathLike = Union[str, os.PathLike]

class Token:
    id: Optional[int]
    text: str
    index: int
    def __init__(self, id: Optional[int], text: str, index: int = ...) -> None: ...

class Tokenizer:
    def encode(self, text: str, add_special: bool = ...,
               return_tensors: Optional[str] = ...) -> Union[List[int], np.ndarray]: ...
    def decode(self, ids: Ids, skip_special_tokens: bool = ...) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_token_id(self) -> Optional[int]: ...
    @property
    def eos_token_id(self) -> Optional[int]: ...
    def token_id(self, token: str) -> Optional[int]: ...

class Model:
    path: str
    tokenizer: Optional[Tokenizer]
    @property
    def plan(self) -> Optional[Dict[str, Any]]: ...
    @property
    def config(self) -> Dict[str, Any]: ...
    @property
    def device(self) -> str: ...
    @property
    def context(self) -> int: ...
    @property
    def max_seqs(self) -> int: ...
    @property
    def eos_ids(self) -> List[int]: ...
    @property
    def draft(self) -> Optional[str]: ...
    def draft_stats(self) -> Dict[str, int]: ...
    def describe(self) -> str: ...
    @overload
    def generate(self, prompt: Prompt, max_new_tokens: int = ..., temperature: float = ...,
                 top_p: float = ..., top_k: int = ..., seed: int = ..., ignore_eos: bool = ...,
                 stream: bool = ..., add_special: bool = ..., return_ids: bool = ...) -> Any: ...
    @overload
    def generate(self, prompt: Sequence[Prompt], max_new_tokens: int = ...,
                 temperature: float = ..., top_p: float = ..., top_k: int = ..., seed: int = ...,
                 ignore_eos: bool = ..., stream: bool = ..., add_special: bool = ...,
                 return_ids: bool = ...) -> Any: ...
    def logits(self, ids: Ids, all_positions: bool = ...) -> np.ndarray: ...
    def memory(self) -> Dict[str, Optional[int]]: ...

def load(path: PathLike, max_ram: Size = ..., device: Optional[str] = ..., max_vram: Size = ...,
         context: Optional[int] = ..., max_seqs: int = ..., max_batch_rows: Optional[int] = ...,
         max_logit_rows: Optional[int] = ..., mmap: bool = ...,
         progress: Union[bool, Callable[[int, int], Any]] = ..., draft: Optional[str] = ...,
         draft_k: int = ..., kv_memory: str = ...) -> Model: ...
def plan(path: PathLike, max_ram: Size = ..., profile: Optional[str] = ...,
         device: Optional[str] = ..., max_vram: Size = ..., context: Optional[int] = ...,
         batch: int = ..., measure: bool = ..., kv_memory: str = ...) -> Dict[str, Any]: ...
