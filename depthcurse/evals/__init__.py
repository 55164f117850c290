"""Evaluation: held-out NLL, generated reasoning primitives and the cooldown data mix."""

from depthcurse.evals.context import ContextFit, context_length, fit_to_context
from depthcurse.evals.cooldown import MixtureSampler, encode_documents, primitive_tokens
from depthcurse.evals.harness import (
    DEFAULT_SHOTS,
    TokenizerError,
    check_tokenizer,
    evaluate,
    instances_to_prompt_set,
    score_prompt_set,
    summarize,
    wilson_interval,
)
from depthcurse.evals.nll import NLLResult, heldout_nll, model_logits, sequence_nll
from depthcurse.evals.primitives import (
    TASKS,
    Instance,
    PrimitiveError,
    answer_visibility_errors,
    generate,
    generate_all,
    training_documents,
)

__all__ = [
    "DEFAULT_SHOTS",
    "TASKS",
    "ContextFit",
    "Instance",
    "MixtureSampler",
    "NLLResult",
    "PrimitiveError",
    "TokenizerError",
    "answer_visibility_errors",
    "check_tokenizer",
    "context_length",
    "encode_documents",
    "evaluate",
    "fit_to_context",
    "generate",
    "generate_all",
    "heldout_nll",
    "instances_to_prompt_set",
    "model_logits",
    "primitive_tokens",
    "score_prompt_set",
    "sequence_nll",
    "summarize",
    "training_documents",
    "wilson_interval",
]
