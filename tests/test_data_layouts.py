"""Every accepted layout through small generated fixtures; splits, cache and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import NEU_CLASSES, load_dataset, neu_class_name
from cnnlab.data.neu import LECTURE_ORDER
from cnnlab.errors import CnnlabError
from cnnlab.images import write_image


def gray(seed: int, h: int = 10, w: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def make_folders(root, classes, n=5, split=None, suffix=".png"):
    """class-per-folder tree; pixel values encode (class, index) so labels can be checked."""
    arrays = {}
    for k, c in enumerate(classes):
        for i in range(n):
            arr = gray(100 * k + i)
            base = root / split if split else root
            p = write_image(base / c / f"img{i}{suffix}", arr)
            arrays[p.relative_to(root).as_posix()] = arr
    return arrays


def test_class_folders_pixels_labels_and_split(tmp_path):
    arrays = make_folders(tmp_path, ["b_class", "a_class"], n=10)
    ds = load_dataset(tmp_path, progress=False)
    assert ds.layout == "folders" and ds.class_names == ["a_class", "b_class"]
    assert ds.images.shape == (20, 1, 10, 12) and ds.images.dtype == torch.uint8
    for i, f in enumerate(ds.files):
        np.testing.assert_array_equal(ds.images[i, 0].numpy(), arrays[f])
        assert ds.class_names[int(ds.labels[i])] == f.split("/")[0]
    # stratified 80/20 with the seed; every image in exactly one split
    assert set(ds.splits) == {"train", "test"}
    tr, te = ds.splits["train"].tolist(), ds.splits["test"].tolist()
    assert sorted(tr + te) == list(range(20))
    assert torch.bincount(ds.labels[ds.splits["test"]]).tolist() == [2, 2]
    again = load_dataset(tmp_path, progress=False, cache=False)
    assert again.split_manifest() == ds.split_manifest()
    other = load_dataset(tmp_path, progress=False, seed=1)
    assert other.split_manifest() != ds.split_manifest()


def test_val_split_is_carved_from_train(tmp_path):
    make_folders(tmp_path, ["x", "y"], n=10)
    ds = load_dataset(tmp_path, progress=False, val_split=0.25)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 12, "val": 4, "test": 4}
    allidx = torch.cat(list(ds.splits.values())).tolist()
    assert sorted(allidx) == list(range(20))


def test_kaggle_split_folders_normalise_neu_names(tmp_path):
    kaggle = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
    make_folders(tmp_path, kaggle, n=3, split="train")
    make_folders(tmp_path, kaggle, n=2, split="valid")
    make_folders(tmp_path, kaggle, n=1, split="test")
    ds = load_dataset(tmp_path, progress=False)
    assert ds.layout == "neu-folders-split"
    assert ds.class_names == NEU_CLASSES
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 18, "val": 12, "test": 6}
    i = ds.files.index("test/Rolled/img0.png")
    assert ds.class_names[int(ds.labels[i])] == "rolled-in_scale"
    assert int(i) in ds.splits["test"].tolist()


def test_split_folders_without_test_hold_out_from_train(tmp_path):
    make_folders(tmp_path, ["p", "q"], n=10, split="train")
    ds = load_dataset(tmp_path, progress=False)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 16, "test": 4}
    assert any("no test split" in n for n in ds.notes)


def test_neu_cls_layout(tmp_path):
    prefixes = ["Cr", "In", "Pa", "PS", "RS", "Sc"]
    for k, p in enumerate(prefixes):
        for i in (1, 2, 10):
            Image.fromarray(gray(10 * k + i, 20, 20)).save(tmp_path / f"{p}_{i}.bmp")
    ds = load_dataset(tmp_path, progress=False)
    assert ds.layout == "neu-cls" and ds.class_names == NEU_CLASSES
    assert ds.files[:3] == ["Cr_1.bmp", "Cr_2.bmp", "Cr_10.bmp"]
    i = ds.files.index("PS_10.bmp")
    assert ds.class_names[int(ds.labels[i])] == "pitted_surface"
    np.testing.assert_array_equal(ds.images[i, 0].numpy(), gray(10 * 3 + 10, 20, 20))


VOC = """<annotation><filename>{name}</filename><size><width>20</width><height>20</height>
<depth>1</depth></size>{objects}</annotation>"""
OBJ = "<object><name>x</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax>" \
      "<ymax>{}</ymax></bndbox></object>"  # fmt: skip


def make_neu_det(root, n=2, rgb_gray=True):
    (root / "IMAGES").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    for k, c in enumerate(NEU_CLASSES):
        for i in range(1, n + 1):
            g = gray(k * 10 + i, 20, 20)
            img = np.stack([g] * 3, axis=2) if rgb_gray else g
            Image.fromarray(img).save(tmp := root / "IMAGES" / f"{c}_{i}.png")
            objs = OBJ.format(1, 2, 10 + k, 12 + i) + OBJ.format(0, 0, 5, 5) * (i % 2)
            (root / "ANNOTATIONS" / f"{tmp.stem}.xml").write_text(
                VOC.format(name=tmp.name, objects=objs)
            )


def test_neu_det_layout_boxes_and_gray_rgb(tmp_path):
    make_neu_det(tmp_path)
    ds = load_dataset(tmp_path, progress=False)
    assert ds.layout == "neu-det" and ds.class_names == NEU_CLASSES
    assert ds.channels == 1  # RGB files whose planes are equal count as gray
    i = ds.files.index("IMAGES/rolled-in_scale_1.png")
    assert ds.class_names[int(ds.labels[i])] == "rolled-in_scale"
    assert ds.boxes[i] == [(1, 2, 14, 13), (0, 0, 5, 5)]
    np.testing.assert_array_equal(ds.images[i, 0].numpy(), gray(41, 20, 20))
    # boxes follow the images through a resize (20 -> 10 halves every coordinate)
    small = load_dataset(tmp_path, progress=False, size=(10, 10))
    assert small.boxes[i] == [(0, 1, 7, 6), (0, 0, 2, 2)]  # round half to even


def test_neu_det_refuses_entities(tmp_path):
    make_neu_det(tmp_path, n=1)
    xml = tmp_path / "ANNOTATIONS" / "crazing_1.xml"
    xml.write_text('<!DOCTYPE a [<!ENTITY x "y">]><annotation>&x;</annotation>')
    with pytest.raises(CnnlabError, match=r"crazing_1.xml: annotation declares a DTD"):
        load_dataset(tmp_path, progress=False)


@pytest.mark.parametrize("form", ["uint8", "float01", "float255", "channel_last", "onehot"])
def test_lecture_npy_arrays(tmp_path, form):
    rng = np.random.default_rng(0)
    imgs = {
        s: rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
        for s, n in (("train", 12), ("test", 6))
    }
    labs = {s: np.arange(len(a)) % 6 for s, a in imgs.items()}
    for s in imgs:
        a = imgs[s]
        if form == "float01":
            a = a.astype(np.float32) / 255.0
        elif form == "float255":
            a = a.astype(np.float64)
        elif form == "channel_last":
            a = a[..., None].astype(np.float32) / 255.0
        lab = np.eye(6)[labs[s]] if form == "onehot" else labs[s]
        np.save(tmp_path / f"NEU_{s}_imgs.npy", a)
        np.save(tmp_path / f"NEU_{s}_labels.npy", lab)
    ds = load_dataset(tmp_path, progress=False)
    assert ds.layout == "npy" and ds.class_names == NEU_CLASSES
    test = ds.split("test")
    np.testing.assert_array_equal(test.images[:, 0].numpy(), imgs["test"])
    names = [test.class_names[int(i)] for i in test.labels]
    assert names == [LECTURE_ORDER[int(i)] for i in labs["test"]]  # lecture label 0 = scratches
    assert test.files[0] == "NEU_test_imgs.npy[0]"


def test_generic_npy_pair_with_class_file(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", imgs)
    np.save(tmp_path / "labels.npy", np.array([0, 1] * 5))
    (tmp_path / "classes.txt").write_text("ok\ndefect\n")
    ds = load_dataset(tmp_path / "images.npy", progress=False)
    assert ds.class_names == ["ok", "defect"] and ds.channels == 3
    np.testing.assert_array_equal(ds.images.numpy(), imgs.transpose(0, 3, 1, 2))
    gray1 = load_dataset(tmp_path, progress=False, channels=1)
    ref = np.asarray(Image.fromarray(imgs[4]).convert("L"))
    np.testing.assert_array_equal(gray1.images[4, 0].numpy(), ref)


def test_mixed_modes_and_sizes(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path / "a/rgb.png")
    Image.fromarray(rng.integers(0, 256, (10, 10, 4), dtype=np.uint8)).save(tmp_path / "a/rgba.png")
    Image.fromarray(gray(1, 10, 10)).convert("P").save(tmp_path / "b/pal.png")
    g16 = rng.integers(0, 65536, (10, 10)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "b/g16.png")
    Image.fromarray(gray(2, 6, 8)).save(tmp_path / "b/small.png")
    ds = load_dataset(tmp_path, progress=False)
    assert ds.channels == 3 and ds.image_size == (10, 10)
    assert any("resized to 10x10" in n for n in ds.notes)
    i16 = ds.files.index("b/g16.png")
    np.testing.assert_array_equal(ds.images[i16, 1].numpy(), np.round(g16 / 257.0).astype(np.uint8))
    ismall = ds.files.index("b/small.png")
    ref = np.asarray(Image.fromarray(gray(2, 6, 8)).resize((10, 10), Image.BILINEAR))
    np.testing.assert_array_equal(ds.images[ismall, 0].numpy(), ref)
    fixed = load_dataset(tmp_path, progress=False, channels=1, size=(5, 4))
    assert fixed.images.shape == (5, 1, 5, 4) and not any("resized" in n for n in fixed.notes)


def test_cache_reuses_and_invalidates_on_content(tmp_path, monkeypatch):
    make_folders(tmp_path / "d", ["x", "y"], n=4)
    first = load_dataset(tmp_path / "d", progress=False)
    import cnnlab.data.load as load_mod

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(load_mod, "decode_files", boom)
    second = load_dataset(tmp_path / "d", progress=False)
    assert torch.equal(first.images, second.images) and second.files == first.files
    # same name, new content -> cache miss
    write_image(tmp_path / "d/x/img0.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(AssertionError, match=r"decoded again"):
        load_dataset(tmp_path / "d", progress=False)
    monkeypatch.undo()
    third = load_dataset(tmp_path / "d", progress=False)
    assert int(third.images[third.files.index("x/img0.png")].sum()) == 0


def test_broken_image_named_or_skipped(tmp_path):
    make_folders(tmp_path, ["x", "y"], n=4)
    good = (tmp_path / "y/img1.png").read_bytes()
    (tmp_path / "y/img1.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(CnnlabError, match=r"y/img1\.png: unreadable or truncated"):
        load_dataset(tmp_path, progress=False)
    ds = load_dataset(tmp_path, progress=False, skip_bad=True)
    assert len(ds) == 7 and "y/img1.png" not in ds.files
    assert any("skipped 1 unreadable" in n for n in ds.notes)
    assert sorted(torch.cat(list(ds.splits.values())).tolist()) == list(range(7))


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: None, "dataset folder is empty"),
        (lambda p: (p / "notes.txt").write_text("x"), "no recognisable dataset layout.*accepted"),
        (lambda p: write_image(p / "loose.png", gray(0)), "1 loose image.*class folders"),
        (lambda p: ((p / "a").mkdir(), write_image(p / "b" / "1.png", gray(0))),
         "a: class folder has no images"),
    ],
)  # fmt: skip
def test_bad_folders(tmp_path, setup, match):
    setup(tmp_path)
    with pytest.raises(CnnlabError, match=match):
        load_dataset(tmp_path, progress=False)


def test_bad_npy(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(3, np.int64))
    with pytest.raises(CnnlabError, match=r"images.npy: 4 images but 3 labels"):
        load_dataset(tmp_path, progress=False)
    np.save(tmp_path / "labels.npy", np.array([0, 1, -1, 0]))
    with pytest.raises(CnnlabError, match=r"labels.npy: label -1 out of range"):
        load_dataset(tmp_path, progress=False)
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 0]))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(CnnlabError, match=r"labels.npy: label 2 out of range"):
        load_dataset(tmp_path, progress=False)
    np.save(tmp_path / "labels.npy", np.array([0, 1, None, 0], dtype=object), allow_pickle=True)
    with pytest.raises(CnnlabError, match=r"pickled objects are refused"):
        load_dataset(tmp_path, progress=False)


def test_neu_spelling():
    assert [neu_class_name(s) for s in ("Cr", "rolled-in scale", "Pitted", "SCRATCHES")] == [
        "crazing", "rolled-in_scale", "pitted_surface", "scratches"
    ]  # fmt: skip
    assert neu_class_name("dog") is None


def test_named_neu_missing_says_where_published(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    with pytest.raises(CnnlabError, match=r"faculty.neu.edu.cn.*Kaggle.*accepted layouts"):
        load_dataset("neu", progress=False)


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    """Decode once: the second load of the same files must not decode a single image."""
    import cnnlab.data.load as load_mod

    make_folders(tmp_path, ["x", "y"], n=50)
    first = load_dataset(tmp_path, size=(6, 5), channels=3, progress=False)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(load_mod, "open_image", no_decoding)
    again = load_dataset(tmp_path, size=(6, 5), channels=3, progress=False)
    assert torch.equal(again.images, first.images) and again.files == first.files
