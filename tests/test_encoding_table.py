import numpy as np

from reimagen.encoders.hash import HashEncoder
from reimagen.encoders.table import EncodingTable


def test_table_matches_encoder_and_reloads(tmp_path):
    encoder = HashEncoder(dim=16, max_length=8)
    texts = ["a red apple", "a blue robot", "a red apple", "an anchor on pink"]
    table = EncodingTable.build_or_load(encoder, texts, tmp_path / "t", batch=2)
    assert len(table) == 3  # distinct texts
    query = ["an anchor on pink", "a red apple"]
    got, want = table.encode(query), encoder.encode(query)
    np.testing.assert_allclose(got.tokens, want.tokens, atol=2e-3)  # float16 storage
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.pooled, want.pooled, rtol=0, atol=0)
    again = EncodingTable.build_or_load(encoder, texts, tmp_path / "t")
    assert isinstance(again.tokens, np.memmap)  # loaded, not rebuilt
    np.testing.assert_array_equal(again.encode(query).tokens, got.tokens)


def test_unknown_texts_fall_through_in_order(tmp_path):
    encoder = HashEncoder(dim=16, max_length=8)
    table = EncodingTable.build_or_load(encoder, ["known one"], tmp_path / "t")
    query = ["new text", "known one", "other new"]
    got, want = table.encode(query), encoder.encode(query)
    np.testing.assert_allclose(got.tokens, want.tokens, atol=2e-3)
    np.testing.assert_allclose(got.pooled, want.pooled, atol=1e-7)


def test_changed_texts_rebuild(tmp_path):
    encoder = HashEncoder(dim=16, max_length=8)
    EncodingTable.build_or_load(encoder, ["a", "b"], tmp_path / "t")
    table = EncodingTable.build_or_load(encoder, ["a", "c"], tmp_path / "t")
    assert set(table.index) == {"a", "c"} and not isinstance(table.tokens, np.memmap)
