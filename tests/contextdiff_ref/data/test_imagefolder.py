"""Captioned image folders (metadata.jsonl): reading, resizing, the resumable stream, and what is refused or skipped."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from contextdiff_ref.data.imagefolder import METADATA, DataError, main, open_image_folder, write_shapes_folder
from contextdiff_ref.data.shapes import training_batch
from runtime.errors import InvalidArgumentError


def test_the_shapes_folder_holds_the_shapes_stream(tmp_path):
    write_shapes_folder(tmp_path / "shapes", 6, seed=2)
    folder = open_image_folder(tmp_path / "shapes", 32)
    images, captions = folder.batch(np.arange(6))
    expected, expected_captions = training_batch(2, 0, 6)
    assert captions == expected_captions and images.dtype == np.float32 and images.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(images, expected, atol=1 / 255)  # 8-bit PNG
    assert not list(tmp_path.glob(".shapes.tmp-*"))


def test_images_are_resized_and_centre_cropped(tmp_path):
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # a white band in the middle 40 columns: the centre crop of a 2:1 image
    Image.fromarray(img).save(tmp_path / "wide.png")
    (tmp_path / METADATA).write_text(json.dumps({"file_name": "wide.png", "text": "white"}) + "\n")
    x = open_image_folder(tmp_path, 16).image(0)
    assert x.shape == (3, 16, 16) and x[:, :, 1:-1].min() > 0.95 and x.min() > 0.5  # white after the crop (bicubic edge ringing aside)


def test_positions_are_per_epoch_permutations_and_depend_only_on_the_position(tmp_path):
    write_shapes_folder(tmp_path / "s", 5)
    folder = open_image_folder(tmp_path / "s", 32)
    stream = folder.positions(seed=1, start=0, count=15)
    for epoch in range(3):
        assert sorted(stream[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert not np.array_equal(stream[:5], stream[5:10])
    np.testing.assert_array_equal(folder.positions(seed=1, start=7, count=4), stream[7:11])  # a resumed run continues
    assert not np.array_equal(folder.positions(seed=2, start=0, count=15), stream)


def test_bad_folders_are_named(tmp_path, caplog):
    with pytest.raises(DataError, match="not found"):
        open_image_folder(tmp_path / "missing", 32)
    write_shapes_folder(tmp_path / "s", 4)
    with pytest.raises(InvalidArgumentError, match="size"):
        open_image_folder(tmp_path / "s", 0)
    meta = tmp_path / "s" / METADATA
    lines = meta.read_text().splitlines()
    meta.unlink()
    with pytest.raises(DataError, match="no metadata.jsonl"):
        open_image_folder(tmp_path / "s", 32)
    meta.write_text("\n".join(lines[:2] + [json.dumps({"file_name": "000002.png"})]) + "\n")
    with pytest.raises(DataError, match=r"line 3: text is missing \(every image needs a caption\)"):
        open_image_folder(tmp_path / "s", 32)
    meta.write_text(lines[0] + "\n" + "not json\n")
    with pytest.raises(DataError, match="line 2: not JSON"):
        open_image_folder(tmp_path / "s", 32)
    meta.write_text(json.dumps({"file_name": "../outside.png", "text": "x"}) + "\n")
    with pytest.raises(DataError, match="outside"):
        open_image_folder(tmp_path / "s", 32)
    # unreadable and non-RGB images are skipped with a warning, or refused with strict=True
    Image.new("L", (32, 32)).save(tmp_path / "s" / "grey.png")
    (tmp_path / "s" / "broken.png").write_bytes(b"\x89PNG not really")
    extra = [{"file_name": "grey.png", "text": "grey"}, {"file_name": "broken.png", "text": "broken"}, {"file_name": "gone.png", "text": "gone"}]
    meta.write_text("\n".join(lines + [json.dumps(e) for e in extra]) + "\n")
    with caplog.at_level(logging.WARNING):
        folder = open_image_folder(tmp_path / "s", 32)
    assert len(folder) == 4 and "skipping 3 unusable" in caplog.text and "mode L, not RGB" in caplog.text and "missing" in caplog.text
    with pytest.raises(DataError, match="grey.png is mode L"):
        open_image_folder(tmp_path / "s", 32, strict=True)
    meta.write_text("\n".join(json.dumps(e) for e in extra) + "\n")
    with pytest.raises(DataError, match=r"no usable image in metadata.jsonl \(3 skipped\)"):
        open_image_folder(tmp_path / "s", 32)


def test_cli_writes_the_folder_and_names_bad_arguments(tmp_path, capsys):
    assert main(["--shapes", "3", "--out", str(tmp_path / "d")]) == 0
    assert len(open_image_folder(tmp_path / "d", 32)) == 3
    assert main(["--shapes", "0", "--out", str(tmp_path / "e")]) == 2
    assert "count" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_excluded_compositions_stay_out_of_the_folder(tmp_path, capsys):
    """A held-out caption set: none of its compositions (in either object order) is written, the folder keeps its size,
    and what is kept is the stream's order without them."""
    from contextdiff_ref.data.shapes import caption, composition, sample_scenes

    stream = [caption(s) for s in sample_scenes(0, 0, 60)]
    two = [c for c in stream if " and " in c]
    first, second = two[0], " and ".join(reversed(two[1].split(" and ")))  # the second one named in the other order
    write_shapes_folder(tmp_path / "held", 40, exclude=[first, second])
    captions = open_image_folder(tmp_path / "held", 32).captions
    assert len(captions) == 40 and not {composition(first), composition(second)} & {composition(c) for c in captions}
    assert list(captions) == [c for c in stream if composition(c) not in {composition(first), composition(second)}][:40]
    (tmp_path / "heldout.txt").write_text(f"{first}\n\n{second}\n")
    assert main(["--shapes", "40", "--out", str(tmp_path / "cli"), "--exclude-captions", str(tmp_path / "heldout.txt")]) == 0
    assert open_image_folder(tmp_path / "cli", 32).captions == captions
    for name, content, why in [("missing.txt", None, "not found"), ("empty.txt", "\n\n", "no captions"),
                               ("words.txt", f"{first}\na purple star somewhere\n", "line 2: 'a purple star somewhere' is not a caption"),
                               ("binary.txt", b"\xff\xfe\x00", "unreadable as UTF-8")]:  # fmt: skip
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            path.write_bytes(content)
        assert main(["--shapes", "4", "--out", str(tmp_path / "bad"), "--exclude-captions", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--exclude-captions {path}" in err and why in err, err
        assert not (tmp_path / "bad").exists()
