"""The embedded default data: real easy-vqa questions, seeded client splits, no shared images."""

import numpy as np

from f3ocus_core.data import easy_vqa
from f3ocus_core.data.tasks import DataSettings, load_client_data


def _keys(dataset):
    return set(dataset["image_key"])


def test_clients_are_disjoint_and_never_hold_base_images():
    settings = DataSettings(partitioning="iid", seed=3, max_train=0, max_test=0)
    clients = [load_client_data(settings, i, 3) for i in range(3)]
    base = {f"train/{k}" for k in easy_vqa.base_pool(3)["image_key"]} | set(easy_vqa.base_pool(3)["image_key"])
    for i, client in enumerate(clients):
        assert len(client.train) > 0 and len(client.test) > 0
        assert not _keys(client.train) & _keys(client.test)
        assert not (_keys(client.train) | _keys(client.test)) & base
        assert client.labels == easy_vqa.ANSWERS and len(client.labels) == 13
        for other in clients[i + 1 :]:
            questions = set(zip(client.train["image_key"], client.train["question"]))
            assert not questions & set(zip(other.train["image_key"], other.train["question"]))


def test_split_is_seeded_and_capped():
    settings = DataSettings(partitioning="iid", seed=1, max_train=50, max_test=20)
    a, b = load_client_data(settings, 1, 4), load_client_data(settings, 1, 4)
    assert (len(a.train), len(a.test)) == (50, 20)
    assert a.train["question"] == b.train["question"]
    c = load_client_data(DataSettings(partitioning="iid", seed=2, max_train=50, max_test=20), 1, 4)
    assert a.train["question"] != c.train["question"]


def test_dirichlet_skews_answers_more_than_iid():
    def skew(partitioning: str) -> float:
        settings = DataSettings(partitioning=partitioning, alpha=0.1, seed=0, max_train=0, max_test=0)
        shares = []
        for i in range(4):
            answers = [a[0] for a in load_client_data(settings, i, 4).train["answers"]]
            counts = np.array([answers.count(label) for label in easy_vqa.ANSWERS], dtype=float)
            shares.append(counts / counts.sum())
        return float(np.mean(np.std(shares, axis=0)))

    assert skew("dirichlet") > 3 * skew("iid")
