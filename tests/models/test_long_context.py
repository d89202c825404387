"""Past the training length: an ALiBi model runs at 2x and 4x max_seq_len, forward and generate(); learned
positions refuse in one line.

ALiBi's bias is computed for the actual distances (nothing is sized by max_seq_len), so a longer
input gives the same logits on its first max_seq_len positions (attention is causal) and generate()
with the KV cache gives the logits of a full forward pass at every length up to 4x.
"""

from __future__ import annotations

import pytest
import torch
from mpt_helpers import make_ids, tiny_model

SEQ = 8  # max_seq_len of these models

CASES = {
    "alibi": {},
    "alibi_gqa": {"attn_config": {"attn_type": "grouped_query_attention", "kv_n_heads": 2}},
    "nope": {"attn_config": {"alibi": False}},
}


@pytest.mark.parametrize("case, factor", [("alibi", 2), ("alibi", 4), ("alibi_gqa", 4), ("nope", 4)])
def test_forward_and_generate_past_max_seq_len(case, factor):
    model = tiny_model(max_seq_len=SEQ, **CASES[case])
    ids = make_ids(batch=1, seq=SEQ * factor)
    with torch.no_grad():
        full = model(ids).logits
        short = model(ids[:, :SEQ]).logits
    assert full.shape[1] == SEQ * factor and torch.isfinite(full).all()
    torch.testing.assert_close(full[:, :SEQ], short, atol=1e-5, rtol=1e-5)

    prompt = SEQ * factor // 2
    out = model.generate(ids[:, :prompt], max_new_tokens=SEQ * factor - prompt, min_new_tokens=SEQ * factor - prompt,
                         do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape[1] == SEQ * factor
    with torch.no_grad():
        recomputed = model(out.sequences).logits[:, prompt - 1:-1]
    torch.testing.assert_close(torch.stack(out.logits, dim=1), recomputed, atol=1e-4, rtol=1e-4)


def test_learned_positions_refuse_past_max_seq_len_in_one_line():
    model = tiny_model(max_seq_len=SEQ, learned_pos_emb=True, attn_config={"alibi": False})
    with pytest.raises(ValueError) as err:
        model(make_ids(batch=1, seq=2 * SEQ))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"sequence length {2 * SEQ} exceeds max_seq_len {SEQ} of the learned position "
                              f"embeddings, which have no positions past it; shorten the input")
