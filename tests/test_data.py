"""Datasets: real digits, synthetic data, ImageNet folders and CIFAR-100 files from user paths."""
import pickle

import numpy as np
import pytest
from PIL import Image

from repnext.data import DatasetError, build_dataset, cifar100, digits, digits_arrays, imagenet


def test_digits_is_a_stratified_held_out_split():
    splits = digits(32)
    assert len(splits.train) + len(splits.val) == 1797
    assert len(splits.val) == pytest.approx(1797 * 0.2, abs=10)
    train_labels = {splits.train[i][1] for i in range(len(splits.train))}
    val_labels = [splits.val[i][1] for i in range(len(splits.val))]
    assert train_labels == set(range(10)) and set(val_labels) == set(range(10))
    img, _ = splits.val[0]
    assert img.size == (32, 32) and img.mode == "RGB"
    assert not splits.hflip_ok
    assert len(set(splits.train.images.tobytes() for _ in [0])) == 1  # deterministic arrays
    assert digits(32).val.labels.tolist() == splits.val.labels.tolist()


def test_imagenet_folder(tmp_path):
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / split / cls / "a.JPEG")
    splits = imagenet(tmp_path)
    assert splits.num_classes == 2 and len(splits.train) == 2
    with pytest.raises(DatasetError, match=r"has no val/ folder.*ROOT/train/<class>"):
        (tmp_path / "val" / "n01" / "a.JPEG").unlink()
        for p in sorted((tmp_path / "val").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (tmp_path / "val").rmdir()
        imagenet(tmp_path)


def write_cifar(folder, n=6):
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        data = {b"data": np.arange(n * 3072, dtype=np.int64).astype(np.uint8).reshape(n, 3072),
                b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}
        with (folder / name).open("wb") as f:
            pickle.dump(data, f, protocol=2)
    (folder / "meta").write_bytes(b"")


def test_cifar100_python_release(tmp_path):
    write_cifar(tmp_path / "cifar-100-python")
    splits = cifar100(tmp_path)
    assert splits.num_classes == 100 and len(splits.train) == 6
    img, label = splits.train[1]
    assert img.size == (32, 32) and label == 1


def test_cifar100_refuses_foreign_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar(folder)

    class Payload:
        def __reduce__(self):
            return (print, ("executed!",))

    with (folder / "train").open("wb") as f:
        pickle.dump({b"data": Payload()}, f)
    with pytest.raises(DatasetError, match=r"refusing to load builtins\.print"):
        cifar100(tmp_path)


def test_wrong_names_and_paths_are_named(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        build_dataset("mnist")
    with pytest.raises(DatasetError, match="needs --data-root"):
        build_dataset("imagenet")
    with pytest.raises(DatasetError, match="CIFAR-100 not found under"):
        build_dataset("cifar100", tmp_path)


def test_digits_are_scikit_learns_without_importing_it():
    from sklearn.datasets import load_digits

    images, target = digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(target, reference.target)
