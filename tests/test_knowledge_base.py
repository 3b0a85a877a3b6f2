"""Knowledge base: build, open/verify round trip, tamper detection, crash safety, rgb() maths.

Oracles: hand-made RGBA images whose composited values are computed by hand; block means vs
Pillow's box filter; fault injection on every file a KB is made of.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from reimagen.core import digests, paths, registry
from reimagen.kb.builder import build_from_source, build_knowledge_base
from reimagen.kb.folder_source import FolderSource
from reimagen.kb.image_pack import pack_rgba, resize_area
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.kb.records import CHECKED, MANIFEST, PACKED, Entity, KnowledgeBaseError

S = 8  # packed resolution of the hand-made KBs


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(seed: int, side: int = S) -> np.ndarray:
    """A deterministic RGBA image with a spread of alpha values, uint8 [side, side, 4]."""
    return np.random.default_rng(seed).integers(0, 256, (side, side, 4), dtype=np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder source: three RGBA PNGs (one in a subfolder) and one RGB JPEG, with captions."""
    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(_png(_pixels(0)))
    (folder / "b.png").write_bytes(_png(_pixels(1)))
    (folder / "sub" / "c.png").write_bytes(_png(_pixels(2)))
    Image.fromarray(_pixels(3)[..., :3], "RGB").save(folder / "d.jpg", quality=95)
    lines = [
        {"image": "a.png", "text": "a noisy square"},
        {"image": "b.png", "text": "another  noisy\tsquare"},
        {"image": "sub/c.png", "text": "a square in a subfolder"},
        {"image": "d.jpg", "text": "an opaque photo"},
    ]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


@pytest.fixture
def folder_kb(image_folder, tmp_path) -> KnowledgeBase:
    return build_from_source(
        FolderSource(folder=image_folder), tmp_path / "kb", resolution=S, progress=False
    )


def _items(n: int = 3, entity: str = ""):
    return [(f"test/{i}", f"caption {i}", "test", entity, _pixels(i)) for i in range(n)]


# ------------------------------------------------------------------ build and open
def test_folder_source_round_trip(folder_kb, image_folder):
    kb = KnowledgeBase.open(folder_kb.folder)  # verify=True
    assert len(kb) == 4 and kb.source_counts() == {"folder": 4}
    assert kb.keys == ["folder/a", "folder/b", "folder/sub/c", "folder/d"]
    assert kb.texts[1] == "another noisy square"  # whitespace normalised, one line
    assert kb.images.shape == (4, S, S, 4) and kb.images.dtype == np.uint8
    assert isinstance(kb.images, np.memmap)
    # Images already at the resolution are packed pixel for pixel; PNGs stored byte for byte.
    np.testing.assert_array_equal(kb.images[0], _pixels(0))
    np.testing.assert_array_equal(kb.images[2], _pixels(2))
    assert (kb.folder / kb.records[0].image).read_bytes() == (image_folder / "a.png").read_bytes()
    assert np.all(kb.images[3][..., 3] == 255)  # the JPEG has no alpha: opaque
    assert kb.entities == {} and kb.by_entity() == {}
    assert kb.meta["source"] == "folder" and kb.meta["build_seconds"] >= 0


def test_fingerprint_is_deterministic_and_tracks_captions(tmp_path):
    first = build_knowledge_base(_items(), tmp_path / "one", resolution=S, progress=False)
    again = build_knowledge_base(_items(), tmp_path / "two", resolution=S, progress=False)
    assert first.fingerprint == again.fingerprint
    changed = _items()
    changed[1] = ("test/1", "another caption", "test", "", _pixels(1))
    other = build_knowledge_base(changed, tmp_path / "three", resolution=S, progress=False)
    assert other.fingerprint != first.fingerprint


