"""The MedMNIST v2 2D data sets: class names, label format and official split sizes.

This is the part of the ``medmnist`` package's ``INFO`` table (``medmnist/info.py``, v2.1) that the
MedVQA-FL builder needs. It lives in the project because the ``medmnist`` package requires
torchvision, which this project does not install; the ``.npz`` files themselves are plain NumPy.
Class names are copied verbatim (including their capitalisation); question templates lower-case them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MedMNISTSet:
    """One MedMNIST v2 2D data set.

    Parameters
    ----------
    flag : str
        The file stem the ``medmnist`` package downloads, e.g. ``"pathmnist"`` for ``pathmnist.npz``.
    task : str
        ``"multi-class"``, ``"binary-class"``, ``"ordinal-regression"`` or
        ``"multi-label, binary-class"`` (ChestMNIST only: labels are N x 14 multi-hot).
    n_channels : int
        1 (images N x H x W) or 3 (images N x H x W x 3).
    labels : tuple[str, ...]
        Class names in label-index order.
    n_samples : dict[str, int]
        Official number of images in the ``train``, ``val`` and ``test`` splits.
    """

    flag: str
    task: str
    n_channels: int
    labels: tuple[str, ...]
    n_samples: dict[str, int]

    @property
    def multilabel(self) -> bool:
        """True when a label row is a multi-hot vector over :attr:`labels` (ChestMNIST)."""
        return self.task.startswith("multi-label")

    @property
    def total(self) -> int:
        """Images over all three official splits."""
        return sum(self.n_samples.values())


_ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)

#: Flag -> data set, for every MedMNIST v2 2D set.
MEDMNIST_2D: dict[str, MedMNISTSet] = {
    s.flag: s
    for s in (
        MedMNISTSet(
            "pathmnist",
            "multi-class",
            3,
            (
                "adipose",
                "background",
                "debris",
                "lymphocytes",
                "mucus",
                "smooth muscle",
                "normal colon mucosa",
                "cancer-associated stroma",
                "colorectal adenocarcinoma epithelium",
            ),
            {"train": 89996, "val": 10004, "test": 7180},
        ),
        MedMNISTSet(
            "chestmnist",
            "multi-label, binary-class",
            1,
            (
                "atelectasis",
                "cardiomegaly",
                "effusion",
                "infiltration",
                "mass",
                "nodule",
                "pneumonia",
                "pneumothorax",
                "consolidation",
                "edema",
                "emphysema",
                "fibrosis",
                "pleural",
                "hernia",
            ),
            {"train": 78468, "val": 11219, "test": 22433},
        ),
        MedMNISTSet(
            "dermamnist",
            "multi-class",
            3,
            (
                "actinic keratoses and intraepithelial carcinoma",
                "basal cell carcinoma",
                "benign keratosis-like lesions",
                "dermatofibroma",
                "melanoma",
                "melanocytic nevi",
                "vascular lesions",
            ),
            {"train": 7007, "val": 1003, "test": 2005},
        ),
        MedMNISTSet(
            "octmnist",
            "multi-class",
            1,
            ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
            {"train": 97477, "val": 10832, "test": 1000},
        ),
        MedMNISTSet(
            "pneumoniamnist",
            "binary-class",
            1,
            ("normal", "pneumonia"),
            {"train": 4708, "val": 524, "test": 624},
        ),
        MedMNISTSet(
            "retinamnist",
            "ordinal-regression",
            3,
            ("0", "1", "2", "3", "4"),
            {"train": 1080, "val": 120, "test": 400},
        ),
        MedMNISTSet(
            "breastmnist",
            "binary-class",
            1,
            ("malignant", "normal, benign"),
            {"train": 546, "val": 78, "test": 156},
        ),
        MedMNISTSet(
            "bloodmnist",
            "multi-class",
            3,
            (
                "basophil",
                "eosinophil",
                "erythroblast",
                "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                "lymphocyte",
                "monocyte",
                "neutrophil",
                "platelet",
            ),
            {"train": 11959, "val": 1712, "test": 3421},
        ),
        MedMNISTSet(
            "tissuemnist",
            "multi-class",
            1,
            (
                "Collecting Duct, Connecting Tubule",
                "Distal Convoluted Tubule",
                "Glomerular endothelial cells",
                "Interstitial endothelial cells",
                "Leukocytes",
                "Podocytes",
                "Proximal Tubule Segments",
                "Thick Ascending Limb",
            ),
            {"train": 165466, "val": 23640, "test": 47280},
        ),
        MedMNISTSet("organamnist", "multi-class", 1, _ORGANS, {"train": 34581, "val": 6491, "test": 17778}),
        MedMNISTSet("organcmnist", "multi-class", 1, _ORGANS, {"train": 13000, "val": 2392, "test": 8268}),
        MedMNISTSet("organsmnist", "multi-class", 1, _ORGANS, {"train": 13940, "val": 2452, "test": 8829}),
    )
}

#: The three splits of every MedMNIST ``.npz`` file, in file order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
