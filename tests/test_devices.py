"""Device and precision choices: resolution of ``device``, refusal naming the key, autocast/scaler."""

import pytest
import torch

from f3ocus_core.config import ConfigError, parse_run_config
from f3ocus_core.devices import PRECISIONS, autocast, check_precision, grad_scaler, resolve_device

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_auto_is_cuda_when_available_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None, "auto").type == expected
    assert resolve_device("", "auto").type == expected
    assert resolve_device("AUTO ", "cpu").type == expected


@pytest.mark.parametrize("device", DEVICES)
def test_the_node_value_overrides_the_run_default(device):
    assert resolve_device(device, "cpu" if device != "cpu" else "auto").type == device
    assert resolve_device(None, device).type == device


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "tpu", "cuda:-1", "cpu,cuda", "mps"])
def test_unknown_devices_name_the_key(value):
    with pytest.raises(ValueError, match="^device: unknown device"):
        resolve_device(value, "auto")
    with pytest.raises(ConfigError, match="^device"):
        parse_run_config({"device": value}, ("lntk",), ("nsga2",))


def test_unavailable_gpus_name_the_key():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=r"^device: 'cuda:99' is not available"):
        resolve_device("cuda:99", "auto")
    if count == 0:
        with pytest.raises(ValueError, match="^device: 'cuda' is not available"):
            resolve_device(None, "cuda")


def test_device_and_precision_keys_parse_with_defaults():
    settings = parse_run_config({}, ("lntk",), ("nsga2",))
    assert (settings.device, settings.train.precision) == ("auto", "fp32")
    settings = parse_run_config({"device": "cuda:1", "train.precision": "bf16"}, ("lntk",), ("nsga2",))
    assert (settings.device, settings.train.precision) == ("cuda:1", "bf16")
    with pytest.raises(ConfigError, match="^train.precision"):
        parse_run_config({"train.precision": "fp8"}, ("lntk",), ("nsga2",))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_autocast_runs_matmuls_in_the_chosen_precision(device, precision):
    device = torch.device(device)
    check_precision(device, precision)
    x = torch.randn(4, 4, device=device)
    with autocast(device, precision):
        y = x @ x
    assert y.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = grad_scaler(device, precision)
    assert (scaler is not None) == (precision == "fp16")


def test_unknown_precision_names_the_key():
    with pytest.raises(ValueError, match="^train.precision"):
        check_precision(torch.device("cpu"), "fp8")