def test_rows_views_and_entities(tmp_path):
    entities = [Entity("red apple", "🍎", "1f34e"), Entity("pear", "🍐", "1f350")]
    items = [
        ("a/1f34e", "red apple, a emoji", "a", "red apple", _pixels(0)),
        ("b/1f34e", "red apple, b emoji", "b", "red apple", _pixels(1)),
        ("a/1f350", "pear, a emoji", "a", "pear", _pixels(2)),
        ("c/1f350", "pear, c emoji", "c", "pear", _pixels(3)),
    ]
    kb = build_knowledge_base(
        items, tmp_path / "kb", resolution=S, entities=entities, progress=False
    )
    kb = KnowledgeBase.open(kb.folder)
    assert kb.entities["pear"] == entities[1]
    assert kb.by_entity() == {"red apple": [0, 1], "pear": [2, 3]}
    assert kb.source_counts() == {"a": 2, "b": 1, "c": 1}
    np.testing.assert_array_equal(kb.rows(sources=["b", "c"]), [1, 3])
    np.testing.assert_array_equal(kb.rows(entities=["pear"]), [2, 3])
    np.testing.assert_array_equal(kb.rows(sources="a", entities=["pear"]), [2])
    assert kb.rows().dtype == np.int64 and len(kb.rows()) == 4
    assert kb.row("c/1f350") == 3
    with pytest.raises(KnowledgeBaseError, match=r"unknown source.*\['zzz'\].*'a', 'b', 'c'"):
        kb.rows(sources=["zzz"])
    with pytest.raises(KnowledgeBaseError, match="unknown entity 'plum'"):
        kb.rows(entities=["plum"])


def test_rebuild_replaces_and_keeps_foreign_files(tmp_path):
    kb = build_knowledge_base(_items(3), tmp_path / "kb", resolution=S, progress=False)
    index = kb.folder / "index" / "bm25.json"  # e.g. a retriever index saved beside the KB
    index.parent.mkdir()
    index.write_text("{}")
    rebuilt = build_knowledge_base(_items(2), tmp_path / "kb", resolution=S, progress=False)
    assert len(KnowledgeBase.open(rebuilt.folder)) == 2
    assert index.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]  # no staging or old folders


def test_failed_swap_restores_the_old_kb(tmp_path, monkeypatch):
    """Fault injection: the final rename of the new KB fails -> the old KB is back, intact.
    (The two-rename fallback, where the OS has no atomic exchange.)"""
    from reimagen.core import folder_swap

    old = build_knowledge_base(_items(3), tmp_path / "kb", resolution=S, progress=False)
    monkeypatch.setattr(folder_swap, "exchange", lambda a, b: False)
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".building-" in str(src) and Path(dst) == old.folder:
            raise OSError("disk on fire")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        build_knowledge_base(_items(2), tmp_path / "kb", resolution=S, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert KnowledgeBase.open(old.folder).fingerprint == old.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]  # no staging, no aside folder


def test_a_failed_exchange_leaves_the_old_kb(tmp_path, monkeypatch):
    from reimagen.core import folder_swap

    old = build_knowledge_base(_items(3), tmp_path / "kb", resolution=S, progress=False)

    def failing(a, b):
        raise OSError("disk on fire")

    monkeypatch.setattr(folder_swap, "exchange", failing)
    with pytest.raises(OSError, match="disk on fire"):
        build_knowledge_base(_items(2), tmp_path / "kb", resolution=S, progress=False)
    assert KnowledgeBase.open(old.folder).fingerprint == old.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]


