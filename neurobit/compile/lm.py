"""Compile a language-model checkpoint, and load a compiled one for generation.

``compile_checkpoint(checkpoint, out, packing)``: the trained BrainLM or GPT of a training run
(or ``ckpt_*`` directory) -> one compiled file (:mod:`neurobit.compile.artifact`) holding the
packed ternary weights, the float parameters, the config and the tokenizer.
``load_compiled_lm(path) -> (model, tokenizer)``: a :class:`CompiledBrainLM` (or the frozen GPT)
ready for :func:`neurobit.train.lm_step.lm_step_fn` / ``neurobit generate``.
"""
from __future__ import annotations

from pathlib import Path

from neurobit.compile.artifact import read_compiled, write_compiled
from neurobit.compile.brain_lm import CompiledBrainLM, check_compilable
from neurobit.errors import BackendError, NeurobitError
from neurobit.models.brain_lm import build_model
from neurobit.models.lm_config import BrainLMConfig, GPTConfig


def _build(kind: str, config_json: str):
    cls = {"brain": BrainLMConfig, "gpt": GPTConfig}.get(kind)
    if cls is None:
        raise NeurobitError(f"kind: unknown compiled model kind {kind!r}")
    return build_model(cls.model_validate_json(config_json))


def _tokenizer_json(checkpoint: Path) -> str | None:
    for p in (checkpoint / "tokenizer.json", checkpoint.parent / "tokenizer.json"):
        if p.is_file():
            return p.read_text(encoding="utf-8")
    return None


def compile_checkpoint(checkpoint: str | Path, out: str | Path, packing: str = "2bit") -> Path:
    """Write the compiled file of ``checkpoint`` to ``out``; returns ``out``."""
    from neurobit.train.checkpoint import load_model
    checkpoint = Path(checkpoint)
    model, cfg = load_model(checkpoint)
    if cfg.model.kind == "brain":
        check_compilable(model)
    return write_compiled(out, model, cfg.model.kind, cfg.model.model_dump_json(),
                          _tokenizer_json(checkpoint), packing, source=str(checkpoint))


BACKENDS = ("cpu", "reference")


def load_compiled_lm(path: str | Path, backend: str = "cpu"):
    """``(model, tokenizer or None)`` of a compiled language model.

    ``backend``: ``cpu`` (BrainLM: the fused numba generation kernel) or ``reference`` (the
    frozen torch modules, the oracle). ``cuda`` (Triton kernels) is not built: no GPU was
    available to develop and test it; asking for it raises :class:`BackendError`.
    """
    from neurobit.train.tokenizer import tokenizer_from_json
    if backend == "cuda":
        raise BackendError("backend: cuda (Triton) kernels are not implemented in this build; "
                           "use cpu or reference")
    if backend not in BACKENDS:
        raise BackendError(f"backend: unknown {backend!r}; choose one of {list(BACKENDS)}")
    cf = read_compiled(path, _build)
    brain = cf.meta["kind"] == "brain" and backend == "cpu"
    model = CompiledBrainLM(cf.model) if brain else cf.model
    tok = tokenizer_from_json(cf.tokenizer_json) if cf.tokenizer_json else None
    return model, tok
