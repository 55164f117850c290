"""Prompt sets: padding, selection and bad input."""

import pytest
import torch

from depthcurse.model import DepthcurseLM
from depthcurse.prompts import Prompt, PromptSet


def test_batches_right_pad_and_match_unbatched(small_config):
    model = DepthcurseLM(small_config).eval()
    prompts = PromptSet("p", [Prompt("a", [5, 6, 7, 8, 9]), Prompt("b", [3, 4]), Prompt("c", [1, 2, 3])], pad_id=0)
    chunk, ids, mask = next(prompts.batches(3))
    assert ids.shape == (3, 5)
    assert mask.tolist() == [[1] * 5, [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for row, prompt in enumerate(chunk):
            alone = model(torch.tensor([prompt.token_ids]))
            n = len(prompt.token_ids)
            torch.testing.assert_close(batched[row, :n], alone[0], atol=1e-5, rtol=0)


def test_select_by_label():
    prompts = PromptSet("p", [Prompt("a", [1], {"level": 0}), Prompt("b", [2], {"level": 1})])
    chosen = prompts.select(level=1)
    assert [p.name for p in chosen.prompts] == ["b"]
    assert chosen.name == "p[level=1]"


def test_empty_inputs_rejected():
    with pytest.raises(ValueError, match="prompt set 'x' is empty"):
        PromptSet("x", [])
    with pytest.raises(ValueError, match="prompt 'a' in set 'x' has no tokens"):
        PromptSet("x", [Prompt("a", [])])