def test_refuses_to_replace_a_folder_that_is_not_a_kb(tmp_path):
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(KnowledgeBaseError, match="refusing to replace .*documents"):
        build_knowledge_base(_items(), precious, resolution=S, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"


# ------------------------------------------------------------------ tampering
def _flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tamper_flip_image_byte(folder_kb):
    image = folder_kb.folder / folder_kb.records[1].image
    _flip_byte(image)
    with pytest.raises(KnowledgeBaseError, match=r"images/folder/b\.png: sha256 .* does not match"):
        KnowledgeBase.open(folder_kb.folder)
    KnowledgeBase.open(folder_kb.folder, verify=False)  # the cheap open does not hash files


def test_tamper_delete_image(folder_kb):
    (folder_kb.folder / folder_kb.records[2].image).unlink()
    with pytest.raises(KnowledgeBaseError, match=r"images/folder/sub_c\.png: missing"):
        KnowledgeBase.open(folder_kb.folder)


def test_tamper_extra_image(folder_kb):
    (folder_kb.folder / "images" / "folder" / "intruder.png").write_bytes(_png(_pixels(9)))
    with pytest.raises(KnowledgeBaseError, match=r"intruder\.png: extra file"):
        KnowledgeBase.open(folder_kb.folder)


def test_tamper_edit_manifest(folder_kb):
    manifest = folder_kb.folder / MANIFEST
    manifest.write_text(manifest.read_text().replace("a noisy square", "a quiet square"))
    # Even the cheap open checks SHA256SUMS, and behind it the fingerprint (a stale index must
    # never match): re-recording the checksums does not make the edit pass.
    for verify in (True, False):
        with pytest.raises(KnowledgeBaseError, match=r"manifest\.jsonl: sha256 .* SHA256SUMS"):
            KnowledgeBase.open(folder_kb.folder, verify=verify)
    digests.write_sums(folder_kb.folder, CHECKED)
    with pytest.raises(KnowledgeBaseError, match=r"manifest\.jsonl: sha256 .* fingerprint"):
        KnowledgeBase.open(folder_kb.folder, verify=False)


def test_tamper_packed_array(folder_kb):
    _flip_byte(folder_kb.folder / PACKED)
    for verify in (True, False):  # the packed array is hashed on every open
        with pytest.raises(KnowledgeBaseError, match=r"images\.npy: sha256 .* SHA256SUMS"):
            KnowledgeBase.open(folder_kb.folder, verify=verify)
    np.save(folder_kb.folder / PACKED, np.zeros((4, S, S, 3), np.uint8))
    digests.write_sums(folder_kb.folder, CHECKED)  # checksums re-recorded: the shape still fails
    with pytest.raises(KnowledgeBaseError, match=r"images\.npy: shape \(4, 8, 8, 3\)"):
        KnowledgeBase.open(folder_kb.folder, verify=False)


def test_tamper_missing_kb_json(folder_kb):
    (folder_kb.folder / "kb.json").unlink()
    with pytest.raises(KnowledgeBaseError, match=r"kb\.json: missing"):
        KnowledgeBase.open(folder_kb.folder)


# ------------------------------------------------------------------ bad input, crash safety
def test_failed_build_leaves_nothing(image_folder, tmp_path):
    # a PNG cut after its header: the source's format check passes, the decode fails in the build
    blob = (image_folder / "b.png").read_bytes()
    (image_folder / "b.png").write_bytes(blob[: blob.index(b"IDAT") + 12])
    source = FolderSource(folder=image_folder)
    out = tmp_path / "out" / "kb"
    with pytest.raises(KnowledgeBaseError, match=r"b\.png: unreadable image"):
        build_from_source(source, out, resolution=S, progress=False)
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_rebuild_keeps_the_old_kb(folder_kb, image_folder):
    before = folder_kb.fingerprint
    blob = (image_folder / "a.png").read_bytes()
    (image_folder / "a.png").write_bytes(blob[: blob.index(b"IDAT") + 12])  # cut in its pixels
    with pytest.raises(KnowledgeBaseError, match=r"a\.png: unreadable image"):
        build_from_source(
            FolderSource(folder=image_folder), folder_kb.folder, resolution=S, progress=False
        )
    assert KnowledgeBase.open(folder_kb.folder).fingerprint == before
    assert sorted(p.name for p in folder_kb.folder.parent.iterdir()) == ["kb", "pictures"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: (f / "captions.jsonl").unlink(), r"captions\.jsonl: missing"),
        (lambda f: (f / "sub" / "c.png").unlink(), r"sub/c\.png: image file not found"),
        (
            lambda f: (f / "captions.jsonl").write_text('{"image": "a.png", "text": "  "}\n'),
            r"line 1: empty caption for image 'a\.png'",
        ),
        (lambda f: (f / "captions.jsonl").write_text('{"image": "a.png"\n'), r"line 1: not JSON"),
        (
            lambda f: (f / "captions.jsonl").write_text('{"image": "../x.png", "text": "t"}\n'),
            r"must be a path inside",
        ),
    ],
)
def test_folder_source_bad_input(image_folder, edit, message):
    edit(image_folder)
    with pytest.raises(KnowledgeBaseError, match=message):
        FolderSource(folder=image_folder)


def test_folder_source_missing_folder(tmp_path):
    with pytest.raises(KnowledgeBaseError, match=r"folder= .*nowhere: not found"):
        FolderSource(folder=tmp_path / "nowhere")


