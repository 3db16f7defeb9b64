"""The one batch type: columns added by workers stay aligned with their tokens through every split and join."""
import pytest
import torch

from stepentropy_rl.batch import Batch, shard


def _batch():
    b = Batch.from_pairs([[1, 2], [3], [4, 5, 6]], [[7, 8, 9], [10], []], pad_id=0, answer=["a", "b", "c"])
    return b.union({"advantages": b.response_column([[1.0, 2.0, 3.0], [4.0], []]), "total": torch.tensor([1., 2., 3.])})


def test_layout_and_views():
    b = _batch()
    assert b.input_ids.tolist() == [[1, 2, 7, 8, 9], [3, 10, 0, 0, 0], [4, 5, 6, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]
    assert b.response_lens.tolist() == [3, 1, 0] and b.last_response_index().tolist() == [4, 1, 2]
    assert [b.prompt_ids(i) for i in range(3)] == [[1, 2], [3], [4, 5, 6]]
    assert [v.tolist() for v in b.per_response("advantages")] == [[1.0, 2.0, 3.0], [4.0], []]


def test_union_refuses_a_clash_or_a_misaligned_column():
    b = _batch()
    with pytest.raises(ValueError, match="already"):
        b.union({"total": torch.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        b.union({"old_logprobs": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="2 values for 3 samples"):
        b.union(meta={"text": ["x", "y"]})
    with pytest.raises(ValueError, match="row 1: 2 values for 1 response tokens"):
        b.response_column([[1.0, 2.0, 3.0], [4.0, 5.0], []])
    with pytest.raises(ValueError, match="at least one token"):
        Batch.from_pairs([[]], [[1]], pad_id=0)


def test_select_chunk_pad_and_concat_keep_columns_with_their_tokens():
    b = _batch()
    picked = b.select([2, 0])
    assert picked.meta["answer"] == ["c", "a"]
    assert picked.columns["total"].tolist() == [3.0, 1.0]
    assert [v.tolist() for v in picked.per_response("advantages")] == [[], [1.0, 2.0, 3.0]]
    first, second = b.chunk(2)
    assert first.width == 5 and second.width == 3  # a micro-batch is trimmed to its own width
    assert [v.tolist() for v in second.per_response("advantages")] == [[]]
    padded = b.select([1]).padded_rows(2)
    assert len(padded) == 3 and padded.loss_mask[1:].sum() == 0 and padded.meta["answer"] == ["b", "b", "b"]
    joined = Batch.concat(b.chunk(2))
    for name in ("input_ids", "attention_mask", "loss_mask"):
        assert torch.equal(getattr(joined, name), getattr(b, name))
    assert torch.equal(joined.columns["advantages"], b.columns["advantages"]) and joined.meta == b.meta


def test_shard_is_even_and_contiguous():
    assert shard(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert [len(r) for r in shard(2, 4)] == [1, 1, 0, 0]
