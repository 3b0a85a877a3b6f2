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
    # float16 storage rounds each token to 2^-11 relative (half an ulp: 2^-12 · |t|, measured 1.9e-4)
    tol16 = 2**-11 * np.abs(want.tokens).max()
    np.testing.assert_allclose(got.tokens, want.tokens, rtol=0, atol=tol16)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(got.pooled, want.pooled)  # float32 stored as is: exact
    again = EncodingTable.build_or_load(encoder, texts, tmp_path / "t")
    assert isinstance(again.tokens, np.memmap)  # loaded, not rebuilt
    np.testing.assert_array_equal(again.encode(query).tokens, got.tokens)


def test_unknown_texts_fall_through_in_order(tmp_path):
    encoder = HashEncoder(dim=16, max_length=8)
    table = EncodingTable.build_or_load(encoder, ["known one"], tmp_path / "t")
    query = ["new text", "known one", "other new"]
    got, want = table.encode(query), encoder.encode(query)
    # stored rows: float16 tokens (as above); pooled vectors are kept in float32: exact (measured 0)
    tol16 = 2**-11 * np.abs(want.tokens).max()
    np.testing.assert_allclose(got.tokens, want.tokens, rtol=0, atol=tol16)
    np.testing.assert_array_equal(got.pooled, want.pooled)


def test_changed_texts_rebuild(tmp_path):
    encoder = HashEncoder(dim=16, max_length=8)
    EncodingTable.build_or_load(encoder, ["a", "b"], tmp_path / "t")
    table = EncodingTable.build_or_load(encoder, ["a", "c"], tmp_path / "t")
    assert set(table.index) == {"a", "c"} and not isinstance(table.tokens, np.memmap)