@pytest.mark.parametrize(
    "item, message",
    [
        (("k", "", "test", "", _pixels(0)), "empty caption"),
        (("k", "text", "Bad Source", "", _pixels(0)), "source must be a lowercase name"),
        (("k", "text", "test", "ghost", _pixels(0)), "names entity 'ghost'"),
        (("k", "text", "test", "", np.zeros((4, 4), np.float32)), "must be uint8"),
        (("k", "text", "test"), r"expected \(key, text, source, entity, image\)"),
    ],
)
def test_build_rejects_bad_items(tmp_path, item, message):
    with pytest.raises(KnowledgeBaseError, match=message):
        build_knowledge_base([item], tmp_path / "kb", resolution=S, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_build_rejects_duplicate_keys_and_bad_resolution(tmp_path):
    items = _items(2) + [("test/0", "again", "test", "", _pixels(5))]
    with pytest.raises(KnowledgeBaseError, match="duplicate key 'test/0'"):
        build_knowledge_base(items, tmp_path / "kb", resolution=S, progress=False)
    with pytest.raises(KnowledgeBaseError, match=r"resolution must be in \[4, 1024\]"):
        build_knowledge_base(_items(), tmp_path / "kb", resolution=2, progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ rgb() and resizing
U = 2**-24  # float32 unit roundoff
# rgb() of one pixel against the float64 formula: c/255, a/255, c·a and 1 − a in float32 (4
# roundings of values <= 1), the backdrop term and the sum in float64; × 2 doubles that, and the
# float32 result rounds once more: 2·4u + u = 9u = 5.4e-7 (the old atol was 1e-6).
RGB_TOL = 9 * U


def test_rgb_composites_a_hand_made_image(tmp_path):
    # One 4x4 RGBA image: opaque red, half-transparent green (a=128), transparent blue, and
    # a=51 white. Over the background (0, 0, 255): out = a*c + (1-a)*bg, then x/127.5 - 1.
    image = np.zeros((4, 4, 4), np.uint8)
    image[:2, :2] = (255, 0, 0, 255)
    image[:2, 2:] = (0, 255, 0, 128)
    image[2:, :2] = (0, 0, 255, 0)
    image[2:, 2:] = (255, 255, 255, 51)
    kb = build_knowledge_base(
        [("t/x", "a test", "t", "", image)], tmp_path / "kb", resolution=4, progress=False
    )
    out = kb.rgb([0], background=(0, 0, 255))
    assert out.shape == (1, 4, 4, 3) and out.dtype == np.float32
    a = 128 / 255
    by_hand = {
        (0, 0): (255, 0, 0),
        (0, 3): (0, 255 * a, 255 * (1 - a)),
        (3, 0): (0, 0, 255),
        (3, 3): (51, 51, 255),
    }
    for (y, x), colour in by_hand.items():  # measured 5.9e-8
        want = np.array(colour) / 127.5 - 1
        np.testing.assert_allclose(out[0, y, x], want, rtol=0, atol=RGB_TOL)
    # Area resize to 2x2: each output pixel is the mean of one 2x2 quadrant.
    small = kb.rgb([0, 0], size=2, background=[(0, 0, 255), (255, 255, 255)])
    assert small.shape == (2, 2, 2, 3)
    # The float64 mean of 4 equal values is within 2 roundings (2^-52) of each, so the float32
    # results differ by at most one ulp below 1: 2^-24 (measured 0; it was atol=1e-6).
    np.testing.assert_allclose(small[0, 0, 1], out[0, 0, 3], rtol=0, atol=U + 2**-50)
    # Exact: alpha 0 gives 0·c + 1·(255/255) = 1 everywhere, a mean of ones, 2·1 − 1 (was 1e-6).
    np.testing.assert_array_equal(small[1, 1, 0], [1, 1, 1])  # transparent -> white bg
    with pytest.raises(KnowledgeBaseError, match="background must be an RGB triple"):
        kb.rgb([0], background=(0, 0, 300))
    with pytest.raises(KnowledgeBaseError, match=r"row 5 out of range: this KB has rows 0\.\.0"):
        kb.rgb([5])


@settings(max_examples=25, deadline=None)
@given(
    images=hnp.arrays(np.uint8, (3, 8, 8, 4)),
    background=st.tuples(*[st.integers(0, 255)] * 3),
)
def test_rgb_properties(tmp_path_factory, images, background):
    """Range [-1, 1]; opaque pixels ignore the background; transparent pixels are it."""
    folder = tmp_path_factory.mktemp("kb") / "kb"
    kb = build_knowledge_base(
        [(f"t/{i}", "x", "t", "", images[i]) for i in range(3)],
        folder,
        resolution=8,
        progress=False,
    )
    out = kb.rgb([2, 0, 1], background=background)
    assert out.shape == (3, 8, 8, 3) and np.all(out >= -1) and np.all(out <= 1)
    alpha = images[[2, 0, 1], ..., 3]
    # RGB_TOL (the one-pixel compositing bound); measured 2.0e-8 and 4.4e-8.
    np.testing.assert_allclose(
        out[alpha == 255],
        images[[2, 0, 1]][alpha == 255][:, :3] / 127.5 - 1,
        rtol=0,
        atol=RGB_TOL,
    )
    np.testing.assert_allclose(
        out[alpha == 0],
        np.broadcast_to(np.array(background) / 127.5 - 1, out[alpha == 0].shape),
        rtol=0,
        atol=RGB_TOL,
    )


@pytest.mark.parametrize("size", [8, 4, 3])
def test_rgba_composited_by_hand_equals_rgb(tmp_path, size):
    """rgba() resizes in premultiplied space; compositing it by hand must give rgb() (both
    resizes are linear), for integer (8->4) and non-integer (8->3) factors."""
    kb = build_knowledge_base(_items(2), tmp_path / "kb", resolution=S, progress=False)
    rgba = kb.rgba([1, 0], size=size)
    assert rgba.shape == (2, size, size, 4) and rgba.min() >= 0 and rgba.max() <= 1
    background = np.array([10, 200, 30]) / 255.0
    by_hand = rgba[..., :3] * rgba[..., 3:] + background * (1 - rgba[..., 3:])
    rgb = kb.rgb([1, 0], size=size, background=(10, 200, 30))
    # Two float32 pipelines over values in [0, 1]: rgb() composites (~5 roundings) then resizes
    # (a cast and Pillow's two float32 passes at size 3: 3 more); rgba() premultiplies and
    # resizes (~5), divides by alpha and this test multiplies back (2), and the backdrop term
    # carries alpha's error (~4): <= 19u apart on [0, 1], 38u after × 2, + 1 final rounding:
    # 39u = 2.3e-6 (measured 1.9e-7; it was atol=1e-5).
    np.testing.assert_allclose(by_hand * 2 - 1, rgb, rtol=0, atol=39 * U)


def test_transparent_colour_does_not_bleed(tmp_path):
    """Half the pixels transparent *red*, half opaque blue: shrunk to 1 px it is pure blue."""
    image = np.zeros((4, 4, 4), np.uint8)
    image[:, :2] = (255, 0, 0, 0)
    image[:, 2:] = (0, 0, 255, 255)
    kb = build_knowledge_base(
        [("t/x", "x", "t", "", image)], tmp_path / "kb", resolution=4, progress=False
    )
    # Exact: premultiplied (0,0,0,0) and (0,0,1,1) in equal halves average to (0,0,.5,.5) (sums
    # of 0s and 1s, a division by 16), and 0.5/0.5 = 1 (measured 0; it was atol=1e-6).
    np.testing.assert_array_equal(kb.rgba([0], size=1)[0, 0, 0], [0, 0, 1, 0.5])


def test_pickle_reopens_the_memory_map(folder_kb):
    import pickle

    blob = pickle.dumps(folder_kb)
    assert len(blob) < 2000  # the folder and fingerprint, not the pixels
    again = pickle.loads(blob)
    assert isinstance(again.images, np.memmap) and again.fingerprint == folder_kb.fingerprint


def test_resize_area_block_mean_matches_pillow_box():
    images = np.random.default_rng(0).random((2, 12, 12, 3)).astype(np.float32)
    fast = resize_area(images, 4)  # exact block means (12 = 3 * 4)
    planes = [
        [
            np.asarray(
                Image.fromarray(images[i, :, :, c], "F").resize((4, 4), Image.Resampling.BOX)
            )
            for c in range(3)
        ]
        for i in range(2)
    ]
    # numpy: a float32 sum of 9 values in [0, 1) (<= 8u of their sum) over 9 (u): <= 9u;
    # Pillow: two separable passes, float64 sums, each stored as float32 (2u): 11u = 6.6e-7
    # (measured 6.0e-8; it was atol=1e-6).
    pillow = np.stack([np.stack(p, -1) for p in planes])
    np.testing.assert_allclose(fast, pillow, rtol=0, atol=11 * U * np.abs(images).max())
    odd = resize_area(images, 5)  # not a divisor: Pillow's box filter
    assert odd.shape == (2, 5, 5, 3)
    # A statistical bound: Pillow's box kernel samples pixel centres, so the 5 outputs per axis
    # average 2, 3, 2, 3, 2 inputs and a pixel's weight is 1.2 or 0.8 of 1/12 per axis. The
    # mean of the output is then a weighted mean whose gap to the plain mean is
    # Σ (w − 1/144)(x − x̄): for x ~ U[0, 1) (variance 1/12) over 6 planes, its standard
    # deviation is √((Σ w² − 1/144) / 12 / 6) = √((0.08667² − 1/144) / 72) = 2.8e-3 (a
    # simulation over 300 seeds: 2.8e-3). 5σ: 0.014 (it was 0.02; measured −4.7e-3 at seed 0).
    np.testing.assert_allclose(odd.mean(), images.mean(), rtol=0, atol=0.014)


def test_pack_pads_non_square_images_without_cropping():
    wide = Image.fromarray(np.full((4, 8, 4), 255, np.uint8), "RGBA")  # 8 wide, 4 high, white
    packed = pack_rgba(wide, 8)
    assert packed.shape == (8, 8, 4)
    np.testing.assert_array_equal(packed[2:6, :, 3], 255)  # the image, centred
    np.testing.assert_array_equal(packed[:2, :, 3], 0)  # transparent padding above and below
    np.testing.assert_array_equal(packed[6:, :, 3], 0)


# ------------------------------------------------------------------ paths, registry, CLI
def test_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("REIMAGEN_HOME", str(tmp_path / "home"))
    assert paths.home() == tmp_path / "home"
    assert paths.default_kb_dir() == tmp_path / "home" / "kb" / "emoji"
    monkeypatch.delenv("REIMAGEN_HOME")
    root = Path(__file__).resolve().parents[1]
    assert paths.home() == root / ".cache"  # tests run from the source checkout
    with pytest.raises(ValueError, match="plain folder name"):
        paths.default_kb_dir("../elsewhere")


def test_sources_are_registered():
    assert {"emoji", "folder"} <= set(registry.names("source"))
    source = registry.get("source", "folder")
    with pytest.raises(KnowledgeBaseError, match="folder= is required"):
        source()


def test_cli_build_and_info(image_folder, tmp_path, capsys):
    from reimagen.cli.main import main

    out = tmp_path / "cli-kb"
    argv = [
        "kb",
        "build",
        "--source",
        "folder",
        "--folder",
        str(image_folder),
        "--out",
        str(out),
        "--resolution",
        "8",
        "--quiet",
    ]
    assert main(argv) == 0
    assert "built 4 records (folder 4) at 8px" in capsys.readouterr().out
    assert main(["kb", "info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 4 and summary["counts"] == {"folder": 4}
    assert summary["fingerprint"] == KnowledgeBase.open(out).fingerprint
    assert summary["disk_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["kb", "build", "--source", "folder"], "--folder is required"),
        (["kb", "build", "--source", "nope"], "unknown source 'nope'; known source names: emoji"),
        (["kb", "build", "--resolution", "3"], r"--resolution must be in \[4, 1024\]"),
        (
            ["kb", "build", "--source", "folder", "--folder", "/nonexistent/pics"],
            "folder= /nonexistent/pics: not found",
        ),
        (["kb", "info", "/nonexistent/kb"], "knowledge base folder not found"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    from reimagen.cli.main import main

    monkeypatch.setenv("REIMAGEN_HOME", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reimagen: error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err)
    assert not (tmp_path / "kb").exists()  # nothing written


def test_open_missing_folder_message(tmp_path):
    with pytest.raises(KnowledgeBaseError, match="knowledge base folder not found"):
        KnowledgeBase.open(tmp_path / os.sep.join(["no", "such"]))
