"""CIFAR data files load without running code: hostile pickles are refused with the file
named and leave no trace; every numeric array numpy pickles (protocols 2-5) still loads."""
import io
import os
import pickle

import numpy as np
import pytest

from heat_fast.data import DatasetError, load_dataset
from heat_fast.data.safe_pickle import UnsafePickleError, load_plain_data


class _Payload:
    """Unpickling this calls ``function(*args)``: what an attacker's data file does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_pickles(marker):
    """(name, pickle bytes, what the refusal names): each would create ``marker``."""
    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    good = np.zeros((2, 3072), np.uint8)
    return [
        ("os.system, protocol 2", pickle.dumps({b"data": _Payload(os.system, command)}, 2),
         "system"),
        ("os.system, protocol 5", pickle.dumps(_Payload(os.system, command), 5), "system"),
        ("exec in the labels", pickle.dumps({b"data": good, b"labels": [_Payload(exec, code)]}, 2),
         "exec"),
        ("GLOBAL opcode, protocol 0", f"cos\nsystem\n(S'{command}'\ntR.".encode(), "os.system"),
        ("INST opcode", f"(S'{command}'\nios\nsystem\n.".encode(), "os.system"),
        ("numpy reconstructing another class",
         b"cnumpy.core.multiarray\n_reconstruct\n(cos\nsystem\n(I0\ntS'b'\ntR.", "os.system"),
    ]


def _cifar_dir(root, first_batch: bytes):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(first_batch)
    return root


@pytest.mark.parametrize("index", range(6))
def test_hostile_pickles_run_nothing_and_name_the_file(tmp_path, index):
    marker = tmp_path / "pwned"
    name, payload, named = hostile_pickles(marker)[index]
    with pytest.raises(UnsafePickleError, match=named):
        load_plain_data(io.BytesIO(payload))
    root = _cifar_dir(tmp_path / "data", payload)
    with pytest.raises(DatasetError, match=rf"refusing to load .*data_batch_1: it holds .*{named}"):
        load_dataset("cifar10", str(root))
    assert not marker.exists(), name


@pytest.mark.parametrize("array,message", [
    (np.array([1, "a"], dtype=object), "dtype 'O"),
    (np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]), "dtype 'V"),
    (np.array(["ab", "c"]), "dtype 'U2'"),
])
def test_non_numeric_arrays_are_refused(array, message):
    with pytest.raises(UnsafePickleError, match=message):
        load_plain_data(io.BytesIO(pickle.dumps({b"data": array}, 2)))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numeric_arrays_and_plain_data_round_trip(protocol):
    rng = np.random.default_rng(protocol)
    arrays = [rng.integers(0, 256, (4, 3072), dtype=np.uint8),
              np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
              rng.integers(-9, 9, 7).astype(">i8"), rng.random(3) > 0.5,
              (rng.random(2) + 1j * rng.random(2)).astype(np.complex64)]
    entry = {b"data": arrays, "labels": list(np.array([1, 2])), b"name": b"batch 1",
             "meta": ("x", 2.5, None, True, np.float32(0.5), np.bool_(False))}
    loaded = load_plain_data(io.BytesIO(pickle.dumps(entry, protocol)))
    assert loaded["meta"][4].dtype == np.float32 and loaded["labels"][0].dtype == np.int64
    for got, want in zip(loaded[b"data"], arrays):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert {k: v for k, v in loaded.items() if k != b"data"} == {
        k: v for k, v in entry.items() if k != b"data"}


def test_a_python3_cifar_file_loads_through_the_dataset(tmp_path):
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3, 4, 9]}
    root = _cifar_dir(tmp_path, pickle.dumps(batch, 2))
    folder = root / "cifar-10-batches-py"
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch, 4))
    data = load_dataset("cifar10", str(root))
    assert data.train_x.shape == (30, 3, 32, 32) and data.test_y.tolist() == [0, 1, 2, 3, 4, 9]
    expected = batch[b"data"][0].reshape(3, 32, 32) / 255
    assert np.allclose(data.train_x[0].numpy(), expected)
